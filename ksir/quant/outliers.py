"""Outlier-dependent quantization (Dettmers & Zettlemoyer 2023, sec. 5): a fraction p of each layer's input
columns is kept in 16 bit, left out of the block scales, and counted at 16 bits in total model bits.

proxy (data-free): hidden unit j is an outlier feature if the weights that produce it (row j of the previous
layer) have a large standard deviation. The previous layer of L is the nearest earlier linear layer in L's
sub-block whose output size is L's input size (o_proj <- v_proj, down_proj <- up_proj, fc2 <- fc1); for layers
that read the residual stream, the nearest earlier such layer outside the sub-block (q/k/v <- the previous
block's down_proj, gate/up <- o_proj); without one (the first block), L's own column std.
activation (data-driven): the columns with the largest input magnitude max|x_j| on the calibration data.
"""

from __future__ import annotations

import torch
from torch import nn

from ksir.quant.calib import watch_inputs
from ksir.quant.config import QuantConfig
from ksir.quant.select import get_weight, is_linear


def n_outlier_columns(in_features: int, fraction: float) -> int:
    return int(round(fraction * in_features))


def previous_layer(linears: list[tuple[str, nn.Module]], idx: int) -> nn.Module | None:
    """The layer whose output rows feed the inputs of linears[idx] (see module docstring)."""
    name, m = linears[idx]
    n_in = get_weight(m).shape[1]
    parent = name.rpartition(".")[0]
    earlier = [(n, p) for n, p in reversed(linears[:idx]) if get_weight(p).shape[0] == n_in]
    for n, p in earlier:
        if n.rpartition(".")[0] == parent:
            return p
    for n, p in earlier:
        if n.rpartition(".")[0] != parent:
            return p
    return None


def proxy_scores(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    linears = [(n, m) for n, m in model.named_modules() if is_linear(m)]
    index = {n: i for i, (n, _) in enumerate(linears)}
    scores = {}
    for n in names:
        prev = previous_layer(linears, index[n])
        w = get_weight(linears[index[n]][1]).detach().float()
        scores[n] = get_weight(prev).detach().float().std(dim=1) if prev is not None else w.std(dim=0)
    return scores


def activation_scores(
    model: nn.Module, names: list[str], calib: torch.Tensor, batch_size: int
) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    watched = {n: modules[n] for n in names}
    scores: dict[str, torch.Tensor] = {}

    def on_input(name: str, x: torch.Tensor) -> None:
        a = x.detach().abs().amax(0).float()
        scores[name] = a if name not in scores else torch.maximum(scores[name], a)

    watch_inputs(model, watched, calib, batch_size, on_input)
    return scores


def outlier_columns(
    model: nn.Module, names: list[str], q: QuantConfig, calib: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Layer name -> sorted LongTensor of input columns kept in 16 bit (empty dict when outlier.mode is none)."""
    mode, p = q.outlier.mode, q.outlier.fraction
    if mode == "none" or p == 0 or not names:
        return {}
    scores = (
        proxy_scores(model, names)
        if mode == "proxy"
        else activation_scores(model, names, calib, q.gptq.batch_size)
    )
    keep = {}
    for n, s in scores.items():
        k = n_outlier_columns(s.numel(), p)
        keep[n] = s.topk(k).indices.sort().values if k else torch.zeros(0, dtype=torch.long, device=s.device)
    return keep
