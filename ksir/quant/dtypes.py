"""The registry of k-bit data types.

Every type is a sorted codebook in [-1, 1] (Dettmers & Zettlemoyer 2023, sec. 2): a weight block is
divided by its scale, mapped to the nearest codebook value and multiplied back. Adding a type is adding
one `DType` entry to `DTYPES`. The tables are built the way bitsandbytes builds them
(`bitsandbytes/functional.py`) so the 4-bit normal-float, the float and the 8-bit dynamic tables agree
value-for-value with it; we do not call bitsandbytes at run time because we need arbitrary k, any
codebook, and simulated quantization on any device (its blockwise ops take fixed 256-entry uint8 codes).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ksir.quant.vocab import DTYPE_BITS, FLOAT_DEFAULT_EXPONENT_BITS, TERNARY_BITS

__all__ = ["DTYPES", "FLOAT_DEFAULT_EXPONENT_BITS", "TERNARY_BITS"]  # re-exported vocabulary

# Normal-float offset: outermost quantile of N(0, 1) used by bitsandbytes for NF4
# (`create_normal_map(offset=0.9677083)`, QLoRA, Dettmers et al. 2023). It is the mean of 1 - 1/(2*15)
# and 1 - 1/(2*16); `nf_offset(k)` generalises it to 2^k - 1 and 2^k levels.
NF4_OFFSET = 0.9677083
# Dynamic exponent type: decimal exponents with a linear fraction in [0.1, 1] (Dettmers 2016,
# bitsandbytes `create_dynamic_map`).
DYNAMIC_FRACTION_LOW = 0.1
# Smallest relative gap between the outermost two values of a data-driven (quantile) codebook (see quantile_code).
QUANTILE_END_GAP = 2.0**-8
QUANTILE_MIN_GAP = 1e-5  # in units of the block absmax; real 8-bit quantile codebooks have gaps of about 1e-3


@dataclass(frozen=True)
class CodeOptions:
    """The dtype-specific keys of the quant config, already resolved to per-k values."""

    exponent_bits: int | None = None
    subnormals: bool = True
    codebook: Sequence[float] | None = None


@dataclass(frozen=True)
class DType:
    """One data type. `build(k, opts)` returns the sorted codebook; `data_driven` types build it from the
    normalised tensor instead (`build_from_data`), `affine` types (asymmetric int) use min/max + zero-point."""

    name: str
    bits: tuple[float, ...]
    doc: str
    build: Callable[[float, CodeOptions], torch.Tensor] | None = None
    build_from_data: Callable[[torch.Tensor, float], torch.Tensor] | None = None
    affine: bool = False
    uniform: bool = False  # closed-form rounding instead of a codebook search


def int_levels(k: float) -> int:
    """Largest integer L of the symmetric grid -L..L: 2^(k-1) - 1 (1 for ternary)."""
    return 1 if k == TERNARY_BITS else 2 ** (int(k) - 1) - 1


def int_code(k: float, opts: CodeOptions | None = None) -> torch.Tensor:
    L = int_levels(k)
    return torch.arange(-L, L + 1, dtype=torch.float64).div(L).float()


def float_exponent_bits(k: float, opts: CodeOptions) -> int:
    return FLOAT_DEFAULT_EXPONENT_BITS[int(k)] if opts.exponent_bits is None else int(opts.exponent_bits)


def float_code(k: float, opts: CodeOptions) -> torch.Tensor:
    """Signed ExMy without inf/NaN, built like bitsandbytes `create_fp8_map(True, e, k-1-e, k)`: exponent bias
    2^(e-1) (not IEEE), exponent field 0 holds subnormals m/2^p * 2^-bias. Without subnormals the zero
    exponent field encodes only zero."""
    k, e = int(k), float_exponent_bits(k, opts)
    p = k - 1 - e
    bias = 2 ** (e - 1)
    mant = torch.arange(2**p, dtype=torch.float64) / 2**p  # fraction bits as a value in [0, 1)
    mags = []
    for ev in range(2**e):  # 2^e exponents: a loop over the table, not over data
        if ev == 0:
            mags.append(mant * 2.0**-bias if opts.subnormals else torch.zeros(1, dtype=torch.float64))
        else:
            mags.append((1 + mant) * 2.0 ** -(ev - bias - 1))
    m = torch.cat(mags).float()  # bitsandbytes rounds to float32 before normalising
    code = torch.cat([m, -m]).unique()
    return code / code.max()


def dynamic_code(k: float, opts: CodeOptions | None = None) -> torch.Tensor:
    """Dynamic tree (Dettmers 2016) with k - 1 exponent bits: bitsandbytes `create_dynamic_map(True, k-1, k)`.
    For every decimal exponent i a linear fraction with 2^i values (midpoints of a linspace over [0.1, 1])."""
    k = int(k)
    parts = [torch.zeros(1), torch.ones(1)]
    for i in range(k - 1):
        bounds = torch.linspace(DYNAMIC_FRACTION_LOW, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        parts += [
            means * 10.0 ** (-(k - 2) + i),
            -(10.0 ** (-(k - 2) + i)) * means,
        ]  # float32, as bitsandbytes
    return torch.cat(parts).unique()


def nf_offset(k: int) -> float:
    """Outermost normal quantile for 2^k levels; NF4_OFFSET exactly at k = 4 (the bitsandbytes constant)."""
    if k == 4:
        return NF4_OFFSET
    return 1 - 0.5 * (1 / (2 * (2**k - 1)) + 1 / (2 * 2**k))


def nf_code(k: float, opts: CodeOptions | None = None) -> torch.Tensor:
    """Normal float generalised to k bits: 2^(k-1) positive and 2^(k-1) - 1 negative normal quantiles plus zero,
    normalised to [-1, 1] (bitsandbytes `create_normal_map(offset, use_extra_value=True)` at k = 4)."""
    k = int(k)
    off = nf_offset(k)
    pos = torch.special.ndtri(torch.linspace(off, 0.5, 2 ** (k - 1) + 1)[:-1].double())
    neg = -torch.special.ndtri(torch.linspace(off, 0.5, 2 ** (k - 1))[:-1].double())
    code = torch.cat([pos.float(), torch.zeros(1), neg.float()]).sort().values
    return code / code.max()


def quantile_code(xn: torch.Tensor, k: float) -> torch.Tensor:
    """Empirical quantile type (Dettmers & Zettlemoyer 2023): q_i = (Q(i/(2^k+1)) + Q((i+1)/(2^k+1))) / 2 of the
    block-normalised tensor for i = 1 .. 2^k - 1, plus zero (2^k values), divided by the largest |q| as in
    bitsandbytes `create_quantile_map`. The two outer intervals, whose quantiles are the extreme values, are left
    out so that zero fits in 2^k values. Quantiles by sorting (torch.quantile caps the input at 16M elements)."""
    n = 2 ** int(k)
    v = xn.detach().reshape(-1).float().sort().values
    p = torch.arange(1, n + 1, device=v.device, dtype=torch.float64) / (n + 1)
    pos = p * (v.numel() - 1)  # linear interpolation between order statistics, as torch.quantile
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=v.numel() - 1)
    frac = (pos - lo).float()
    qs = v[lo] * (1 - frac) + v[hi] * frac
    q = torch.cat([(qs[:-1] + qs[1:]) / 2, torch.zeros(1, device=v.device)])
    q = q.unique()  # sorted; ties between quantiles of repeated values collapse, and so do values closer than
    q = q[
        torch.cat([torch.ones(1, dtype=torch.bool), q.diff() > QUANTILE_MIN_GAP])
    ]  # float noise can resolve
    # An end value within QUANTILE_END_GAP of its neighbour is dropped: a 16-bit scale (rounded up by <= 2^-10) could
    # then map the block maximum to the neighbour, and re-quantizing would change the scale (not idempotent).
    while q.numel() > 2 and (q[1] - q[0]) < QUANTILE_END_GAP * q[0].abs():
        q = torch.cat([q[:1], q[2:]])
    while q.numel() > 2 and (q[-1] - q[-2]) < QUANTILE_END_GAP * q[-1].abs():
        q = torch.cat([q[:-2], q[-1:]])
    amax = q.abs().max()
    return q / amax if amax > 0 else q


def user_code(k: float, opts: CodeOptions) -> torch.Tensor:
    """An explicit codebook from the config, sorted and divided by its largest magnitude (absmax semantics)."""
    code = torch.tensor(list(opts.codebook or []), dtype=torch.float64).sort().values
    return (code / code.abs().max()).float()


DTYPES: dict[str, DType] = {
    d.name: d
    for d in [
        DType(
            "int",
            DTYPE_BITS["int"],
            "symmetric absmax integer -L..L, L = 2^(k-1)-1",
            int_code,
            uniform=True,
        ),
        DType(
            "int_asym",
            DTYPE_BITS["int_asym"],
            "asymmetric integer 0..2^k-1 with a k-bit zero-point (min/max)",
            affine=True,
            uniform=True,
        ),
        DType("float", DTYPE_BITS["float"], "signed ExMy float, bias 2^(e-1), optional subnormals", float_code),
        DType("dynamic", DTYPE_BITS["dynamic"], "dynamic exponent (dynamic tree), k-1 exponent bits", dynamic_code),
        DType("nf", DTYPE_BITS["nf"], "normal float (NF4 generalised to k bits)", nf_code),
        DType(
            "quantile", DTYPE_BITS["quantile"], "empirical quantiles of the tensor plus zero", build_from_data=quantile_code
        ),
        DType("codebook", DTYPE_BITS["codebook"], "explicit codebook from quant.codebook", user_code),
    ]
}


def static_code(dtype: str, k: float, opts: CodeOptions) -> torch.Tensor | None:
    """The codebook of a type that does not depend on the data (None for affine or data-driven types)."""
    d = DTYPES[dtype]
    return d.build(k, opts) if d.build is not None else None

