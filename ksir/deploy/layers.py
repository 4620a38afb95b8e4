"""Module surgery shared by the packers: find a layer by name, hand it over as a plain nn.Linear, swap it."""

from __future__ import annotations

import torch
from torch import nn

from ksir.quant.select import get_weight, is_conv1d


def parent_of(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent, _, attr = name.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


def as_linear(m: nn.Module) -> nn.Linear:
    """The layer as an nn.Linear with the same weight values (GPT-2's Conv1D stores [in, out])."""
    if not is_conv1d(m):
        return m  # type: ignore[return-value]
    w = get_weight(m)
    lin = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w)
        if m.bias is not None:
            lin.bias.copy_(m.bias)
    return lin


def replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, attr = parent_of(model, name)
    setattr(parent, attr, new)
