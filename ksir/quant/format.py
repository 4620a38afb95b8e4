"""The weight format: how k-bit weights are stored, one frozen vocabulary for PTQ and QAT.

A format is the bit-width, the data type and its options, how weights share a scale (block, channel or tensor)
and how that scale is stored, and which layers it applies to. Post-training quantization (`QuantConfig`) is a
format plus how to choose the k-bit values (RTN or GPTQ, outliers, low rank, healing, a packed backend);
quantization-aware training (`QATConfig`) is a format plus how to learn them. Both are built from this class,
so a field, its meaning and its checks are written once, and a QAT run's PTQ equivalent is its format
(as torchao's QAT config wraps its base config). Torch-free: checking a config never imports torch.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ksir.errors import ConfigError
from ksir.quant.vocab import (
    DTYPE_BITS,
    FLOAT_DEFAULT_EXPONENT_BITS,
    GRANULARITIES,
    REFERENCE_BITS,
    is_baseline,
)

SCALE_BITS = (16, 8)  # 8 = double quantization of the block scales (QLoRA)
# int_asym zero-point: float = a 16-bit offset (the block minimum; HQQ, llama.cpp Q4_1, torchao tinygemm), the only
# choice for which round-to-nearest is exactly idempotent; int = a k-bit integer (GPTQ, AWQ, torchao INT domain),
# cheaper by 16 - k bits per block but not idempotent with 16-bit scales (docs/quantization.md has the proof).
ZERO_POINTS = ("float", "int")
# Default layer selection (Dettmers & Zettlemoyer 2023): every linear layer inside the transformer blocks,
# i.e. inside a numbered ModuleList (`model.layers.3.mlp.up_proj`, `gpt_neox.layers.0...`, `transformer.h.0...`);
# embeddings and the output head stay in 16 bit.
DEFAULT_INCLUDE = (r"(^|\.)\d+\.",)
DEFAULT_EXCLUDE = (r"(^|\.)lm_head$", r"embed")


def is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class WeightFormat:
    """How the selected weights are stored. Validated at construction: a value that cannot be stored is one
    ConfigError naming `<section>.<key>` (the section is the subclass's: quant or qat)."""

    SECTION: ClassVar[str] = "format"

    bits: float = REFERENCE_BITS
    dtype: str = "int"
    blocksize: int = 64
    granularity: str = "block"
    exponent_bits: int | None = None  # float only; None -> the paper's default per k
    subnormals: bool = True  # float only
    codebook: list[float] | None = None  # dtype=codebook only
    zero_point: str = "float"  # int_asym only: float (16-bit offset) | int (k-bit integer)
    scale_bits: int = 16
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))

    def __post_init__(self) -> None:
        self.check_format()

    # ---- derived values

    @property
    def reference(self) -> bool:
        """Stored at the reference precision: the format itself changes no weight."""
        return is_baseline(self.bits)

    def applies(self) -> dict[str, bool]:
        """Which of the format's options mean anything for this data type and granularity (a run's identity
        keeps only these, `ksir.identity`)."""
        return {"blocksize": self.granularity == "block", "exponent_bits": self.dtype == "float",
                "subnormals": self.dtype == "float", "codebook": self.dtype == "codebook",
                "zero_point": self.dtype == "int_asym"}

    def resolved_exponent_bits(self) -> int | None:
        """The float type's exponent bits, the paper's default per k filled in; None for other types."""
        if self.dtype != "float" or self.reference:
            return None
        return self.exponent_bits if self.exponent_bits is not None else FLOAT_DEFAULT_EXPONENT_BITS[int(self.bits)]

    def format_fields(self) -> dict[str, Any]:
        """The format's own fields (lists copied), without what PTQ or QAT adds: what a QAT run's PTQ
        equivalent is built from."""
        return {f.name: (list(v) if isinstance(v, list) else v)
                for f in dataclasses.fields(WeightFormat) for v in [getattr(self, f.name)]}

    def defined_bits(self) -> tuple[float, ...]:
        """The bit-widths at which this format's data type is defined (QAT adds binary sign weights)."""
        return DTYPE_BITS[self.dtype]

    # ---- checks

    def _fail(self, key: str, value: Any, allowed: Any = None, why: str | None = None) -> None:
        raise ConfigError(f"{self.SECTION}.{key}", value, allowed, why)

    def check_format(self) -> None:
        """Names are checked whatever applies (`granularity=row` on a 16-bit job is a typo, not a setting);
        the rest only where the format stores anything below the reference precision."""
        if self.dtype not in DTYPE_BITS:
            self._fail("dtype", self.dtype, list(DTYPE_BITS))
        for key in ("include", "exclude"):
            for p in getattr(self, key) or []:
                try:
                    re.compile(p)
                except (re.error, TypeError) as e:
                    self._fail(key, p, "Python regular expressions", str(e))
        if not is_number(self.bits) or not 1 <= self.bits <= REFERENCE_BITS:
            self._fail("bits", self.bits, f"a number in 1..{REFERENCE_BITS} ({REFERENCE_BITS} = unquantized)")
        for key, allowed in (("granularity", GRANULARITIES), ("zero_point", ZERO_POINTS), ("scale_bits", SCALE_BITS)):
            if getattr(self, key) not in allowed:
                self._fail(key, getattr(self, key), allowed)
        if not isinstance(self.subnormals, bool):
            self._fail("subnormals", self.subnormals, [True, False])
        if self.reference:
            return  # nothing else is used
        defined = self.defined_bits()
        if self.bits not in defined:
            why = f"dtype {self.dtype} is not defined at {self.bits:g} bits"
            if not float(self.bits).is_integer():
                why = "post-training quantization needs integer bits (fractional bits such as 1.58 are for QAT)" \
                    if self.SECTION == "quant" else f"dtype {self.dtype} has no {self.bits:g}-bit grid"
            self._fail("bits", self.bits, [*defined, REFERENCE_BITS], f"{why} ({self.SECTION}.dtype={self.dtype})")
        k = int(self.bits)
        if self.granularity == "block" and (not is_int(self.blocksize) or self.blocksize < 2):
            self._fail("blocksize", self.blocksize, "an integer >= 2 that divides every row")
        if self.dtype == "float" and self.exponent_bits is not None:
            e = self.exponent_bits
            if not is_int(e) or not 1 <= e <= k - 1:
                self._fail("exponent_bits", e, f"null (default {FLOAT_DEFAULT_EXPONENT_BITS[k]}) or 1..{k - 1}",
                           f"a {k}-bit float has one sign bit")
        if self.dtype == "codebook":
            cb = self.codebook
            if cb is None or not isinstance(cb, list | tuple) or not all(is_number(v) for v in cb):
                self._fail("codebook", cb, "a list of finite numbers", "dtype=codebook needs one")
            if not 2 <= len(cb) <= 2**k or len(set(cb)) != len(cb) or max(abs(v) for v in cb) == 0:
                self._fail("codebook", cb, f"2..{2**k} distinct values, not all zero (bits={k})")

    def check_rows(self, row_sizes: list[int] | None) -> None:
        """The block size divides the rows (in_features) of every layer to quantize."""
        if self.reference or self.granularity != "block":
            return
        bad = sorted({r for r in (row_sizes or []) if r % self.blocksize})
        if bad:
            self._fail("blocksize", self.blocksize, "a divisor of every row size",
                       f"does not divide the rows (in_features) {bad[:5]}")
