"""k-bit scaled-inference rule (k-SIR) inside self-attention, as a Hugging Face attention function.

out = beta * softmax(Q_k(Q K^T / sqrt(d)) + mask) Q_k(V),  Q_k(x) = clip(round(x / alpha), -L, L) * alpha,
L = 2^(k-1) - 1, one learnable alpha per head for the scores and per key/value head for the values, and one
learnable beta per head. Rounding has a straight-through gradient; alpha gets LSQ's gradient, scaled by
1 / sqrt(N * L) (N = elements per head). The mask is added after quantization, so masked positions never
take up quantization range.

It plugs into any model whose attention goes through `transformers.AttentionInterface` (Llama and the other
modern HF architectures): `register()` adds the function under the name "ksir" and
`model.set_attn_implementation("ksir")` switches the model to it; the model code is not forked. The
parameters live in a child module `ksir_attn` of each attention module, so they are part of the model's
state (optimizer, Lightning checkpoints, export). Layers without `ksir_attn` fall back to SDPA.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ksir.qat.fake_quant import grad_scale, ste_round
from ksir.quant.dtypes import int_levels
from ksir.quant.vocab import REFERENCE_BITS

ATTN_IMPLEMENTATION = "ksir"


class KSIRQuant(nn.Module):
    """The learnable k-SIR constants of one attention layer."""

    def __init__(self, n_heads: int, n_kv_heads: int, bits: float, learn: bool = True):
        super().__init__()
        self.bits = float(bits)
        self.levels = int_levels(int(bits)) if self.bits < REFERENCE_BITS else 0
        self.score_alpha = nn.Parameter(torch.ones(n_heads), requires_grad=learn)
        self.value_alpha = nn.Parameter(torch.ones(n_kv_heads), requires_grad=learn)
        self.beta = nn.Parameter(torch.ones(n_heads), requires_grad=learn)
        self.calibrating = False
        self.register_buffer("score_absmax", torch.zeros(n_heads), persistent=False)
        self.register_buffer("value_absmax", torch.zeros(n_kv_heads), persistent=False)

    def extra_repr(self) -> str:
        return f"bits={self.bits:g}, heads={self.score_alpha.numel()}, kv_heads={self.value_alpha.numel()}"

    def quantize(self, x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """Q_k over dim 1 (heads) of a [B, H, ., .] tensor."""
        if self.levels == 0 or self.calibrating:  # calibration observes the full-precision values
            return x
        n_per_head = x.numel() // x.shape[1]
        a = grad_scale(alpha.abs().clamp(min=1e-8), 1.0 / math.sqrt(n_per_head * self.levels)).view(1, -1, 1, 1)
        xc = torch.clamp(x / a.to(x.dtype), -self.levels, self.levels)
        return ste_round(xc) * a.to(x.dtype)

    @torch.no_grad()
    def finish_calibration(self) -> None:
        """alpha = absmax / L per head, from the batches seen while calibrating."""
        if self.levels:
            for alpha, amax in ((self.score_alpha, self.score_absmax), (self.value_alpha, self.value_absmax)):
                alpha.copy_(torch.where(amax > 0, amax / self.levels, torch.ones_like(amax)))
        self.calibrating = False


def _repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=1)


def ksir_attention_forward(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                           **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention function registered as "ksir" (signature of transformers' attention interface)."""
    kq: KSIRQuant | None = getattr(module, "ksir_attn", None)
    if kq is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    n_rep = query.shape[1] // key.shape[1]
    scores = torch.matmul(query, _repeat_kv(key, n_rep).transpose(2, 3)) * scaling
    tq, tk = scores.shape[-2:]
    if attention_mask is None and getattr(module, "is_causal", True) and tq > 1:
        causal = torch.ones(tq, tk, dtype=torch.bool, device=scores.device).tril(tk - tq)
        attention_mask = torch.zeros(tq, tk, dtype=scores.dtype, device=scores.device).masked_fill(
            ~causal, torch.finfo(scores.dtype).min)[None, None]
    if attention_mask is not None:
        attention_mask = attention_mask[..., :tk]
    if kq.calibrating:
        with torch.no_grad():
            seen = scores if attention_mask is None else scores.masked_fill(attention_mask < 0, 0)
            kq.score_absmax.copy_(torch.maximum(kq.score_absmax, seen.abs().amax(dim=(0, 2, 3)).float()))
            kq.value_absmax.copy_(torch.maximum(kq.value_absmax, value.abs().amax(dim=(0, 2, 3)).float()))
    scores = kq.quantize(scores, kq.score_alpha)
    v = _repeat_kv(kq.quantize(value, kq.value_alpha), n_rep)
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    probs = nn.functional.dropout(probs, p=dropout, training=module.training)
    out = torch.matmul(probs, v) * kq.beta.view(1, -1, 1, 1).to(query.dtype)
    return out.transpose(1, 2).contiguous(), probs


def register() -> None:
    """Make "ksir" a valid `attn_implementation` (attention function + its 4D additive mask). Idempotent."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_IMPLEMENTATION, ksir_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, eager_mask)


def attention_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Self-attention modules that dispatch through the attention interface (they hold `config` and `scaling`)."""
    return [(n, m) for n, m in model.named_modules()
            if type(m).__name__.endswith("Attention") and hasattr(m, "config") and hasattr(m, "scaling")]


def enable_ksir_attention(model: nn.Module, bits: float, learn: bool = True,
                          calib: torch.Tensor | None = None) -> int:
    """Add k-SIR constants to every attention layer and switch the model to them; returns the layer count.

    With `calib` (token ids), alpha starts at absmax / L per head of one forward pass over it (usable for
    inference without training); without, alpha stays 1 until a saved state is loaded into it."""
    register()
    cfg = model.config
    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    mods = attention_modules(model)
    if not mods:
        raise ValueError(f"{type(model).__name__} has no attention module using the attention interface")
    p = next(model.parameters())
    for _, m in mods:
        m.ksir_attn = KSIRQuant(n_heads, n_kv, bits, learn).to(p.device)
    model.set_attn_implementation(ATTN_IMPLEMENTATION)
    if calib is not None:
        calibrate_ksir(model, calib)
    return len(mods)


@torch.no_grad()
def calibrate_ksir(model: nn.Module, calib: torch.Tensor, batch_size: int = 8) -> None:
    quants = [m for m in model.modules() if isinstance(m, KSIRQuant)]
    for q in quants:
        q.score_absmax.zero_()
        q.value_absmax.zero_()
        q.calibrating = True
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        for i in range(0, len(calib), batch_size):
            model(input_ids=calib[i:i + batch_size].to(dev))
    finally:
        model.train(was_training)
        for q in quants:
            q.finish_calibration()
