"""Low-rank reparameterisation of a weight, simulated like k-bit quantization (dense tensors, exact accounting).

Two modes (`quant.lowrank.mode`):
- `factorize`: W [m, n] is replaced by A B, A = U_r S_r^1/2 [m, r], B = S_r^1/2 V_r^T [r, n] (truncated SVD,
  the best rank-r approximation in Frobenius norm); each factor is stored at `quant.lowrank.bits`.
- `correct`: W is quantized at k bits, Q = Q(W), and the error E = W - Q gets a rank-r correction
  L R with L = U_r [m, r], R = U_r^T E [r, n], where U_r are the top left singular vectors of E (ZeroQuant-V2's
  LoRC) or of E D with D = diag(RMS of each input column over calibration activations) (LQER's whitening).
  L R = U_r U_r^T E projects E's columns onto r directions, so for every input X
  ||(E - L R) X|| = ||(I - U_r U_r^T) E X|| <= ||E X||: with exact factors the correction never increases a
  layer's output error on any data; the whitening picks the directions that matter most for the calibration data.
Factors are stored at 16 bits (fp16) or 8 bits (symmetric int8, one fp16 scale per row); `bits.layer_bits`
counts every factor and constant.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ksir.quant.vocab import REFERENCE_BITS

if TYPE_CHECKING:
    from ksir.quant.config import QuantConfig

FACTOR_BITS = (16, 8)
SCALE_BITS = 16  # one fp16 scale per factor row when factors are int8


def factor_granularity(q: QuantConfig, shape: tuple[int, int]) -> str:
    """Block scales for a factor whose rows the block size divides, else one scale per row."""
    return q.granularity if q.granularity != "block" or shape[1] % q.blocksize == 0 else "channel"


def rank_of(rank: float, shape: tuple[int, int]) -> int:
    """The rank for an [m, n] weight: `rank` itself if >= 1, else that fraction of min(m, n) (at least 1). A rank
    the weight does not have is refused (it was clamped silently, while the record kept the asked rank)."""
    full = min(shape)
    if rank >= 1 and int(rank) > full:
        from ksir.errors import ConfigError

        raise ConfigError("quant.lowrank.rank", rank, f"<= {full} (min(out, in) of a [{shape[0]}, {shape[1]}] weight),"
                          " or a fraction of min(out, in) in (0, 1)")
    return int(rank) if rank >= 1 else max(1, round(rank * full))


def store_factor(f: torch.Tensor, bits: int) -> torch.Tensor:
    """A factor as stored: fp16, or symmetric int8 with one fp16 absmax scale per row."""
    if bits == REFERENCE_BITS:
        return f.to(torch.float16).to(f.dtype)
    scale = (f.abs().amax(1, keepdim=True) / 127).to(torch.float16).float().clamp_min(torch.finfo(torch.float16).tiny)
    return (torch.round(f / scale).clamp(-127, 127) * scale).to(f.dtype)


def factor_bits(shape: tuple[int, int], r: int, bits: int) -> float:
    """Bits of a factor pair of rank r for an [m, n] weight: r (m + n) values, plus a scale per row if int8."""
    m, n = shape
    values = r * (m + n) * bits
    return values + (0 if bits == REFERENCE_BITS else (m + r) * SCALE_BITS)


def svd_factors(w: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) = (U_r S_r^1/2, S_r^1/2 V_r^T) in fp32: the best rank-r pair, its scale split evenly."""
    u, s, vh = torch.linalg.svd(w.detach().float(), full_matrices=False)
    root = s[:r].sqrt()
    return u[:, :r] * root, root[:, None] * vh[:r]


def factorize(w: torch.Tensor, r: int, bits: int) -> torch.Tensor:
    """A B, the stored rank-r factor pair of w, as a dense [m, n] tensor of w's dtype."""
    a, b = svd_factors(w, r)
    return (store_factor(a, bits) @ store_factor(b, bits)).to(w.dtype)


def correction(w: torch.Tensor, q: torch.Tensor, r: int, bits: int, col_rms: torch.Tensor | None = None) -> torch.Tensor:
    """L R for the quantization error E = w - q (see the module docstring); `col_rms` [n] whitens the SVD."""
    e = (w.detach().float() - q.detach().float())
    target = e if col_rms is None else e * col_rms.float().clamp_min(1e-8)[None, :]
    u = torch.linalg.svd(target, full_matrices=False)[0][:, :r]
    left = store_factor(u, bits)
    right = store_factor(left.T @ e, bits)  # R = L^T E: the projection of E onto the stored directions
    return (left @ right).to(w.dtype)


def relative_output_error(w: torch.Tensor, approx: torch.Tensor, x: torch.Tensor) -> float:
    """||(w - approx) x^T|| / ||w x^T||: a layer's output error on inputs x [tokens, n]."""
    w, approx, x = w.detach().float(), approx.detach().float(), x.detach().float()
    return float(((w - approx) @ x.T).norm() / (w @ x.T).norm().clamp_min(1e-30))


def factorize_layers(layers: list[nn.Module], q: QuantConfig) -> None:
    """Each layer's weight becomes its stored factor pair (16-bit factors, or each factor quantized at q.bits
    with q's data type: block scales where the block size divides the factor's rows, else one per row)."""
    from dataclasses import replace

    from ksir.quant.blockwise import make_grid, quantize_weight
    from ksir.quant.select import get_weight, set_weight

    for m in layers:
        w = get_weight(m)
        r = rank_of(q.lowrank.rank, tuple(w.shape))
        if q.reference:
            set_weight(m, factorize(w, r, 16))
            continue
        factors = []
        for f in svd_factors(w, r):
            qf = replace(q, granularity=factor_granularity(q, tuple(f.shape)))
            factors.append(quantize_weight(f, make_grid(qf), qf.granularity, qf.blocksize))
        set_weight(m, (factors[0] @ factors[1]).to(w.dtype))


def input_rms(model: nn.Module, names: list[str], calib: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """RMS of each input column of each named layer over the calibration data (LQER's whitening diagonal)."""
    from ksir.quant.calib import watch_inputs

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def on_input(name: str, x: torch.Tensor) -> None:
        sq = x.detach().float().pow(2).sum(0)
        sums[name] = sq if name not in sums else sums[name] + sq
        counts[name] = counts.get(name, 0) + x.shape[0]

    watch_inputs(model, dict((n, model.get_submodule(n)) for n in names), calib, batch_size, on_input)
    return {n: (sums[n] / counts[n]).sqrt() for n in sums}


def correct_layers(layers: dict[str, nn.Module], originals: dict[str, torch.Tensor], q: QuantConfig,
                   rms: dict[str, torch.Tensor]) -> None:
    """Add to each quantized weight the rank-r correction of its error against the original weight."""
    from ksir.quant.select import get_weight, set_weight

    for n, m in layers.items():
        w, qw = originals[n], get_weight(m)
        r = rank_of(q.lowrank.rank, tuple(w.shape))
        set_weight(m, qw + correction(w, qw, r, q.lowrank.bits, rms.get(n)))
