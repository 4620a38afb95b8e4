"""Differentiable fake quantization: straight-through rounding, LSQ step sizes, ParetoQ's stretched elastic
quantizer, binary sign weights, dynamic activation quantization.

Written by hand rather than with torchao (not installed, and its QAT fake-quantizers only know integer grids):
QAT must cover every data type of ksir's registry (float, dynamic, normal-float, quantile, explicit codebooks),
so the rounding step is the registry's own (`ksir.quant.blockwise`). Gradients use the `f(x).detach() + (x - x.detach())`
form instead of autograd Functions: no graph breaks, so `torch.compile` fuses the whole quantizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ksir.quant.blockwise import (
    Grid,
    absmax_scale,
    affine_range,
    fit_data_code,
    fit_scale,
    nearest,
    quantize_blocks,
    store_offset,
    store_scale,
    store_step,
)
from ksir.quant.dtypes import DTYPES, int_levels

SCALE_EPS = 1e-8  # learned scales are clamped above zero


def ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Forward exactly y, backward identity to x (straight-through estimator). Written y + (x - x) rather than
    x + (y - x) so that the forward value is bit-identical to y (the PTQ reference)."""
    return y.detach() + (x - x.detach())


def ste_round(x: torch.Tensor) -> torch.Tensor:
    return ste(x, torch.round(x))


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Forward x, gradient multiplied by g (LSQ's step-size gradient scale)."""
    y = x * g
    return x.detach() + (y - y.detach())  # forward bit-identical to x


def stretched_round(xc: torch.Tensor, n: int) -> torch.Tensor:
    """ParetoQ's stretched elastic grid on [-1, 1]: n equal bins, each mapped to its centre (-1 + (2i+1)/n).

    n = 3 (ternary) gives {-2/3, 0, 2/3}; n = 4 (2-bit) gives {+-1/4, +-3/4}: all levels are used evenly,
    unlike the symmetric integer grid, which wastes one of the four 2-bit codes."""
    idx = torch.clamp(torch.floor((xc + 1) * (n / 2)), 0, n - 1)
    return (2 * idx + 1) / n - 1


@dataclass(frozen=True)
class WeightSpec:
    """How one layer's weights are fake-quantized (resolved once from a QATConfig)."""

    quantizer: str  # codebook | stretched | sign
    scale: str  # lsq | absmax
    scale_init: str  # absmax | lsq
    grid: Grid  # registry grid (codebook, dtype, scale storage)
    granularity: str
    blocksize: int
    levels: int  # number of codes (stretched: bins)

    @property
    def affine(self) -> bool:
        return self.quantizer == "codebook" and self.grid.affine

    @property
    def data_driven(self) -> bool:
        return self.quantizer == "codebook" and self.grid.data_driven

    @property
    def qp(self) -> float:
        """LSQ's Q_P (positive levels), used for the gradient scale and the LSQ init."""
        if self.quantizer == "sign":
            return 1.0
        if self.quantizer == "stretched":
            return max(1.0, self.levels / 2 - 0.5)
        if self.affine:
            return float(self.levels - 1)
        if self.grid.dtype == "int":
            return float(int_levels(self.grid.bits))
        return float(max(1, self.levels // 2 - 1))

    def clip_range(self, code: torch.Tensor | None) -> tuple[float | torch.Tensor, float | torch.Tensor]:
        if self.quantizer == "codebook" and self.grid.dtype != "int":
            return code[0], code[-1]
        return -1.0, 1.0


def _round_normalized(xc: torch.Tensor, spec: WeightSpec, code: torch.Tensor | None) -> torch.Tensor:
    if spec.quantizer == "sign":
        return torch.where(xc >= 0, 1.0, -1.0).to(xc.dtype)
    if spec.quantizer == "stretched":
        return stretched_round(xc, spec.levels)
    if spec.grid.dtype == "int":
        L = int_levels(spec.grid.bits)
        return torch.round(xc * L) / L
    return nearest(xc.contiguous(), code)


def init_scale(blocks: torch.Tensor, spec: WeightSpec) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """(scale, zero, code) of every block [n_blocks, B] at the start of training.

    absmax: the post-training quantizer's scale (QAT fine-tuning then starts exactly at the PTQ model);
    lsq: Esser et al.'s 2 mean|w| / sqrt(Q_P) step, expressed as the scale of the [-1, 1] code."""
    x = blocks.detach().float()
    mean_abs = x.abs().mean(-1, keepdim=True).clamp(min=SCALE_EPS)
    code = None
    if spec.quantizer == "sign":
        return mean_abs, None, None
    if spec.quantizer == "stretched":
        s = x.abs().amax(-1, keepdim=True) if spec.scale_init == "absmax" else 2 * mean_abs * math.sqrt(spec.qp)
        return s.clamp(min=SCALE_EPS), None, None
    grid = fit_data_code(x, spec.grid)
    if spec.data_driven:
        code = pad_code(grid.code, spec.levels)
    if spec.scale_init == "absmax":
        # The raw (unstored) PTQ scale: the forward stores it at scale_bits, which reproduces the registry's
        # stored scale exactly (storing twice would round 8-bit double-quantized scales up a second time).
        _, z = fit_scale(x, grid)
        if spec.affine:
            raw, _ = affine_range(x, grid)
        else:
            raw = absmax_scale(x, grid.code)
        return raw.clamp(min=SCALE_EPS), z, code
    if spec.affine:  # LSQ+ initialisation: the grid centred on zero
        s = 2 * mean_abs / math.sqrt(spec.qp)
        z = torch.full_like(s, float(round(spec.qp / 2)))
        return s, (-z * s if spec.grid.zero_point == "float" else z), None
    return 2 * mean_abs * math.sqrt(spec.qp), None, code


def pad_code(code: torch.Tensor, n: int) -> torch.Tensor:
    """A data-driven codebook padded to a fixed n entries (repeating its maximum), so its buffer keeps one shape."""
    if code.numel() >= n:
        return code[:n]
    return torch.cat([code, code[-1:].expand(n - code.numel())])


def fake_quant_weight(w: torch.Tensor, spec: WeightSpec, scale: torch.Tensor | None = None,
                      zero: torch.Tensor | None = None, code: torch.Tensor | None = None,
                      refit_code: bool = False) -> torch.Tensor:
    """Fake-quantized [out, in] weight, differentiable w.r.t. w (STE) and, with scale=lsq, the learned scale
    (LSQ gradient: (q - x) inside the range, the clipped level outside; scaled by 1/sqrt(N * Q_P)) and the
    zero-point of affine types (LSQ+). With scale=absmax it is exactly the registry's round-to-nearest.
    refit_code: a data-driven (quantile) codebook is refit in place to the current weights (training steps)."""
    from ksir.quant.blockwise import to_blocks

    blocks = to_blocks(w, spec.granularity, spec.blocksize)
    if spec.scale == "absmax":
        with torch.no_grad():
            x = blocks.detach().float()
            if spec.quantizer == "codebook":
                q = quantize_blocks(x, fit_data_code(x, spec.grid))
            else:
                if spec.quantizer == "sign":
                    s = store_scale(x.abs().mean(-1, keepdim=True), spec.grid.scale_bits)
                else:
                    s = store_scale(absmax_scale(x, torch.tensor([-1.0, 1.0], device=x.device)), spec.grid.scale_bits)
                safe = torch.where(s > 0, s, torch.ones_like(s))
                q = _round_normalized(torch.clamp(x / safe, -1, 1), spec, None) * s
        return ste(blocks, q.to(blocks.dtype)).reshape(w.shape)
    g = 1.0 / math.sqrt(blocks.shape[-1] * spec.qp)
    s = grad_scale(scale.clamp(min=SCALE_EPS), g)
    s = ste(s, store_step(s.detach(), spec.grid))  # scales are stored (and accounted) at scale_bits
    if spec.affine and spec.grid.zero_point == "float":  # LSQ+: learned scale and offset (stored at 16 bit, STE)
        m = grad_scale(zero, g)
        m = ste(m, store_offset(m.detach()))
        r = torch.clamp(ste_round((blocks - m) / s), 0, spec.grid.qmax)
        return (r * s + m).reshape(w.shape)
    if spec.affine:  # LSQ+ with an integer zero-point (rounded, STE), registry's formula
        zq = torch.clamp(ste_round(grad_scale(zero, g)), 0, spec.grid.qmax)
        r = torch.clamp(ste_round(blocks / s) + zq, 0, spec.grid.qmax)
        return ((r - zq) * s).reshape(w.shape)
    if spec.data_driven and refit_code and code is not None:
        with torch.no_grad():  # refit the tensor's quantile codebook to the current weights (in place: saved)
            xn = torch.clamp(blocks.detach() / s.detach(), -1, 1)
            code.copy_(pad_code(DTYPES[spec.grid.dtype].build_from_data(xn, spec.grid.bits), spec.levels))
    cb = code if code is not None else spec.grid.code
    if cb is not None:
        cb = cb.to(blocks.device)
    lo, hi = spec.clip_range(cb)
    xc = torch.clamp(blocks / s, lo, hi)
    if spec.quantizer == "codebook" and spec.grid.dtype == "int":  # integer codes times step s/L, as the registry
        L = int_levels(spec.grid.bits)
        return (ste_round(xc * L) * (s / L)).reshape(w.shape)
    return (ste(xc, _round_normalized(xc.detach(), spec, cb)) * s).reshape(w.shape)


def fake_quant_activation(x: torch.Tensor, bits: float) -> torch.Tensor:
    """Dynamic per-token symmetric integer quantization of linear inputs (absmax per token, STE):
    no parameters, so it needs no calibration and works at any sequence length."""
    L = 2 ** (int(bits) - 1) - 1
    with torch.no_grad():
        s = x.detach().abs().amax(-1, keepdim=True).clamp(min=1e-8) / L
        q = torch.clamp(torch.round(x.detach() / s), -L, L) * s
    return ste(x, q)
