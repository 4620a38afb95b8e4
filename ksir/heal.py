"""PTQ + KD: distil the 16-bit model into the parts of a quantized model that are not stored at k bits.

The k-bit weights (the layers quant.include selects) are frozen, so the healed model has exactly the storage and
the total bits of the plain PTQ model; what trains is everything kept at 16 bits: norms, embeddings, the output
head, biases. The loss is KL(teacher || student) on temperature-softened logits (ksir.train's distillation with
weight 1: no next-token term), through the same Lightning loop as every other training in ksir.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ksir.quant.config import QuantConfig
from ksir.quant.select import quantized_linear_names
from ksir.spec import TrainerSpec


def heal_model(model: torch.nn.Module, teacher: torch.nn.Module, q: QuantConfig, train_blocks: torch.Tensor,
               trainer: TrainerSpec, seed: int) -> dict[str, Any]:
    """Fine-tune `model` in place for q.heal.steps; returns the record's heal fields."""
    from ksir.train import Distillation, train_model

    # The stored parameters themselves (a GPT-2 Conv1D stores its weight transposed: get_weight's [out, in] view
    # of it is a new tensor, and freezing that would leave the real parameter training).
    frozen = [model.get_submodule(n).weight for n in quantized_linear_names(model, q)]
    before = [w.detach().clone() for w in frozen]
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for w in frozen:
        w.requires_grad_(False)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    h = q.heal
    cfg = dataclasses.replace(trainer, tokens_per_param=0, min_steps=h.steps, max_steps=h.steps, lr=h.lr,
                              batch_size=h.batch_size, weight_decay=0.0, checkpoint_every_n_steps=0, compile=False)
    try:
        info = train_model(model, train_blocks, cfg, n_train, seed=seed,
                           distill=Distillation(teacher, weight=1.0, temperature=h.temperature))
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))
    if any(not torch.equal(a, w.detach()) for a, w in zip(before, frozen, strict=True)):
        raise RuntimeError("healing changed a k-bit weight: it must train only the 16-bit parameters")
    return {"heal_steps": h.steps, "heal_tokens": info["train_tokens"], "heal_trained_params": n_train,
            "heal_time_s": info.get("train_time_s")}
