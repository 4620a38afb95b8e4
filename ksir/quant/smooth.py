"""Activation-aware per-channel scaling before quantization: SmoothQuant and AWQ, one idea with two choices of s.

For a linear layer y = x W^T and a positive scale s per input channel, y = (x / s) (W diag(s))^T: the same
function, with the input's range moved into the weight (or back). Quantizing W diag(s) and x / s instead of W and
x changes only where the rounding error falls.

- SmoothQuant (Xiao et al. 2023) migrates activation outliers into the weights so that both quantize at 8 bits:
  s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha), alpha = 0.5 by default (the paper's value for most models).
- AWQ (Lin et al. 2024) protects the weights of salient input channels at low weight bits (activations stay 16
  bit): s_j = mean|x_j|^alpha, normalised to a geometric mean of 1, with alpha picked per layer from a grid on
  [0, 1) by the output error of the quantized layer on calibration inputs, || x W^T - (x / s) Q(W diag(s))^T ||^2
  (alpha = 0 is plain round-to-nearest, so it is always a candidate).

Both papers fold 1 / s into the operation that produces x (the preceding norm, or v_proj / up_proj for o_proj /
down_proj), so nothing more is stored: the bits are those of the quantized weights alone. Here the division is an
online forward pre-hook registered before any other (so activation quantization and GPTQ's Hessians see x / s):
the same function and the same rounding as the folded model. Statistics come from the 16-bit model's inputs on
the calibration sequences, all layers in one pass.
"""

from __future__ import annotations

import torch
from torch import nn

from ksir.quant.calib import watch_inputs
from ksir.quant.config import QuantConfig
from ksir.quant.select import get_weight, set_weight

SAMPLE_ROWS = 2048  # calibration input rows kept per layer for AWQ's search (a deterministic stride)
EPS = 1e-5


def input_stats(model: nn.Module, layers: dict[str, nn.Module], calib: torch.Tensor, batch_size: int,
                keep_rows: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Per input channel of each layer: absmax and mean |x| over the calibration tokens, and up to `keep_rows`
    input rows (evenly strided over the tokens) for a search."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    rows: dict[str, list[torch.Tensor]] = {}

    def on_input(name: str, x: torch.Tensor) -> None:
        a = x.detach().float().abs()
        st = out.setdefault(name, {"absmax": torch.zeros(a.shape[1]), "sum": torch.zeros(a.shape[1]), "n": 0})
        st["absmax"] = torch.maximum(st["absmax"], a.amax(0).cpu())
        st["sum"] = st["sum"] + a.sum(0).cpu()
        st["n"] += a.shape[0]
        if keep_rows:
            rows.setdefault(name, []).append(x.detach().float().cpu())

    watch_inputs(model, layers, calib, batch_size, on_input)
    for name, st in out.items():
        st["absmean"] = st.pop("sum") / st.pop("n")
        if keep_rows:
            x = torch.cat(rows[name])
            st["rows"] = x[torch.linspace(0, len(x) - 1, min(keep_rows, len(x))).long()]
    return out


def smoothquant_scales(absmax_x: torch.Tensor, w: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^alpha / max|W_:j|^(1 - alpha) (SmoothQuant, eq. 4)."""
    wmax = w.detach().float().abs().amax(0).clamp_min(EPS)
    return (absmax_x.clamp_min(EPS).pow(alpha) / wmax.pow(1 - alpha)).clamp_min(EPS)


def awq_scales(absmean_x: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = mean|x_j|^alpha over the geometric mean (AWQ's search space)."""
    s = absmean_x.clamp_min(EPS).pow(alpha)
    return s / s.log().mean().exp()


def awq_search(w: torch.Tensor, x: torch.Tensor, absmean_x: torch.Tensor, quantize, grid: int,
               alpha: float | None) -> tuple[torch.Tensor, float, dict[float, float]]:
    """The AWQ scale of one layer: alpha fixed, or the grid's alpha with the least output error on `x`; returns
    (s, alpha, {alpha: error}). `quantize(w)` quantizes a weight [out, in] as the job will."""
    w = w.detach().float()
    ref = x @ w.T
    alphas = [alpha] if alpha is not None else [i / grid for i in range(grid)]
    errors = {}
    for a in alphas:
        s = awq_scales(absmean_x, a)
        errors[a] = float(((x / s) @ quantize(w * s).float().T - ref).pow(2).mean())
    best = min(errors, key=errors.get)
    return awq_scales(absmean_x, best), best, errors


def smooth_layers(model: nn.Module, layers: dict[str, nn.Module], q: QuantConfig, calib: torch.Tensor,
                  quantize=None) -> dict[str, dict[str, float]]:
    """Scale each layer's weight columns by s and divide its input by s (a pre-hook registered first). Returns
    per layer what was chosen (alpha, AWQ's error at it and at alpha = 0)."""
    sm = q.smooth
    stats = input_stats(model, layers, calib, q.gptq.batch_size, SAMPLE_ROWS if sm.method == "awq" else 0)
    chosen: dict[str, dict[str, float]] = {}
    for name, m in layers.items():
        w = get_weight(m)
        st = stats[name]
        if sm.method == "smoothquant":
            s, info = smoothquant_scales(st["absmax"], w, sm.resolved_alpha()), {"alpha": sm.resolved_alpha()}
        else:
            s, a, errors = awq_search(w, st["rows"], st["absmean"], quantize, sm.grid, sm.alpha)
            info = {"alpha": a, "error": errors[a], "error_rtn": errors.get(0.0, float("nan"))}
        s = s.to(w.device)
        set_weight(m, (w.detach().float() * s).to(w.dtype))
        m.register_forward_pre_hook(_divide(s), prepend=True)
        chosen[name] = info
    return chosen


def _divide(s: torch.Tensor):
    def hook(_module: nn.Module, args: tuple) -> tuple:
        return ((args[0] / s.to(args[0].dtype)), *args[1:])

    return hook
