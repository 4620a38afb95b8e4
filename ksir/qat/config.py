"""The `qat:` config group as a dataclass, its validation, and the PTQ `QuantConfig` it maps to.

QAT reuses the quantization registry (`ksir.quant`): the data types, their codebooks, the layer
selection and the bit accounting are the registry's; this module only adds what training needs
(learned scales, quantizer choice for extremely low bits, activation and attention bits, regime).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ksir.dataconfig import from_mapping
from ksir.errors import ConfigError
from ksir.quant.config import (
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    UNQUANTIZED_BITS,
    QuantConfig,
)
from ksir.quant.validate import validate_quant_config
from ksir.quant.vocab import DTYPE_BITS, TERNARY_BITS

SCALES = ("lsq", "absmax")
SCALE_INITS = ("absmax", "lsq")
QUANTIZERS = ("auto", "codebook", "stretched", "sign")
BINARY_BITS = 1
# Ternary is configured as 1.58 (the registry's key) but stored and accounted as log2(3) bits per weight.
TERNARY_EXACT_BITS = math.log2(3)


@dataclass
class AttentionQATConfig:
    """k-SIR: attention scores and values quantized to `bits`, learnable alpha per head and beta."""

    enabled: bool = False
    bits: float = 8
    learn: bool = True  # alpha and beta trainable (False: calibrated once, then frozen)


@dataclass
class DistillConfig:
    weight: float = 0.0  # loss = (1 - w) * CE + w * T^2 * KL(teacher || student); 0 = no teacher
    temperature: float = 1.0


@dataclass
class QATConfig:
    """Every field is a Hydra key under `qat:` (conf/qat/lsq.yaml documents each one)."""

    enabled: bool = False
    bits: float = 4
    dtype: str = "int"
    blocksize: int = 64
    granularity: str = "block"
    scale: str = "lsq"
    scale_init: str = "absmax"
    quantizer: str = "auto"
    exponent_bits: int | None = None
    subnormals: bool = True
    codebook: list[float] | None = None
    zero_point: str = "float"
    scale_bits: int = 16
    scale_lr: float = 1.0
    act_bits: float | None = None
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    attention: AttentionQATConfig = field(default_factory=AttentionQATConfig)
    init_from: str | None = None
    lr: float | None = None
    distill: DistillConfig = field(default_factory=DistillConfig)

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | Any) -> QATConfig:
        """From a dict / DictConfig of the `qat` group (None = disabled); unknown keys raise ConfigError."""
        return from_mapping(cls, m, "qat")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def weights_quantized(self) -> bool:
        return self.enabled and float(self.bits) != UNQUANTIZED_BITS

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

    def quant_config(self) -> QuantConfig:
        """The registry config whose codebook, layer selection and bit accounting this QAT run uses.

        Binary sign weights are the registry's 1-bit `codebook` type with codebook [-1, 1]; ternary is
        accounted at log2(3) bits (the registry's own key 1.58 is only used for validation)."""
        binary = self.resolved_quantizer() == "sign"
        return QuantConfig(
            method="rtn",
            bits=BINARY_BITS if binary else self.bits,
            dtype="codebook" if binary else self.dtype,
            blocksize=self.blocksize,
            granularity=self.granularity,
            exponent_bits=self.exponent_bits,
            subnormals=self.subnormals,
            codebook=[-1.0, 1.0] if binary else self.codebook,
            zero_point=self.zero_point,
            scale_bits=self.scale_bits,
            include=list(self.include),
            exclude=list(self.exclude),
        )

    def accounting_config(self) -> QuantConfig:
        """The registry config used for total-bit accounting (ternary at log2(3) bits per weight)."""
        return dataclasses.replace(self.quant_config(), bits=self.effective_bits)


def _num(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_qat_config(m: Mapping[str, Any] | QATConfig | Any, row_sizes: list[int] | None = None) -> QATConfig:
    """Raise ConfigError for any `qat` value that cannot run; returns the parsed config."""
    q = m if isinstance(m, QATConfig) else QATConfig.from_mapping(m)
    if not isinstance(q.enabled, bool):
        raise ConfigError("qat.enabled", q.enabled, [True, False])
    if not q.enabled:
        return q
    if q.scale not in SCALES:
        raise ConfigError("qat.scale", q.scale, SCALES)
    if q.scale_init not in SCALE_INITS:
        raise ConfigError("qat.scale_init", q.scale_init, SCALE_INITS)
    if q.quantizer not in QUANTIZERS:
        raise ConfigError("qat.quantizer", q.quantizer, QUANTIZERS)
    if q.dtype not in DTYPE_BITS:
        raise ConfigError("qat.dtype", q.dtype, list(DTYPE_BITS))
    if not _num(q.bits) or not 1 <= q.bits <= UNQUANTIZED_BITS:
        raise ConfigError("qat.bits", q.bits, "1 (binary), 1.58 (ternary), 2..8, or 16 (off)")
    if q.weights_quantized:
        quantizer = q.resolved_quantizer()
        if quantizer == "sign" and float(q.bits) != BINARY_BITS:
            raise ConfigError("qat.quantizer", q.quantizer, "codebook, stretched", "sign is the 1-bit (binary) quantizer")
        if quantizer == "stretched" and (q.dtype != "int" or float(q.bits) not in (TERNARY_BITS, *range(2, 9))):
            raise ConfigError("qat.quantizer", q.quantizer, "auto, codebook",
                              "the stretched elastic quantizer is a uniform (dtype=int) grid of 1.58..8 bits")
        if quantizer != "sign" or q.dtype != "int":
            try:
                validate_quant_config(q.quant_config(), row_sizes)
            except ConfigError as e:
                raise ConfigError(e.key.replace("quant.", "qat.", 1), e.value, why=str(e)) from None
        elif q.granularity == "block" and any(r % q.blocksize for r in row_sizes or []):
            raise ConfigError("qat.blocksize", q.blocksize, "a divisor of every row size")
        if not _num(q.scale_lr) or q.scale_lr <= 0:
            raise ConfigError("qat.scale_lr", q.scale_lr, "a number > 0")
    if q.act_bits is not None and (not _num(q.act_bits) or not 2 <= q.act_bits <= UNQUANTIZED_BITS
                                   or not float(q.act_bits).is_integer()):
        raise ConfigError("qat.act_bits", q.act_bits, "null (off) or an integer 2..16")
    a = q.attention
    if not isinstance(a.enabled, bool):
        raise ConfigError("qat.attention.enabled", a.enabled, [True, False])
    if a.enabled and (not _num(a.bits) or not 2 <= a.bits <= UNQUANTIZED_BITS or not float(a.bits).is_integer()):
        raise ConfigError("qat.attention.bits", a.bits, "an integer 2..16 (16 = only the learnable beta)")
    if q.init_from is not None and not isinstance(q.init_from, str):
        raise ConfigError("qat.init_from", q.init_from, "null (from scratch), auto, or a checkpoint folder")
    if q.lr is not None and (not _num(q.lr) or q.lr <= 0):
        raise ConfigError("qat.lr", q.lr, "null (trainer.lr) or a number > 0")
    d = q.distill
    if not _num(d.weight) or not 0 <= d.weight <= 1:
        raise ConfigError("qat.distill.weight", d.weight, "a number in [0, 1]")
    if d.weight > 0 and not q.init_from:
        raise ConfigError("qat.distill.weight", d.weight, why="distillation needs a 16-bit teacher: set qat.init_from")
    if not _num(d.temperature) or d.temperature <= 0:
        raise ConfigError("qat.distill.temperature", d.temperature, "a number > 0")
    return q
