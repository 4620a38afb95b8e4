"""The `quant:` config group as a dataclass, and its validation (every bad value fails before any compute)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ksir.dataconfig import from_mapping
from ksir.quant.vocab import UNQUANTIZED_BITS

SCALE_BITS = (16, 8)  # 8 = double quantization of the block scales (QLoRA)
SCALE_SEARCHES = ("absmax", "mse")
# int_asym zero-point: float = a 16-bit offset (the block minimum; HQQ, llama.cpp Q4_1, torchao tinygemm), the only
# choice for which round-to-nearest is exactly idempotent; int = a k-bit integer (GPTQ, AWQ, torchao INT domain),
# cheaper by 16 - k bits per block but not idempotent with 16-bit scales (docs/quantization.md has the proof).
ZERO_POINTS = ("float", "int")
OUTLIER_MODES = ("none", "proxy", "activation")
# Default layer selection (Dettmers & Zettlemoyer 2023): every linear layer inside the transformer blocks,
# i.e. inside a numbered ModuleList (`model.layers.3.mlp.up_proj`, `gpt_neox.layers.0...`, `transformer.h.0...`);
# embeddings and the output head stay in 16 bit.
DEFAULT_INCLUDE = (r"(^|\.)\d+\.",)
DEFAULT_EXCLUDE = (r"(^|\.)lm_head$", r"embed")


@dataclass
class OutlierConfig:
    """Outlier-dependent quantization: keep a fraction of input columns of each layer in 16 bit."""

    mode: str = (
        "none"  # none | proxy (data-free, previous layer's weight std) | activation (calibration data)
    )
    fraction: float = 0.02  # p; the paper keeps 2%


@dataclass
class GPTQConfig:
    damp: float = 0.01  # fraction of mean(diag H) added to the diagonal (GPTQ reference: percdamp 0.01)
    act_order: bool = False  # quantize columns in order of decreasing diag(H) (static group scales)
    block_columns: int = 128  # lazy-batch width of the column updates (GPTQ reference: 128)
    batch_size: int = 8  # calibration sequences per forward pass while collecting Hessians


@dataclass
class MeasureConfig:
    """What a packed job measures next to the 16-bit model (quant.backend != simulated only)."""

    dtype: str = "bfloat16"  # 16-bit dtype of everything not packed, of the kernels' compute, and of the reference
    prompt_len: int = 128  # prefill: tokens per sequence
    prefill_batch: int = 4  # prefill: sequences per forward pass
    decode_batches: list[int] = field(default_factory=lambda: [1, 8])  # decode: ms/token at each batch size
    decode_tokens: int = 32  # decode steps timed after a prompt of prompt_len tokens
    repeats: int = 5  # timed repetitions (the median is recorded), after one warm-up
    compare_simulated: bool = True  # also evaluate ksir's simulated quantization of the same config


MEASURE_DTYPES = ("bfloat16", "float16")
LOWRANK_MODES = ("none", "factorize", "correct")
LOWRANK_WHITEN = ("none", "activation")
LOWRANK_BITS = (16, 8)


@dataclass
class LowRankConfig:
    """Low rank as a quantize axis (ksir.quant.lowrank): replace each weight by a factor pair, or correct its
    k-bit quantization error with one."""

    mode: str = "none"  # none | factorize (W ~ A B, factors at quant.bits) | correct (Q(W) + L R, factors at lowrank.bits)
    rank: float = 0.125  # >= 1: the rank itself; < 1: that fraction of min(out, in)
    bits: int = 16  # correct: storage of L and R: 16 (fp16) | 8 (int8, an fp16 scale per row)
    whiten: str = "none"  # correct: none (SVD of W - Q(W)) | activation (LQER: columns scaled by calibration RMS)


@dataclass
class HealConfig:
    """PTQ + KD ("compress then heal"): after quantization, distil the 16-bit model into the parameters that are
    not stored at k bits (norms, embeddings, head, biases); the k-bit weights stay frozen, so storage and total
    bits do not change. Records get regime=ptq+kd."""

    steps: int = 0  # 0 = off
    lr: float = 1e-3
    batch_size: int = 16
    temperature: float = 1.0  # KL(teacher || student) on logits / T, times T^2


@dataclass
class QuantConfig:
    """Every field is a Hydra key under `quant:` (conf/quant/rtn.yaml documents each one)."""

    method: str = "rtn"
    bits: float = 16
    dtype: str = "int"
    blocksize: int = 64
    granularity: str = "block"
    exponent_bits: int | None = None  # float only; None -> paper default per k
    subnormals: bool = True  # float only
    codebook: list[float] | None = None  # dtype=codebook only
    zero_point: str = "float"  # int_asym only: float (16-bit offset) | int (k-bit integer)
    scale_bits: int = 16
    scale_search: str = "absmax"
    mse_grid: int = 20  # clipping ratios tried by scale_search=mse
    mse_min_ratio: float = 0.5  # smallest clipping ratio tried
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE))
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    calib_sequences: int = 128  # GPTQ paper: 128 segments
    backend: str = "simulated"  # simulated | bitsandbytes | torchao | hqq (ksir.quant.backends)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    lowrank: LowRankConfig = field(default_factory=LowRankConfig)
    heal: HealConfig = field(default_factory=HealConfig)

    def __post_init__(self) -> None:  # QuantConfig(lowrank={...}) as from a mapping
        for name, cls in (("lowrank", LowRankConfig), ("measure", MeasureConfig), ("outlier", OutlierConfig),
                          ("gptq", GPTQConfig), ("heal", HealConfig)):
            if isinstance(getattr(self, name), Mapping):
                setattr(self, name, from_mapping(cls, getattr(self, name), f"quant.{name}"))

    @property
    def factorized(self) -> bool:
        """Weights replaced by factor pairs: a 16-bit `bits` then means fp16 factors, not the unquantized model."""
        return self.lowrank.mode == "factorize"

    @property
    def unquantized(self) -> bool:
        """The 16-bit baseline: nothing changes the weights."""
        return float(self.bits) == UNQUANTIZED_BITS and not self.factorized

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | Any) -> QuantConfig:
        """Build from a dict or DictConfig of the `quant` group; unknown keys raise ConfigError."""
        return from_mapping(cls, m, "quant")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
