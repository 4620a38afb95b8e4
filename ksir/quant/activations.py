"""Activations and the KV cache at k bits, simulated with the weights' grids (`ksir.quant.blockwise`).

- Activations (`quant.act`): the input of every quantized linear layer is fake-quantized by a forward pre-hook,
  as a W-k A-k kernel quantizes it before the matmul: one scale per token (dynamic) or one per layer input
  (dynamic from each batch, or static: the absmax seen on calibration data, values beyond it clipped).
- KV cache (`quant.kv`): keys (after RoPE) and values are fake-quantized where attention reads them, through an
  attention function registered with transformers (`AttentionInterface`, name "ksir_kv") that quantizes and
  then calls SDPA: one scale per token and head (head_dim values) or per token (all heads). Every key and value
  is quantized, the current token's included; transformers' `QuantizedCache` keeps a residual window in 16 bits.
Scales are stored as fp16 like the weights' (rounded up so the absmax never clips).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ksir.errors import ConfigError
from ksir.quant.blockwise import Grid, fit_scale, round_to_grid
from ksir.quant.config import ActivationConfig, KVCacheConfig
from ksir.quant.dtypes import CodeOptions, static_code

KV_ATTENTION = "ksir_kv"


def grid_of(c: ActivationConfig | KVCacheConfig) -> Grid:
    """The grid of an activation or KV format (16-bit scales, absmax; int_asym with a 16-bit offset)."""
    return Grid(c.dtype, c.bits, static_code(c.dtype, c.bits, CodeOptions(c.resolved_exponent_bits())))


def quantize_rows(x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Fake-quantize each row of x [n, d] with its own scale (dynamic)."""
    xf = x.float()
    return round_to_grid(xf, *fit_scale(xf, grid), grid).to(x.dtype)


class ActQuantizer:
    """The forward pre-hook of one layer: its input at k bits."""

    def __init__(self, c: ActivationConfig):
        self.c, self.grid = c, grid_of(c)
        self.static: tuple[torch.Tensor, torch.Tensor | None] | None = None  # (scale, zero) once calibrated

    def calibrate(self, lo: float, hi: float) -> None:
        """A static scale covering [lo, hi] (the calibration data's range), stored as the dynamic one would be."""
        self.static = fit_scale(torch.tensor([[min(lo, 0.0), max(hi, 0.0)]]), self.grid)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.c.scales == "static":
            if self.static is None:
                raise RuntimeError("static activation scales used before calibration")
            s, z = (t.to(x.device) if t is not None else None for t in self.static)
            return round_to_grid(x.float(), s, z, self.grid).to(x.dtype)
        rows = x.reshape(-1, x.shape[-1]) if self.c.granularity == "token" else x.reshape(1, -1)
        return quantize_rows(rows, self.grid).reshape(x.shape)


def quantize_activations(model: nn.Module, modules: dict[str, nn.Module], c: ActivationConfig,
                         calib: torch.Tensor | None, batch_size: int = 8) -> dict[str, ActQuantizer]:
    """Quantize the inputs of `modules` from now on (static scales calibrated on `calib` first)."""
    quants = {n: ActQuantizer(c) for n in modules}
    if c.scales == "static":
        from ksir.quant.calib import watch_inputs

        if calib is None:
            raise ConfigError("calib", None, "a LongTensor of token ids", "quant.act.scales=static needs data")
        lo = dict.fromkeys(modules, 0.0)
        hi = dict.fromkeys(modules, 0.0)

        def seen(name: str, x: torch.Tensor) -> None:
            lo[name] = min(lo[name], float(x.min()))
            hi[name] = max(hi[name], float(x.max()))

        watch_inputs(model, modules, calib, batch_size, seen)
        for n, q in quants.items():
            q.calibrate(lo[n], hi[n])
    for n, m in modules.items():
        m.register_forward_pre_hook(_hook(quants[n]))
    return quants


def _hook(q: ActQuantizer):
    def hook(_module: nn.Module, args: tuple) -> tuple:
        return (q(args[0]), *args[1:])

    return hook


class KVQuantizer(nn.Module):
    """Held by an attention module as `ksir_kv`: its keys and values at k bits. No parameters, no state."""

    def __init__(self, c: KVCacheConfig):
        super().__init__()
        self.c, self.grid = c, grid_of(c)

    def extra_repr(self) -> str:
        return f"bits={self.c.bits:g}, dtype={self.c.dtype}, granularity={self.c.granularity}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [batch, kv_heads, tokens, head_dim]."""
        if self.c.granularity == "head":
            return quantize_rows(x.reshape(-1, x.shape[-1]), self.grid).reshape(x.shape)
        b, h, t, d = x.shape
        rows = x.transpose(1, 2).reshape(b * t, h * d)
        return quantize_rows(rows, self.grid).reshape(b, t, h, d).transpose(1, 2)


def kv_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         attention_mask: torch.Tensor | None, **kwargs: Any) -> tuple[torch.Tensor, Any]:
    """SDPA on the k-bit keys and values (the attention interface's signature)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kvq: KVQuantizer | None = getattr(module, "ksir_kv", None)
    if kvq is not None:
        key, value = kvq(key), kvq(value)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def quantize_kv_cache(model: nn.Module, c: KVCacheConfig) -> int:
    """Switch every attention layer of `model` to k-bit keys and values; returns the number of layers."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    from ksir.qat.attention import ATTN_IMPLEMENTATION, attention_modules

    current = getattr(model.config, "_attn_implementation", None)
    if current == ATTN_IMPLEMENTATION:
        raise ConfigError("quant.kv.bits", c.bits, why="this model's attention is k-SIR's (qat.attention_bits), "
                          "which quantizes its own values: quantize its KV cache in QAT, not here")
    mods = attention_modules(model)
    if not mods or not getattr(model, "_supports_attention_backend", False):
        raise ConfigError("quant.kv.bits", c.bits, why=f"{type(model).__name__}'s attention does not go through "
                          "transformers' attention interface, so its keys and values cannot be reached here")
    AttentionInterface.register(KV_ATTENTION, kv_attention_forward)
    AttentionMaskInterface.register(KV_ATTENTION, sdpa_mask)
    p = next(model.parameters())
    for _, m in mods:
        m.ksir_kv = KVQuantizer(c).to(p.device)
    model.ksir_kv_base = current  # what a real quantized cache is measured with (ksir.deploy.kvcache)
    model.set_attn_implementation(KV_ATTENTION)
    return len(mods)
