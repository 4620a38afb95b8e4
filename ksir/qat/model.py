"""Turning a Hugging Face causal LM into a QAT model in place, its bit accounting, and its export.

The HF model object stays the thing that is trained, evaluated and saved: selected `nn.Linear` layers become
`QATLinear` (a subclass: same `weight` parameter, plus learned scales), attention switches to k-SIR through
the attention interface. Nothing of the model's code is replaced.

Export layout (one folder, written atomically):
- `model.safetensors` + `config.json`: a plain HF model whose quantized layers hold the *dequantized* k-bit
  weights, so any HF loader runs the weight-quantized model as trained (k-SIR attention and activation
  quantization need `load_qat_model`);
- `ksir_qat.safetensors`: the latent full-precision weights of the quantized layers and every learned constant
  (scales, zero-points, codebooks, k-SIR alpha / beta); `ksir_qat.json`: the qat config and bit accounting.
`load_qat_model` rebuilds the identical model (same forward, bit for bit) and can continue training it.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ksir.qat.attention import KSIRQuant, attention_modules, enable_ksir_attention
from ksir.qat.config import TERNARY_BITS, QATConfig, validate_qat_config
from ksir.qat.fake_quant import WeightSpec, fake_quant_activation, fake_quant_weight, init_scale
from ksir.quant.bits import summarize
from ksir.quant.blockwise import make_grid, to_blocks
from ksir.quant.dtypes import int_levels
from ksir.quant.select import quantized_linear_names
from ksir.quant.vocab import REFERENCE_BITS

QAT_CONFIG_FILE = "ksir_qat.json"
QAT_STATE_FILE = "ksir_qat.safetensors"
META_FILE = "ksir_train.json"  # same name as ksir.checkpoints.META_FILE (train metadata)
QAT_PARAM_MARKERS = (".qat_", "ksir_attn.")


class QATLinear(nn.Linear):
    """nn.Linear whose forward uses fake-quantized weights (and optionally inputs). Made by `to_qat_linear`
    from an existing layer (class swap), so the weight Parameter, its name and its optimizer slot stay."""

    spec: WeightSpec | None
    act_bits: float | None

    def quantized_weight(self) -> torch.Tensor:
        if self.spec is None:
            return self.weight
        return fake_quant_weight(self.weight, self.spec, self.qat_scale, self.qat_zero, self.qat_code,
                                 refit_code=self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_bits is not None:
            x = fake_quant_activation(x, self.act_bits)
        return F.linear(x, self.quantized_weight(), self.bias)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.spec is not None:
            s += f", {self.spec.quantizer}/{self.spec.grid.dtype}@{self.spec.grid.bits:g}b scale={self.spec.scale}"
        return s + (f", act_bits={self.act_bits:g}" if self.act_bits is not None else "")


def weight_spec(q: QATConfig) -> WeightSpec:
    qc = q.quant_config()
    grid = make_grid(qc)
    quantizer = q.resolved_quantizer()
    k = float(qc.bits)
    if quantizer == "sign":
        levels = 2
    elif quantizer == "stretched":
        levels = 3 if k == TERNARY_BITS else 2 ** int(k)
    elif grid.affine or grid.data_driven:
        levels = 2 ** int(k)
    elif grid.dtype == "int":
        levels = 2 * int_levels(k) + 1
    else:
        levels = int(grid.code.numel())
    return WeightSpec(quantizer, q.scale, q.scale_init, grid, qc.granularity, int(qc.blocksize), levels)


def to_qat_linear(m: nn.Linear, spec: WeightSpec | None, act_bits: float | None) -> QATLinear:
    if type(m) is not nn.Linear:
        raise TypeError(f"QAT converts nn.Linear layers, not {type(m).__name__}")
    m.__class__ = QATLinear
    m.spec, m.act_bits = spec, act_bits
    scale = zero = code = None
    if spec is not None and spec.scale == "lsq":
        scale, zero, code = init_scale(to_blocks(m.weight.detach(), spec.granularity, spec.blocksize), spec)
    m.register_parameter("qat_scale", nn.Parameter(scale.to(m.weight.device)) if scale is not None else None)
    m.register_parameter("qat_zero", nn.Parameter(zero.to(m.weight.device)) if zero is not None else None)
    m.register_buffer("qat_code", code.to(m.weight.device) if code is not None else None)
    return m  # type: ignore[return-value]


@dataclass
class QATSummary:
    """Bit accounting of a QAT model, like ksir.quant.QuantSummary for PTQ (plus k-SIR attention)."""

    total_bits: float
    n_params: int
    n_quantized: int
    bits_per_param: float
    n_layers: int
    bits: float  # accounted bits per quantized weight (log2(3) for ternary)
    attention_layers: int = 0
    attention_bits: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare_qat(model: nn.Module, q: QATConfig, calib: torch.Tensor | None = None) -> QATSummary:
    """Make `model` a QAT model in place (weights, activations, k-SIR attention as configured).

    calib: token ids for the initial k-SIR alphas (absmax / L per head); without them alpha starts at 1."""
    qc = q.quant_config()
    modules = dict(model.named_modules())
    names = quantized_linear_names(model, qc) if q.enabled else []
    validate_qat_config(q, [modules[n].weight.shape[1] for n in names])
    shapes = {n: tuple(modules[n].weight.shape) for n in names} if q.weights_quantized else {}
    summary = summarize(model, q.quant_config(), shapes, {})
    spec = weight_spec(q) if q.weights_quantized else None
    if spec is not None or q.act_bits is not None:
        for n in names:
            to_qat_linear(modules[n], spec, q.act_bits)
    total, n_attn, attn_bits = summary.total_bits, 0, None
    if q.enabled and q.attention.enabled:
        n_attn = enable_ksir_attention(model, q.attention.bits, q.attention.learn, calib)
        attn_bits = float(q.attention.bits)
        per_layer = sum(p.numel() for p in next(m for m in model.modules() if isinstance(m, KSIRQuant)).parameters())
        total += n_attn * per_layer * REFERENCE_BITS  # alpha / beta stored in 16 bit
    return QATSummary(total, summary.n_params, summary.n_quantized, total / summary.n_params, summary.n_layers,
                      q.effective_bits if spec is not None else float(REFERENCE_BITS), n_attn, attn_bits)


def is_qat_param_name(name: str) -> bool:
    """Learned quantization constants (LSQ scales, zero-points, k-SIR alpha / beta): no weight decay."""
    return any(m in name for m in QAT_PARAM_MARKERS)


def qat_layers(model: nn.Module) -> dict[str, QATLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QATLinear)}


def split_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(plain HF state with dequantized weights, QAT state: latent weights + learned constants)."""
    sd = model.state_dict()
    hf = {k: v for k, v in sd.items() if not is_qat_param_name(k)}
    qat = {k: v for k, v in sd.items() if is_qat_param_name(k)}
    with torch.no_grad():
        for n, m in qat_layers(model).items():
            if m.spec is not None:
                qat[f"{n}.weight"] = m.weight.detach()
                hf[f"{n}.weight"] = m.quantized_weight().detach().to(m.weight.dtype)
    clean = lambda d: {k: v.detach().cpu().clone().contiguous() for k, v in d.items()}  # noqa: E731
    return clean(hf), clean(qat)


def save_qat_checkpoint(model: nn.Module, tokenizer: Any, path: Path, meta: dict[str, Any], q: QATConfig,
                        summary: QATSummary) -> None:
    """Write the export folder (see module docstring) to a temp folder, then rename (never half written)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    hf, qat = split_state(model)
    model.save_pretrained(tmp, state_dict=hf)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    save_file(qat, str(tmp / QAT_STATE_FILE))
    (tmp / QAT_CONFIG_FILE).write_text(json.dumps({"qat": q.as_dict(), "summary": summary.as_dict()}, indent=2))
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def is_qat_checkpoint(path: str | Path) -> bool:
    return (Path(path) / QAT_CONFIG_FILE).exists()


def load_qat_model(path: str | Path, device: torch.device | str = "cpu") -> nn.Module:
    """Rebuild a saved QAT model exactly: HF model, QAT layers / k-SIR attention, learned state; eval mode."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    path = Path(path)
    q = QATConfig.from_mapping(json.loads((path / QAT_CONFIG_FILE).read_text())["qat"])
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    prepare_qat(model, q, calib=None)
    state = load_file(str(path / QAT_STATE_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    need = {k for k in model.state_dict() if is_qat_param_name(k)} | {f"{n}.weight" for n, m in qat_layers(model).items()
                                                                     if m.spec is not None}
    if unexpected or need & set(missing):
        raise ValueError(f"{path}: QAT state does not match its config (missing {sorted(need & set(missing))[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return model.to(device).eval()


def attention_constants(model: nn.Module) -> dict[str, dict[str, list[float]]]:
    """The learned k-SIR alpha / beta per layer (for logs and tests)."""
    return {n: {k: v.detach().cpu().tolist() for k, v in m.ksir_attn.named_parameters()}
            for n, m in attention_modules(model) if hasattr(m, "ksir_attn")}
