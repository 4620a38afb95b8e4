"""PTQ + KD: distil the 16-bit model into the parts of a quantized model that are not stored at k bits, or
into k-SIR attention's scales alone (`learn_attention_scales`).

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


def learn_attention_scales(model: torch.nn.Module, teacher: torch.nn.Module, q: QuantConfig,
                           train_blocks: torch.Tensor, trainer: TrainerSpec, seed: int) -> dict[str, Any]:
    """k-SIR attention as PTQ, learned: its per-head alpha and beta (already calibrated) are the only parameters
    that train, by q.attention.steps of distillation from the 16-bit model; every weight stays as quantized.
    Returns the record's fields."""
    from ksir.qat.attention import KSIRQuant
    from ksir.train import Distillation, train_model

    a = q.attention
    learned = {id(p) for m in model.modules() if isinstance(m, KSIRQuant) for p in m.parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) not in learned}
    for p in model.parameters():
        p.requires_grad_(id(p) in learned)
    cfg = dataclasses.replace(trainer, tokens_per_param=0, min_steps=a.steps, max_steps=a.steps, lr=a.lr,
                              batch_size=a.batch_size, weight_decay=0.0, checkpoint_every_n_steps=0, compile=False)
    try:
        info = train_model(model, train_blocks, cfg, len(learned), seed=seed,
                           distill=Distillation(teacher, weight=1.0, temperature=1.0))
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags.get(n, True))
    now = dict(model.named_parameters())
    if any(not torch.equal(w, now[n].detach()) for n, w in before.items()):
        raise RuntimeError("learning k-SIR scales changed a weight: only alpha and beta may train")
    return {"attention_steps": a.steps, "attention_tokens": info["train_tokens"],
            "attention_time_s": info.get("train_time_s")}
