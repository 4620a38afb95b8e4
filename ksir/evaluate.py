"""Held-out language-modelling metrics: cross-entropy (nats/token), perplexity, top-1 accuracy.

Every position of every evaluation block after the first is predicted from its prefix within
the block; loss and accuracy are averaged over all those tokens (not over batches), so the
number does not depend on the batch size.
"""

from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F


@torch.no_grad()
def evaluate_lm(model: torch.nn.Module, blocks: torch.Tensor, batch_size: int = 32,
                device: str | torch.device | None = None, log_every_s: float = 30.0) -> dict[str, float]:
    device = torch.device(device) if device else next(model.parameters()).device
    was_training = model.training
    model.eval()
    nll_sum, correct, count = 0.0, 0, 0
    last = time.time()
    for i in range(0, len(blocks), batch_size):
        ids = blocks[i:i + batch_size].to(device)
        logits = model(input_ids=ids).logits[:, :-1].float()
        targets = ids[:, 1:]
        nll_sum += F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="sum").item()
        correct += (logits.argmax(-1) == targets).sum().item()
        count += targets.numel()
        if time.time() - last > log_every_s:
            print(f"  eval {min(i + batch_size, len(blocks))}/{len(blocks)} sequences", flush=True)
            last = time.time()
    model.train(was_training)
    loss = nll_sum / count
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 700.0)), "val_acc": correct / count, "eval_tokens": count}
