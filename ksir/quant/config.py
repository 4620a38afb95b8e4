"""The `quant:` config group: a weight format (`ksir.quant.format`) plus how post-training quantization picks the
k-bit values. Frozen and validated at construction: every value that cannot run fails before any compute, as
one ConfigError naming its key (what needs the model's row sizes or the packed backends: `ksir.quant.validate`)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ksir.dataconfig import from_mapping
from ksir.quant.format import (
    DEFAULT_EXCLUDE,
    DEFAULT_INCLUDE,
    SCALE_BITS,
    ZERO_POINTS,
    WeightFormat,
    is_int,
    is_number,
)
from ksir.quant.vocab import FLOAT_DEFAULT_EXPONENT_BITS, METHODS, PTQ_BITS, REFERENCE_BITS, is_baseline

__all__ = ["DEFAULT_EXCLUDE", "DEFAULT_INCLUDE", "SCALE_BITS", "ZERO_POINTS", "ActivationConfig", "KVCacheConfig",
           "QuantConfig"]
SCALE_SEARCHES = ("absmax", "mse")
OUTLIER_MODES = ("none", "proxy", "activation")


@dataclass(frozen=True)
class OutlierConfig:
    """Outlier-dependent quantization: keep a fraction of input columns of each layer in 16 bit."""

    mode: str = (
        "none"  # none | proxy (data-free, previous layer's weight std) | activation (calibration data)
    )
    fraction: float = 0.02  # p; the paper keeps 2%


@dataclass(frozen=True)
class GPTQConfig:
    damp: float = 0.01  # fraction of mean(diag H) added to the diagonal (GPTQ reference: percdamp 0.01)
    act_order: bool = False  # quantize columns in order of decreasing diag(H) (static group scales)
    block_columns: int = 128  # lazy-batch width of the column updates (GPTQ reference: 128)
    batch_size: int = 8  # calibration sequences per forward pass while collecting Hessians


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class LowRankConfig:
    """Low rank as a quantize axis (ksir.quant.lowrank): replace each weight by a factor pair, or correct its
    k-bit quantization error with one."""

    mode: str = "none"  # none | factorize (W ~ A B, factors at quant.bits) | correct (Q(W) + L R, factors at lowrank.bits)
    rank: float = 0.125  # >= 1: the rank itself; < 1: that fraction of min(out, in)
    bits: int = 16  # correct: storage of L and R: 16 (fp16) | 8 (int8, an fp16 scale per row)
    whiten: str = "none"  # correct: none (SVD of W - Q(W)) | activation (LQER: columns scaled by calibration RMS)


@dataclass(frozen=True)
class HealConfig:
    """PTQ + KD ("compress then heal"): after quantization, distil the 16-bit model into the parameters that are
    not stored at k bits (norms, embeddings, head, biases); the k-bit weights stay frozen, so storage and total
    bits do not change. Records get regime=ptq+kd."""

    steps: int = 0  # 0 = off
    lr: float = 1e-3
    batch_size: int = 16
    temperature: float = 1.0  # KL(teacher || student) on logits / T, times T^2


@dataclass(frozen=True)
class AllocateConfig:
    """Sensitivity-driven per-layer bits (`ksir.quant.layers`): each quantized layer gets a k from `candidates`
    so that the mean k per quantized weight stays within quant.bits, which is then a budget (3.5 is allowed)."""

    candidates: list[int] = field(default_factory=list)  # [] = off; e.g. [2, 3, 4, 8]
    sequences: int = 8  # calibration sequences on which each layer's loss increase at each k is measured

    @property
    def on(self) -> bool:
        return bool(self.candidates)


SMOOTH_METHODS = ("none", "smoothquant", "awq")


@dataclass(frozen=True)
class SmoothConfig:
    """Activation-aware per-input-channel scaling before quantization (`ksir.quant.smooth`): SmoothQuant moves
    activation outliers into the weights (for k-bit activations); AWQ protects salient weight columns."""

    method: str = "none"  # none | smoothquant | awq
    alpha: float | None = None  # smoothquant: migration strength (None = 0.5, the paper's); awq: None = searched
    grid: int = 20  # awq: alphas tried, i / grid for i < grid (the paper's grid of 20)

    def resolved_alpha(self) -> float | None:
        return 0.5 if self.method == "smoothquant" and self.alpha is None else self.alpha


LAYER_POSITIONS = ("first", "last")  # layer_bits rules that name a block by position instead of a regex
ACT_DTYPES = ("int", "int_asym", "float")  # activations and KV cache: formats with a closed-form grid
ACT_GRANULARITIES = ("token", "tensor")
ACT_SCALES = ("dynamic", "static")
KV_GRANULARITIES = ("head", "token")
KV_CACHES = ("simulated", "hqq")
HQQ_CACHE_BITS = (2, 3, 4, 8)  # what transformers' HQQ cache layer accepts, within PTQ_BITS
ROTATIONS = ("none", "hadamard")
ACT_FLOAT_EXPONENT_BITS = {**FLOAT_DEFAULT_EXPONENT_BITS, 8: 4}  # FP8 activations are E4M3; below, the weights'


class _Precision:
    """What activations and the KV cache share: on/off and the float type's resolved exponent bits."""

    bits: float
    dtype: str
    exponent_bits: int | None

    @property
    def on(self) -> bool:
        return not is_baseline(self.bits)

    def resolved_exponent_bits(self) -> int | None:
        if self.dtype != "float" or not self.on:
            return None
        return self.exponent_bits if self.exponent_bits is not None else ACT_FLOAT_EXPONENT_BITS[int(self.bits)]


@dataclass(frozen=True)
class ActivationConfig(_Precision):
    """k-bit inputs of the quantized linear layers (W-k A-k): fake-quantized on the fly, as a kernel would
    before an integer or FP8 matmul. Weights' bit accounting is unchanged; the record keeps act_bits."""

    bits: float = REFERENCE_BITS  # 16 = off
    dtype: str = "int"  # int | int_asym | float (from the weight dtype registry)
    exponent_bits: int | None = None  # float only; None -> E4M3 at 8 bits, the weights' default below
    granularity: str = "token"  # token (one scale per token, per layer input) | tensor (one per layer input)
    scales: str = "dynamic"  # dynamic (from each batch) | static (calibrated absmax, per tensor)


@dataclass(frozen=True)
class KVCacheConfig(_Precision):
    """A k-bit KV cache, simulated: keys (after RoPE) and values as attention reads them, fake-quantized."""

    bits: float = REFERENCE_BITS  # 16 = off
    dtype: str = "int"  # int | int_asym | float
    exponent_bits: int | None = None  # float only; as for activations
    granularity: str = "head"  # head (one scale per token and head) | token (one per token, all heads)
    cache: str = "simulated"  # simulated | hqq: also measured through transformers' QuantizedCache (ksir.deploy.kvcache)
    residual: int = 1  # cache=hqq: newest tokens kept at 16 bits before the cache requantizes (transformers: 128)
    sequences: int = 8  # cache=hqq: evaluation sequences decoded token by token through each cache


@dataclass(frozen=True)
class AttentionConfig:
    """k-SIR attention after training (`ksir.qat.attention`'s rule, as PTQ): attention scores and values at `bits`
    with one scale per head, fixed at absmax / L on the calibration sequences; with `learn`, the scales and the
    per-head beta are then learned by `steps` of distillation from the 16-bit model, every weight frozen. Nothing
    stored changes, so total bits are the weights'; records keep attention_bits and attention_learn."""

    bits: float = REFERENCE_BITS  # 16 = off
    learn: bool = False  # false: fixed (calibrated) scales; true: then learned, weights frozen
    steps: int = 50  # learn: distillation steps on the training split
    lr: float = 1e-2  # learn: learning rate of alpha and beta
    batch_size: int = 16  # learn: sequences per step

    @property
    def on(self) -> bool:
        return not is_baseline(self.bits)


@dataclass(frozen=True)
class QuantConfig(WeightFormat):
    """Every field is a Hydra key under `quant:` (conf/quant/rtn.yaml documents each one); the format's fields
    are `WeightFormat`'s."""

    SECTION: ClassVar[str] = "quant"

    method: str = "rtn"
    scale_search: str = "absmax"
    mse_grid: int = 20  # clipping ratios tried by scale_search=mse
    mse_min_ratio: float = 0.5  # smallest clipping ratio tried
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    gptq: GPTQConfig = field(default_factory=GPTQConfig)
    calib_sequences: int = 128  # GPTQ paper: 128 segments
    backend: str = "simulated"  # simulated | bitsandbytes | torchao | hqq (ksir.quant.backends)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    lowrank: LowRankConfig = field(default_factory=LowRankConfig)
    heal: HealConfig = field(default_factory=HealConfig)
    act: ActivationConfig = field(default_factory=ActivationConfig)
    kv: KVCacheConfig = field(default_factory=KVCacheConfig)
    rotate: str = "none"  # none | hadamard (randomised Hadamard on each quantized layer's input dimension)
    layer_bits: dict[str, float] | None = None  # rule -> k: first | last | a regex on layer names (None = {})
    allocate: AllocateConfig = field(default_factory=AllocateConfig)
    smooth: SmoothConfig = field(default_factory=SmoothConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)

    def __post_init__(self) -> None:
        for name, cls in (("lowrank", LowRankConfig), ("measure", MeasureConfig), ("outlier", OutlierConfig),
                          ("gptq", GPTQConfig), ("heal", HealConfig), ("act", ActivationConfig),
                          ("kv", KVCacheConfig), ("allocate", AllocateConfig), ("smooth", SmoothConfig),
                          ("attention", AttentionConfig)):
            if isinstance(getattr(self, name), Mapping):  # QuantConfig(lowrank={...}) as from a mapping
                object.__setattr__(self, name, from_mapping(cls, getattr(self, name), f"quant.{name}"))
        if self.layer_bits is None:  # null in YAML: Hydra replaces a null node by a mapping, not an empty one
            object.__setattr__(self, "layer_bits", {})
        if self.method not in METHODS:
            self._fail("method", self.method, METHODS)
        self.check_format()
        self._check_per_layer()
        self._check_smooth()
        self._check_lowrank()
        self._check_heal()
        self._check_precisions()
        self._check_attention()
        for key, value, allowed in (("scale_search", self.scale_search, SCALE_SEARCHES),
                                    ("outlier.mode", self.outlier.mode, OUTLIER_MODES),
                                    ("rotate", self.rotate, ROTATIONS)):
            if value not in allowed:
                self._fail(key, value, allowed)
        if not self.weights_quantized:
            return  # the weights' identity: nothing else is used
        if self.scale_search == "mse":
            if not is_int(self.mse_grid) or self.mse_grid < 2:
                self._fail("mse_grid", self.mse_grid, "an integer >= 2")
            if not is_number(self.mse_min_ratio) or not 0 < self.mse_min_ratio < 1:
                self._fail("mse_min_ratio", self.mse_min_ratio, "a number in (0, 1)")
        if not is_number(self.outlier.fraction) or not 0 <= self.outlier.fraction < 1:
            self._fail("outlier.fraction", self.outlier.fraction, "a number in [0, 1)")
        if not is_int(self.calib_sequences) or self.calib_sequences < 1:
            self._fail("calib_sequences", self.calib_sequences, "an integer >= 1")
        g = self.gptq
        if not is_number(g.damp) or g.damp <= 0:
            self._fail("gptq.damp", g.damp, "a number > 0")
        if not isinstance(g.act_order, bool):
            self._fail("gptq.act_order", g.act_order, [True, False])
        for key in ("block_columns", "batch_size"):
            if not is_int(getattr(g, key)) or getattr(g, key) < 1:
                self._fail(f"gptq.{key}", getattr(g, key), "an integer >= 1")

    @property
    def factorized(self) -> bool:
        """Weights replaced by factor pairs: a 16-bit `bits` then means fp16 factors, not the unquantized model."""
        return self.lowrank.mode == "factorize"

    @property
    def per_layer(self) -> bool:
        """Layers at different k: rules (`layer_bits`) or a sensitivity-driven allocation."""
        return bool(self.layer_bits) or self.allocate.on

    def check_format(self) -> None:
        """With an allocation, quant.bits is a budget: the format is checked at each candidate k instead."""
        if not self.allocate.on:
            return super().check_format()
        cands = self.allocate.candidates
        if not isinstance(cands, list | tuple) or not all(is_int(k) for k in cands) or len(set(cands)) < 2:
            self._fail("allocate.candidates", cands, "a list of at least two distinct bit-widths, e.g. [2, 3, 4, 8]")
        if not is_number(self.bits) or not min(cands) <= self.bits <= max(cands):
            self._fail("bits", self.bits, f"a budget in [{min(cands)}, {max(cands)}]",
                       "with quant.allocate.candidates, quant.bits is the mean k per quantized weight")
        for k in cands:
            if is_baseline(k) or k not in self.defined_bits():
                self._fail("allocate.candidates", cands, list(self.defined_bits()),
                           f"dtype {self.dtype} has no {k}-bit grid for post-training quantization")
            dataclasses.replace(self, bits=k, allocate=AllocateConfig())  # the format at k: raises what it cannot do

    def resolved_exponent_bits(self) -> int | None:
        return None if self.allocate.on else super().resolved_exponent_bits()

    def layer_rule(self) -> str:
        """The per-layer rule in one string (a record's `layer_bits`, an analysis scheme column, a job's name):
        `first=8,last=8` or `allocate[2,3,4,8]`; "" for one k everywhere."""
        if self.allocate.on:
            return "allocate[" + ",".join(f"{k:g}" for k in sorted(self.allocate.candidates)) + "]"
        return ",".join(f"{rule}={float(k):g}" for rule, k in self.layer_bits.items())

    @property
    def weights_quantized(self) -> bool:
        """The weights change (k < 16, or factor pairs); activations and the KV cache are separate axes."""
        return not is_baseline(self.bits, self.factorized)

    @property
    def unquantized(self) -> bool:
        """The 16-bit baseline: nothing changes the weights, the activations, the KV cache or attention."""
        return not (self.weights_quantized or self.act.on or self.kv.on or self.attention.on)

    @property
    def needs_calibration(self) -> bool:
        """GPTQ, activation-based outliers, whitened low-rank corrections, static activation scales, SmoothQuant,
        per-layer allocations, AWQ and k-SIR attention need calibration token ids."""
        if self.unquantized:
            return False
        if (self.act.on and self.act.scales == "static") or self.smooth.method == "smoothquant" or self.attention.on:
            return True  # static scales, SmoothQuant's statistics, k-SIR attention's calibrated alpha
        if not self.weights_quantized:
            return False
        if self.allocate.on or self.smooth.method != "none":
            return True  # per-layer loss increases, or per-channel input statistics, from calibration data
        return self.method == "gptq" or self.outlier.mode == "activation" or \
            (self.lowrank.mode == "correct" and self.lowrank.whiten == "activation")

    def applies(self) -> dict[str, bool]:
        """The format's options, plus PTQ's: which mean anything for this job."""
        return {**super().applies(), "mse_grid": self.scale_search == "mse", "mse_min_ratio": self.scale_search == "mse",
                "gptq": self.method == "gptq", "calib_sequences": self.needs_calibration,
                "measure": self.backend != "simulated" or self.kv.cache != "simulated", "lowrank": self.lowrank.mode != "none",
                "heal": self.heal.steps > 0, "act": self.act.on, "kv": self.kv.on,
                "layer_bits": bool(self.layer_bits), "allocate": self.allocate.on, "smooth": self.smooth.method != "none",
                "attention": self.attention.on}

    @classmethod
    def from_mapping(cls, m: Mapping[str, Any] | Any) -> QuantConfig:
        """Build from a dict or DictConfig of the `quant` group; unknown keys raise ConfigError."""
        return from_mapping(cls, m, "quant")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def _check_per_layer(self) -> None:
        """Rules are (position or regex) -> k at which the dtype is defined, or 16 to keep the layer; an allocation
        and rules are exclusive. Per-layer k is simulated with RTN or GPTQ only."""
        rules = self.layer_bits
        if not isinstance(rules, Mapping):
            self._fail("layer_bits", rules, "a mapping rule -> bits, e.g. {first: 8, last: 8}")
        for key, k in rules.items():
            if not isinstance(key, str) or not key:
                self._fail("layer_bits", key, f"{' | '.join(LAYER_POSITIONS)} | a regex on layer names")
            if key not in LAYER_POSITIONS:
                try:
                    re.compile(key)
                except re.error as e:
                    self._fail(f"layer_bits.{key}", k, "a rule that is first, last or a Python regex", str(e))
            if not is_number(k) or (not is_baseline(k) and k not in self.defined_bits()) or \
                    (not is_baseline(k) and not float(k).is_integer()):
                self._fail(f"layer_bits.{key}", k, [*PTQ_BITS, REFERENCE_BITS],
                           f"the bits of the matching layers ({REFERENCE_BITS} = keep them unquantized)")
            if not is_baseline(k) and not self.reference:
                dataclasses.replace(self, bits=k, layer_bits={})  # the format at k: raises what it cannot do
        if not self.per_layer:
            return
        if rules and self.allocate.on:
            self._fail("layer_bits", dict(rules), why="rules and quant.allocate both choose the layers' k; use one")
        if rules and self.reference:
            self._fail("layer_bits", dict(rules), why="quant.bits is the k of the layers no rule names: set it "
                       f"below {REFERENCE_BITS}")
        if not is_int(self.allocate.sequences) or self.allocate.sequences < 1:
            self._fail("allocate.sequences", self.allocate.sequences, "an integer >= 1")
        key = "layer_bits" if rules else "allocate.candidates"
        value = dict(rules) if rules else self.allocate.candidates
        if self.lowrank.mode != "none" or self.outlier.mode != "none":
            self._fail(key, value, why="per-layer bits combine with RTN or GPTQ only (quant.lowrank.mode=none, "
                       "quant.outlier.mode=none)")
        if self.backend != "simulated":
            self._fail(key, value, why="no packed backend stores layers at different k here; use "
                       "quant.backend=simulated")

    def _check_smooth(self) -> None:
        """SmoothQuant needs k-bit activations to help, AWQ k-bit weights; both reshape each layer's input basis, so
        neither goes with a rotation, outlier columns, factor pairs or per-layer bits; neither is packed here."""
        sm = self.smooth
        if sm.method not in SMOOTH_METHODS:
            self._fail("smooth.method", sm.method, SMOOTH_METHODS)
        if sm.method == "none":
            return
        if sm.alpha is not None and (not is_number(sm.alpha) or not 0 <= sm.alpha <= 1):
            self._fail("smooth.alpha", sm.alpha, "null or a number in [0, 1]")
        if not is_int(sm.grid) or sm.grid < 2:
            self._fail("smooth.grid", sm.grid, "an integer >= 2")
        if sm.method == "smoothquant" and not self.act.on:
            self._fail("smooth.method", sm.method, why="SmoothQuant moves activation outliers into the weights so "
                       f"that activations quantize: set quant.act.bits below {REFERENCE_BITS}")
        if sm.method == "awq" and not self.weights_quantized:
            self._fail("smooth.method", sm.method, why=f"AWQ scales weight columns before k-bit rounding: set "
                       f"quant.bits below {REFERENCE_BITS}")
        if self.rotate != "none" or self.outlier.mode != "none" or self.lowrank.mode != "none" or self.per_layer:
            self._fail("smooth.method", sm.method, why="per-channel scales combine with plain RTN or GPTQ formats "
                       "only (no quant.rotate, outlier columns, lowrank or per-layer bits)")
        if self.backend != "simulated":
            self._fail("smooth.method", sm.method, why="use quant.backend=simulated (no packed backend folds the "
                       "scales here)")

    def _check_lowrank(self) -> None:
        lr = self.lowrank
        if lr.mode not in LOWRANK_MODES:
            self._fail("lowrank.mode", lr.mode, LOWRANK_MODES)
        if lr.mode == "none":
            return
        if not is_number(lr.rank) or lr.rank <= 0 or (lr.rank >= 1 and not float(lr.rank).is_integer()):
            self._fail("lowrank.rank", lr.rank, "an integer rank >= 1, or a fraction of min(out, in) in (0, 1)")
        if lr.bits not in LOWRANK_BITS:
            self._fail("lowrank.bits", lr.bits, LOWRANK_BITS)
        if lr.whiten not in LOWRANK_WHITEN:
            self._fail("lowrank.whiten", lr.whiten, LOWRANK_WHITEN)
        if lr.mode == "correct" and is_baseline(self.bits):
            self._fail("lowrank.mode", lr.mode, why="a correction corrects a k-bit quantization: set quant.bits "
                       f"below {REFERENCE_BITS} (or use lowrank.mode=factorize)")
        if lr.mode == "factorize" and lr.whiten != "none":
            self._fail("lowrank.whiten", lr.whiten, ["none"], why="factor pairs replace the weight by its truncated "
                       "SVD; whitening applies to corrections (lowrank.mode=correct)")
        if lr.mode == "factorize" and (self.method != "rtn" or self.outlier.mode != "none"):
            self._fail("lowrank.mode", lr.mode, why="factor pairs are quantized round-to-nearest without outlier "
                       "columns (set quant.method=rtn quant.outlier.mode=none)")
        if self.backend != "simulated":
            self._fail("backend", self.backend, why="no packed kernel for low-rank factors in any backend; use "
                       "quant.backend=simulated")

    def _check_precisions(self) -> None:
        """Activations and KV cache: formats with a closed-form grid, k in the weights' registry; rotations need
        something quantized to act on, and are not packed by any backend."""
        for name, sub, grans in (("act", self.act, ACT_GRANULARITIES), ("kv", self.kv, KV_GRANULARITIES)):
            if not is_number(sub.bits) or (sub.bits != REFERENCE_BITS and sub.bits not in PTQ_BITS):
                self._fail(f"{name}.bits", sub.bits, [*PTQ_BITS, REFERENCE_BITS], f"{REFERENCE_BITS} = off")
            if sub.dtype not in ACT_DTYPES:
                self._fail(f"{name}.dtype", sub.dtype, ACT_DTYPES)
            if sub.granularity not in grans:
                self._fail(f"{name}.granularity", sub.granularity, grans)
            if sub.on and sub.dtype == "float" and sub.exponent_bits is not None:
                k, e = int(sub.bits), sub.exponent_bits
                if not is_int(e) or not 1 <= e <= k - 1:
                    self._fail(f"{name}.exponent_bits", e, f"null or 1..{k - 1}", f"a {k}-bit float has one sign bit")
            if sub.on and self.backend != "simulated":
                self._fail(f"{name}.bits", sub.bits, why=f"no packed backend quantizes {'activations' if name == 'act' else 'the KV cache'} "
                           "here; use quant.backend=simulated")
        self._check_kv_cache()
        if self.act.scales not in ACT_SCALES:
            self._fail("act.scales", self.act.scales, ACT_SCALES)
        if self.act.on and self.act.scales == "static" and self.act.granularity != "tensor":
            self._fail("act.scales", self.act.scales, why="a static scale is calibrated once per layer input: set "
                       "quant.act.granularity=tensor (per-token scales are dynamic)")
        if self.rotate == "hadamard":
            if is_baseline(self.bits) and not self.act.on:
                self._fail("rotate", self.rotate, why="a rotation changes nothing unless weights or activations are "
                           f"quantized: set quant.bits or quant.act.bits below {REFERENCE_BITS}")
            if self.outlier.mode != "none" or self.lowrank.mode == "factorize":
                self._fail("rotate", self.rotate, why="outlier columns and factor pairs are chosen in the unrotated "
                           "basis: use quant.outlier.mode=none and no lowrank.mode=factorize with quant.rotate")
            if self.backend != "simulated":
                self._fail("rotate", self.rotate, why="no packed backend applies the rotation; use quant.backend=simulated")

    def _check_kv_cache(self) -> None:
        """A real quantized cache measures what the simulation models: asymmetric integers, one group per token and
        head (HQQ's axis-1 groups of head_dim values)."""
        kv = self.kv
        if kv.cache not in KV_CACHES:
            self._fail("kv.cache", kv.cache, KV_CACHES)
        if kv.cache == "simulated":
            return
        if not kv.on or kv.bits not in HQQ_CACHE_BITS:
            self._fail("kv.bits", kv.bits, list(HQQ_CACHE_BITS), f"quant.kv.cache={kv.cache} quantizes at these k")
        if kv.dtype != "int_asym" or kv.granularity != "head":
            self._fail("kv.cache", kv.cache, ["simulated"], "HQQ's cache stores asymmetric integers per token and "
                       "head: set quant.kv.dtype=int_asym quant.kv.granularity=head to compare it with its simulation")
        for key in ("residual", "sequences"):
            if not is_int(getattr(kv, key)) or getattr(kv, key) < 1:
                self._fail(f"kv.{key}", getattr(kv, key), "an integer >= 1")

    def _check_attention(self) -> None:
        """k-SIR attention replaces the attention function: not with a simulated or real KV cache (which replace it
        too), not packed, and one fine-tuning at a time (its learned scales, or healing)."""
        a = self.attention
        if not is_number(a.bits) or (a.bits != REFERENCE_BITS and a.bits not in PTQ_BITS):
            self._fail("attention.bits", a.bits, [*PTQ_BITS, REFERENCE_BITS], f"{REFERENCE_BITS} = off")
        if not isinstance(a.learn, bool):
            self._fail("attention.learn", a.learn, [True, False])
        if not a.on:
            return
        if a.learn:
            for key in ("steps", "batch_size"):
                if not is_int(getattr(a, key)) or getattr(a, key) < 1:
                    self._fail(f"attention.{key}", getattr(a, key), "an integer >= 1")
            if not is_number(a.lr) or a.lr <= 0:
                self._fail("attention.lr", a.lr, "a number > 0")
        if self.kv.on:
            self._fail("attention.bits", a.bits, why="k-SIR attention and the KV cache both replace the attention "
                       "function (k-SIR already quantizes the values): set quant.kv.bits=16 or quant.attention.bits=16")
        if self.backend != "simulated":
            self._fail("attention.bits", a.bits, why="no packed backend runs k-SIR attention; use quant.backend=simulated")
        if self.heal.steps:
            self._fail("attention.bits", a.bits, why="one fine-tuning at a time: quant.heal.steps=0 with k-SIR attention")

    def _check_heal(self) -> None:
        h = self.heal
        for key in ("steps", "batch_size"):
            v = getattr(h, key)
            if not is_int(v) or v < (0 if key == "steps" else 1):
                self._fail(f"heal.{key}", v, "an integer >= " + ("0 (0 = off)" if key == "steps" else "1"))
        if h.steps == 0:
            return
        for key in ("lr", "temperature"):
            v = getattr(h, key)
            if not is_number(v) or v <= 0:
                self._fail(f"heal.{key}", v, "a number > 0")
        if self.unquantized:
            self._fail("heal.steps", h.steps, why="healing distils a quantized model into its 16-bit self: set "
                       f"quant.bits below {REFERENCE_BITS} (or a lowrank mode)")
        if self.backend != "simulated":
            self._fail("backend", self.backend, why="a packed model is not fine-tuned here (quant.heal needs "
                       "quant.backend=simulated)")
