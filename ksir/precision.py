"""Training matmuls at low precision: `trainer.matmul_precision` (fp32 | bf16 | fp8_e4m3 | fp8_e5m2).

Every linear layer of the transformer blocks computes y = x W^T from operands rounded to the chosen format,
and its backward matmuls take the output gradient rounded to the same format (the weight and input seen by
the backward are the rounded ones, as on hardware that stores them once in FP8). The readout, the embedding,
the norms and the attention score / value products stay at the trainer's precision (the usual FP8 recipe,
and u-muP's). Master weights, optimizer state and accumulation stay fp32.

Rounding is simulated on any device: scale, saturate at the format's largest finite value, cast with
torch's float8 dtypes, cast back, unscale. `trainer.matmul_scaling`:
- `tensor`: a per-tensor power-of-two scale that maps each operand's absolute maximum to the format's
  maximum (current scaling, recomputed every call; a power of two keeps the rescaling exact);
- `none`: a plain cast, no scale. This is what unit scaling promises to make safe: tensors near unit
  variance fit FP8's range as they are, while the standard parametrization's 0.02-scale weights fall into
  E4M3's subnormals (smallest normal 2^-6).
On a CUDA device with FP8 tensor cores (compute capability >= 8.9) an E4M3 forward matmul of plain linears runs
natively through `torch._scaled_mm` on the same rounded operands with the same scales (`native_fp8_available`);
E5M2 x E5M2 has no tensor-core kernel and u-muP's scaled linears wrap their own op, so those stay simulated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SCALINGS = ("tensor", "none")


@dataclass(frozen=True)
class MatmulFormat:
    name: str
    dtype: torch.dtype | None  # None: no rounding (fp32)
    doc: str

    @property
    def is_fp8(self) -> bool:
        return self.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)


FORMATS: dict[str, MatmulFormat] = {f.name: f for f in (
    MatmulFormat("fp32", None, "no rounding (the default)"),
    MatmulFormat("bf16", torch.bfloat16, "operands rounded to bfloat16 (8 exponent bits: no scale needed)"),
    MatmulFormat("fp8_e4m3", torch.float8_e4m3fn, "operands and gradients in E4M3 (max 448, 3 mantissa bits)"),
    MatmulFormat("fp8_e5m2", torch.float8_e5m2, "operands and gradients in E5M2 (max 57344, 2 mantissa bits)"),
)}


def _scale(x: torch.Tensor, dtype: torch.dtype, scaling: str) -> torch.Tensor:
    """The power-of-two factor that maps |x|'s maximum to the format's maximum (1 without scaling)."""
    if scaling == "none":
        return torch.ones((), dtype=torch.float32, device=x.device)
    amax = x.detach().abs().amax().float().clamp(min=1e-30)
    return torch.exp2(torch.floor(torch.log2(torch.finfo(dtype).max / amax)))


def round_to(x: torch.Tensor, fmt: MatmulFormat, scaling: str = "tensor") -> torch.Tensor:
    """x rounded to the format (same dtype and shape as x); values beyond the range saturate."""
    if fmt.dtype is None:
        return x
    if not fmt.is_fp8:
        return x.to(fmt.dtype).to(x.dtype)
    s = _scale(x, fmt.dtype, scaling)
    fmax = torch.finfo(fmt.dtype).max
    return ((x.float() * s).clamp(-fmax, fmax).to(fmt.dtype).float() / s).to(x.dtype)


class _RoundForward(torch.autograd.Function):
    """Round in the forward pass; the gradient passes straight through."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: MatmulFormat, scaling: str) -> torch.Tensor:  # type: ignore[override]
        return round_to(x, fmt, scaling)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None, None


class _RoundBackward(torch.autograd.Function):
    """Identity in the forward pass; the incoming gradient is rounded (it is an operand of both backward matmuls)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: MatmulFormat, scaling: str) -> torch.Tensor:  # type: ignore[override]
        ctx.fmt, ctx.scaling = fmt, scaling
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return round_to(grad, ctx.fmt, ctx.scaling), None, None


def native_fp8_available(device: torch.device) -> bool:
    """FP8 tensor cores: CUDA compute capability 8.9 (Ada) or newer, and torch's scaled matmul."""
    return (device.type == "cuda" and hasattr(torch, "_scaled_mm")
            and torch.cuda.get_device_capability(device) >= (8, 9))


class _NativeFP8Linear(torch.autograd.Function):
    """Forward x W^T on FP8 tensor cores (`torch._scaled_mm`, fp32 accumulation); the backward uses the same
    rounded operands in high precision, so that it equals the simulated backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, fmt: MatmulFormat, scaling: str) -> torch.Tensor:  # type: ignore[override]
        fmax = torch.finfo(fmt.dtype).max
        sx, sw = _scale(x, fmt.dtype, scaling), _scale(w, fmt.dtype, scaling)
        x8 = (x.reshape(-1, x.shape[-1]).float() * sx).clamp(-fmax, fmax).to(fmt.dtype)
        w8 = (w.float() * sw).clamp(-fmax, fmax).to(fmt.dtype)
        y = torch._scaled_mm(x8, w8.t(), scale_a=(1 / sx).reshape(1, 1), scale_b=(1 / sw).reshape(1, 1),
                             out_dtype=torch.float32 if x.dtype == torch.float32 else torch.bfloat16)
        ctx.save_for_backward((x8.float() / sx).to(x.dtype).reshape(x.shape), (w8.float() / sw).to(w.dtype))
        return y.to(x.dtype).reshape(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        xq, wq = ctx.saved_tensors
        g2 = grad.reshape(-1, grad.shape[-1])
        return (grad @ wq).reshape(xq.shape), g2.t() @ xq.reshape(-1, xq.shape[-1]).to(g2.dtype), None, None


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, fmt: MatmulFormat, scaling: str,
           op=F.linear) -> torch.Tensor:
    """`op(x, w, bias)` with both operands and the output gradient rounded to `fmt`. `op` is any linear map of
    (x, w) (F.linear, or unit-scaling's scaled linear)."""
    if fmt.dtype is None:
        return op(x, w, bias)
    native = (fmt.dtype == torch.float8_e4m3fn and op is F.linear and native_fp8_available(x.device)
              and x.shape[-1] % 16 == 0 and w.shape[0] % 16 == 0)
    if native:
        y = _NativeFP8Linear.apply(x, w, fmt, scaling)
        y = y + bias if bias is not None else y
    else:
        y = op(_RoundForward.apply(x, fmt, scaling), _RoundForward.apply(w, fmt, scaling), bias)
    return _RoundBackward.apply(y, fmt, scaling)


class LowPrecisionLinear(nn.Linear):
    """An nn.Linear whose matmuls run at `fmt` (same parameters and state-dict keys as the layer it replaces)."""

    fmt: MatmulFormat = FORMATS["fp32"]
    scaling: str = "tensor"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, self.fmt, self.scaling)


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers of the transformer blocks (readout and embedding excluded)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and m is not out
            and ".layers." in f".{n}"}


def apply(model: nn.Module, name: str, scaling: str = "tensor") -> int:
    """Run the blocks' matmuls at `name` from now on (in place; parameters untouched). Layers that read the
    format themselves (`fmt` attribute: u-muP's linears) are set; plain nn.Linear layers become
    LowPrecisionLinear. Returns the number of layers set."""
    fmt = FORMATS[name]
    layers = block_linears(model)
    for m in layers.values():
        if type(m) is nn.Linear:
            m.__class__ = LowPrecisionLinear
        m.fmt, m.scaling = fmt, scaling
    return len(layers)


def remove(model: nn.Module) -> None:
    """Back to plain full-precision layers (before saving or evaluating the trained weights)."""
    for m in block_linears(model).values():
        if type(m) is LowPrecisionLinear:
            m.__class__ = nn.Linear
            del m.fmt, m.scaling
        elif hasattr(m, "fmt"):
            m.fmt = FORMATS["fp32"]


def underflow_share(x: torch.Tensor, name: str, scaling: str = "tensor") -> float:
    """The share of x's nonzero entries that the format rounds to zero (diagnostics and tests)."""
    nz = x != 0
    return float(((round_to(x, FORMATS[name], scaling) == 0) & nz).sum()) / max(1, int(nz.sum()))


def relative_error(x: torch.Tensor, name: str, scaling: str = "tensor") -> float:
    """||round(x) - x|| / ||x||: the rounding error the format adds to one tensor."""
    d = round_to(x, FORMATS[name], scaling) - x
    return float(d.norm() / x.norm().clamp(min=1e-30)) if x.numel() else math.nan
