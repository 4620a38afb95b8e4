"""The `qat:` config group: a weight format (`ksir.quant.format`, shared with PTQ) plus how training learns it.

QAT reuses the quantization registry (`ksir.quant`): the data types, their codebooks, the layer selection and
the bit accounting are the registry's; a QAT run's PTQ equivalent is built from its format, not field by field
(as torchao's QAT config wraps its base config). This module only adds what training needs (learned scales, the
quantizer for extremely low bits, activation and attention bits, regime). Frozen and validated at construction.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ksir.dataconfig import from_mapping
from ksir.quant.config import QuantConfig
from ksir.quant.format import WeightFormat, is_number
from ksir.quant.vocab import DTYPE_BITS, REFERENCE_BITS, TERNARY_BITS, is_baseline

SCALES = ("lsq", "absmax")
SCALE_INITS = ("absmax", "lsq")
QUANTIZERS = ("auto", "codebook", "stretched", "sign")
BINARY_BITS = 1
# Ternary is configured as 1.58 (the registry's key) but stored and accounted as log2(3) bits per weight.
TERNARY_EXACT_BITS = math.log2(3)


@dataclass(frozen=True)
class AttentionQATConfig:
    """k-SIR: attention scores and values quantized to `bits`, learnable alpha per head and beta."""

    enabled: bool = False
    bits: float = 8
    learn: bool = True  # alpha and beta trainable (False: calibrated once, then frozen)


@dataclass(frozen=True)
class DistillConfig:
    weight: float = 0.0  # loss = (1 - w) * CE + w * T^2 * KL(teacher || student); 0 = no teacher
    temperature: float = 1.0


@dataclass(frozen=True)
class QATConfig(WeightFormat):
    """Every field is a Hydra key under `qat:` (conf/qat/lsq.yaml documents each one); the format's fields are
    `WeightFormat`'s. A disabled section is still a valid one (checked at construction)."""

    SECTION: ClassVar[str] = "qat"

    bits: float = 4
    enabled: bool = False
    scale: str = "lsq"
    scale_init: str = "absmax"
    quantizer: str = "auto"
    scale_lr: float = 1.0
    act_bits: float | None = None
    attention: AttentionQATConfig = field(default_factory=AttentionQATConfig)
    init_from: str | None = None
    lr: float | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)

    def __post_init__(self) -> None:
        for name, cls in (("attention", AttentionQATConfig), ("distill", DistillConfig)):
            if isinstance(getattr(self, name), Mapping):
                object.__setattr__(self, name, from_mapping(cls, getattr(self, name), f"qat.{name}"))
        if not isinstance(self.enabled, bool):
            self._fail("enabled", self.enabled, [True, False])
        for key, allowed in (("scale", SCALES), ("scale_init", SCALE_INITS), ("quantizer", QUANTIZERS)):
            if getattr(self, key) not in allowed:
                self._fail(key, getattr(self, key), allowed)
        self.check_format()
        if not self.reference:
            quantizer = self.resolved_quantizer()
            if quantizer == "sign" and float(self.bits) != BINARY_BITS:
                self._fail("quantizer", self.quantizer, "codebook, stretched", "sign is the 1-bit (binary) quantizer")
            if quantizer == "stretched" and (self.dtype != "int" or float(self.bits) not in (TERNARY_BITS, *range(2, 9))):
                self._fail("quantizer", self.quantizer, "auto, codebook",
                           "the stretched elastic quantizer is a uniform (dtype=int) grid of 1.58..8 bits")
            if not is_number(self.scale_lr) or self.scale_lr <= 0:
                self._fail("scale_lr", self.scale_lr, "a number > 0")
        if self.act_bits is not None and (not is_number(self.act_bits) or not 2 <= self.act_bits <= REFERENCE_BITS
                                          or not float(self.act_bits).is_integer()):
            self._fail("act_bits", self.act_bits, f"null (off) or an integer 2..{REFERENCE_BITS}")
        a = self.attention
        if not isinstance(a.enabled, bool):
            self._fail("attention.enabled", a.enabled, [True, False])
        if a.enabled and (not is_number(a.bits) or not 2 <= a.bits <= REFERENCE_BITS or not float(a.bits).is_integer()):
            self._fail("attention.bits", a.bits, f"an integer 2..{REFERENCE_BITS} ({REFERENCE_BITS} = only the "
                       "learnable beta)")
        if self.init_from is not None and not isinstance(self.init_from, str):
            self._fail("init_from", self.init_from, "null (from scratch), auto, or a checkpoint folder")
        if self.lr is not None and (not is_number(self.lr) or self.lr <= 0):
            self._fail("lr", self.lr, "null (trainer.lr) or a number > 0")
        d = self.distill
        if not is_number(d.weight) or not 0 <= d.weight <= 1:
            self._fail("distill.weight", d.weight, "a number in [0, 1]")
        if d.weight > 0 and not self.init_from and self.enabled:
            self._fail("distill.weight", d.weight, why="distillation needs a 16-bit teacher: set qat.init_from")
        if not is_number(d.temperature) or d.temperature <= 0:
            self._fail("distill.temperature", d.temperature, "a number > 0")

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | Any) -> QATConfig:
        """From a dict / DictConfig of the `qat` group (None = disabled); unknown keys raise ConfigError."""
        return from_mapping(cls, m, "qat")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def defined_bits(self) -> tuple[float, ...]:
        """The registry's bit-widths, plus binary sign weights (1 bit) for the int type."""
        base = DTYPE_BITS.get(self.dtype, ())
        return (BINARY_BITS, *base) if self.dtype == "int" and self.resolved_quantizer() == "sign" else base

    @property
    def weights_quantized(self) -> bool:
        return self.enabled and not is_baseline(self.bits)

    @property
    def effective_bits(self) -> float:
        """Bits per quantized weight as accounted: log2(3) for ternary."""
        return TERNARY_EXACT_BITS if float(self.bits) == TERNARY_BITS else float(self.bits)

    @property
    def regime(self) -> str:
        """Record `method`/`regime`: qat (from scratch), qat-finetune (from a full-precision checkpoint), fp."""
        if not self.enabled:
            return "fp"
        return "qat-finetune" if self.init_from else "qat"

    def resolved_quantizer(self) -> str:
        """auto -> sign at 1 bit (binary int), ParetoQ's stretched elastic quantizer for ternary / 2-bit int,
        the registry codebook (round to nearest) otherwise."""
        if self.quantizer != "auto":
            return self.quantizer
        b = float(self.bits)
        if self.dtype == "int" and b == BINARY_BITS:
            return "sign"
        if self.dtype == "int" and b in (TERNARY_BITS, 2):
            return "stretched"
        return "codebook"

    def applies(self) -> dict[str, bool]:
        """The format's options, plus QAT's: which mean anything for this run."""
        return {**super().applies(), "scale_init": self.scale == "lsq", "attention": self.attention.enabled,
                "distill": bool(self.distill.weight)}

    def quant_config(self) -> QuantConfig:
        """The PTQ config of this run's format: its codebook, layer selection and bit accounting (ternary is
        accounted at log2(3) bits per weight by the registry). Binary sign weights are the registry's 1-bit
        `codebook` type with codebook [-1, 1]."""
        fmt = self.format_fields()
        if self.resolved_quantizer() == "sign" and not self.reference:
            fmt.update(bits=BINARY_BITS, dtype="codebook", codebook=[-1.0, 1.0])
        return QuantConfig(method="rtn", **fmt)


def validate_qat_config(m: Mapping[str, Any] | QATConfig | Any, row_sizes: list[int] | None = None) -> QATConfig:
    """A `qat` section as built (checked at construction) and checked against the model's row sizes."""
    q = m if isinstance(m, QATConfig) else QATConfig.from_mapping(m)
    if q.weights_quantized:
        q.check_rows(row_sizes)
    return q
