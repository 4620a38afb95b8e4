"""How an own-family model is parametrized for training: `model.parametrization` (sp | mup | umup).

One registry entry per parametrization carries its behaviour: build the model, group its parameters for
the optimizer (learning-rate and weight-decay rules), and export the trained model as a plain Hugging Face
Llama (every multiplier folded into the weights), so that everything after training (saving, evaluation,
PTQ, packing, analysis) is the same for all three.

- `sp`: the standard parametrization, Hugging Face's Llama as is (init std 0.02, one learning rate).
- `mup`: muP for Adam (Yang et al. 2022, "Tensor Programs V"), relative to a base width of 64 (the own
  family's smallest hidden size, where mup equals sp): hidden matrices start at std 0.02 / sqrt(m) and learn
  at lr / m with m = hidden / 64; the readout starts at zero and its output is multiplied by 1 / m;
  attention scores use 1 / d_head (times sqrt(16), sp's value at the base head size 16) instead of
  1 / sqrt(d_head). Implemented here, not with Microsoft's `mup` package: its release requires torchvision,
  whose install moves the pinned torch to another build.
- `umup`: u-muP with Graphcore's `unit-scaling` library (`ksir.umup`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

MUP_BASE_WIDTH = 64
MUP_BASE_HEAD_DIM = 16



def decay_split(model: torch.nn.Module) -> tuple[list[tuple[str, torch.nn.Parameter]], ...]:
    """(decay, no_decay, qat) named trainable parameters: matrices decay; norms and biases do not (the usual
    GPT recipe), nor learned quantization constants (LSQ scales, k-SIR alpha / beta: decay would pull them to
    zero, i.e. shrink the grid). The one place that decides; every parametrization's optimizer uses it."""
    from ksir.qat.model import is_qat_param_name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    qat = [(n, p) for n, p in named if is_qat_param_name(n)]
    rest = [(n, p) for n, p in named if not is_qat_param_name(n)]
    return [(n, p) for n, p in rest if p.ndim >= 2], [(n, p) for n, p in rest if p.ndim < 2], qat


def param_groups(model: torch.nn.Module, lr: float, weight_decay: float, scale_lr: float = 1.0) -> list[dict[str, Any]]:
    """AdamW groups of `decay_split`; learned quantization constants get lr * scale_lr."""
    decay, no_decay, qat = decay_split(model)
    groups = [{"params": [p for _, p in decay], "weight_decay": weight_decay, "lr": lr},
              {"params": [p for _, p in no_decay], "weight_decay": 0.0, "lr": lr}]
    if qat:
        groups.append({"params": [p for _, p in qat], "weight_decay": 0.0, "lr": lr * scale_lr})
    return groups


@dataclass(frozen=True)
class Parametrization:
    name: str
    doc: str
    build: Callable[[Any], nn.Module]  # HF config -> model (fresh init)
    optimizer: Callable[..., torch.optim.Optimizer]  # (model, lr, weight_decay, betas, scale_lr) -> optimizer
    export: Callable[[nn.Module, int], nn.Module]  # (trained model, seq_len) -> plain HF model, same function


# ----------------------------------------------------------------------------- sp


def _sp_build(cfg: Any) -> nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(cfg)


def _sp_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                  scale_lr: float = 1.0) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, lr, weight_decay, scale_lr), lr=lr, betas=tuple(betas))


# ----------------------------------------------------------------------------- mup


class ScaledReadout(nn.Linear):
    """The muP readout: logits = mult * x W^T (same parameters as the nn.Linear it replaces)."""

    mult: float = 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.mult


def width_mult(cfg: Any) -> float:
    return cfg.hidden_size / MUP_BASE_WIDTH


def _mup_build(cfg: Any) -> nn.Module:
    model = _sp_build(cfg)
    m, std = width_mult(cfg), float(cfg.initializer_range)
    with torch.no_grad():
        for layer in model.model.layers:
            for lin in (*[getattr(layer.self_attn, f"{x}_proj") for x in "qkvo"],
                        layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                lin.weight.normal_(0.0, std / math.sqrt(m))
            head_dim = layer.self_attn.head_dim
            layer.self_attn.scaling = math.sqrt(MUP_BASE_HEAD_DIM) / head_dim
        head = model.get_output_embeddings()
        head.weight.zero_()
        head.__class__ = ScaledReadout
        head.mult = 1.0 / m
    return model


def _is_hidden(name: str, p: nn.Parameter) -> bool:
    """A hidden matrix (both dimensions grow with width): every 2-D weight but the embedding and readout."""
    return p.ndim >= 2 and "embed_tokens" not in name and "lm_head" not in name


def _mup_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                   scale_lr: float = 1.0) -> torch.optim.Optimizer:
    m = width_mult(model.config)
    decay, no_decay, _ = decay_split(model)  # no QAT constants: QAT runs sp only
    groups = [{"params": [p for n, p in decay if _is_hidden(n, p)], "weight_decay": weight_decay, "lr": lr / m},
              {"params": [p for n, p in decay if not _is_hidden(n, p)], "weight_decay": weight_decay, "lr": lr},
              {"params": [p for _, p in no_decay], "weight_decay": 0.0, "lr": lr}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas))


@torch.no_grad()
def _mup_export(model: nn.Module, seq_len: int) -> nn.Module:
    """Fold the readout multiplier into its weight and the attention scale into the query projection."""
    head = model.get_output_embeddings()
    if isinstance(head, ScaledReadout):
        head.weight.mul_(head.mult)
        head.__class__ = nn.Linear
        del head.mult
    for layer in model.model.layers:
        a = layer.self_attn
        sp_scale = a.head_dim ** -0.5
        if a.scaling != sp_scale:
            a.q_proj.weight.mul_(a.scaling / sp_scale)
            if a.q_proj.bias is not None:
                a.q_proj.bias.mul_(a.scaling / sp_scale)
            a.scaling = sp_scale
    return model


# ----------------------------------------------------------------------------- umup


def _umup_build(cfg: Any) -> nn.Module:
    from ksir.umup import UmupLlama

    return UmupLlama(cfg)


def _umup_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float],
                    scale_lr: float = 1.0) -> torch.optim.Optimizer:
    """unit-scaling's AdamW: lr * fan_in^-1/2 for weights (times depth^-1/2 in the blocks). Weight decay keeps
    AdamW's meaning (multiplied by each parameter's learning rate), not the library's lr-independent default."""
    import unit_scaling as uu

    decay, no_decay, _ = decay_split(model)  # no QAT constants: QAT runs sp only
    groups = [{"params": [p for _, p in decay], "weight_decay": weight_decay},
              {"params": [p for _, p in no_decay], "weight_decay": 0.0}]
    return uu.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=tuple(betas),
                          independent_weight_decay=False)


def _umup_export(model: nn.Module, seq_len: int) -> nn.Module:
    return model.to_hf(seq_len)


PARAMETRIZATIONS: dict[str, Parametrization] = {p.name: p for p in (
    Parametrization("sp", "standard parametrization (Hugging Face Llama init, one learning rate)",
                    _sp_build, _sp_optimizer, lambda m, t: m),
    Parametrization("mup", f"muP for Adam relative to width {MUP_BASE_WIDTH} (implemented in ksir)",
                    _mup_build, _mup_optimizer, _mup_export),
    Parametrization("umup", "u-muP (unit-scaling library): unit-scaled ops, lr ~ fan_in^-1/2, depth rule",
                    _umup_build, _umup_optimizer, _umup_export),
)}
