"""Which weights are quantized: nn.Linear and GPT-2's transformers Conv1D, picked by include/exclude regexes."""

from __future__ import annotations

import re

import torch
from torch import nn

from ksir.quant.config import QuantConfig


def _conv1d_type() -> type | None:
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers is optional for this package
        return None
    return Conv1D


def is_linear(m: nn.Module) -> bool:
    c = _conv1d_type()
    return isinstance(m, nn.Linear) or (c is not None and isinstance(m, c))


def is_conv1d(m: nn.Module) -> bool:
    c = _conv1d_type()
    return c is not None and isinstance(m, c)


def quantized_linear_names(model: nn.Module, q: QuantConfig) -> list[str]:
    """Names (model.named_modules order) of the linear layers matching any include and no exclude pattern."""
    inc = [re.compile(p) for p in q.include or []]
    exc = [re.compile(p) for p in q.exclude or []]
    return [
        name
        for name, m in model.named_modules()
        if is_linear(m) and any(p.search(name) for p in inc) and not any(p.search(name) for p in exc)
    ]


def get_weight(m: nn.Module) -> torch.Tensor:
    """The weight as [out_features, in_features] (Conv1D stores [in, out])."""
    return m.weight.t() if is_conv1d(m) else m.weight


@torch.no_grad()
def set_weight(m: nn.Module, w: torch.Tensor) -> None:
    m.weight.copy_(w.t() if is_conv1d(m) else w)


def row_size(m: nn.Module) -> int:
    return get_weight(m).shape[1]
