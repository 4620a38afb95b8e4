"""The small shared vocabulary of weight formats (torchao-style), for PTQ and QAT alike, without torch.

Config validation and run identity read only these names and bit-widths, so they live apart from the
codebook builders in `ksir.quant.dtypes` (which need torch): checking a config never imports torch.
`ksir.quant.dtypes.DTYPES` has exactly one entry per name here (tested).
"""

from __future__ import annotations

# Ternary weights (BitNet b1.58 / ParetoQ): the symmetric integer grid {-1, 0, 1}, counted at log2(3) bits.
TERNARY_BITS = 1.58
# The reference precision, spelled once: the unquantized model every other bit-width is compared with.
REFERENCE_BITS = 16
PTQ_BITS = tuple(range(2, 9))
# The bit-widths at which each data type is defined (16 = unquantized is allowed for every type).
DTYPE_BITS: dict[str, tuple[float, ...]] = {
    "int": (TERNARY_BITS, *PTQ_BITS),
    "int_asym": (1, *PTQ_BITS),
    "float": PTQ_BITS,
    "dynamic": PTQ_BITS,
    "nf": PTQ_BITS,
    "quantile": PTQ_BITS,
    "codebook": (1, *PTQ_BITS),
}
# Default exponent bits of the float type per k: 2 for 3-bit, 3 for 4- to 8-bit (Dettmers & Zettlemoyer
# 2023, sec. 3); 2-bit float has one exponent bit and no mantissa ({-1, 0, 1} up to the subnormal).
FLOAT_DEFAULT_EXPONENT_BITS = {2: 1, 3: 2, 4: 3, 5: 3, 6: 3, 7: 3, 8: 3}
METHODS = ("rtn", "gptq")
GRANULARITIES = ("block", "channel", "tensor")


def is_baseline(bits: float | None, factorized: bool = False) -> bool:
    """The unquantized model: the reference precision, its weights not replaced by factor pairs (16-bit factors
    are a compression, not the baseline). The one test of it, for configs and for records."""
    try:
        return float(bits) == REFERENCE_BITS and not factorized
    except (TypeError, ValueError):
        return False
