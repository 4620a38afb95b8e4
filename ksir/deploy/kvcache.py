"""A k-bit KV cache measured for real: transformers' QuantizedCache with the HQQ backend, next to ksir's simulation.

The simulation (`ksir.quant.activations`) fake-quantizes keys and values where attention reads them, in a full
forward pass. A real cache stores them packed and dequantizes them at each decode step, so loss, speed and memory
are measured by decoding: each evaluation sequence is fed one token at a time (teacher forcing) through

- the real cache (QuantizedCache, backend hqq: asymmetric k-bit integers, one scale and zero per token and head, i.e.
  HQQ's axis-1 groups of head_dim values; the newest `residual` tokens kept at 16 bits),
- the default 16-bit cache (DynamicCache) with the simulation switched on: the like-for-like simulated loss,
- the default 16-bit cache without it: the reference.

Differences between real and simulated that remain by design: HQQ optimises its zero-point (half-quadratic) and
stores it with the scale in the compute dtype; the token being decoded attends to its own key unquantized in the
real cache (quantized once it is stored). Decode speed (ms per token at a prompt of measure.prompt_len) and the
cache's stored bytes (every tensor it holds) are recorded for both caches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ksir.deploy.measure import decode_run
from ksir.errors import ConfigError
from ksir.quant.activations import KV_ATTENTION
from ksir.quant.bits import kv_shape
from ksir.quant.config import KVCacheConfig, MeasureConfig


def hqq_cache(model: nn.Module, kv: KVCacheConfig) -> Any:
    """A fresh HQQ QuantizedCache for `model` (ConfigError, one line, if this model's cache cannot be one)."""
    from transformers import QuantizedCache

    try:
        return QuantizedCache("hqq", model.config, nbits=int(kv.bits), axis_key=1, axis_value=1,
                              q_group_size=kv_shape(model.config)[2], residual_length=kv.residual)
    except (ValueError, ImportError, AttributeError) as e:
        raise ConfigError("quant.kv.cache", kv.cache, ["simulated"],
                          f"transformers' quantized cache cannot serve {type(model).__name__}: {e}") from None


def check_model(model: nn.Module, kv: KVCacheConfig) -> None:
    """Before any compute: the real cache can be built for this model and decoding goes through it."""
    hqq_cache(model, kv)


def cache_bytes(cache: Any) -> int:
    """Bytes of every tensor the cache holds (packed codes, scales and zeros, the 16-bit residual window)."""
    seen: set[int] = set()
    total = 0

    def add(t: Any) -> None:
        nonlocal total
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
        elif isinstance(t, dict):
            for v in t.values():
                add(v)
        elif isinstance(t, tuple | list):
            for v in t:
                add(v)

    for layer in cache.layers:
        for v in vars(layer).values():
            add(v)
    return total


@torch.inference_mode()
def decode_loss(model: nn.Module, ids: torch.Tensor, make_cache: Callable[[], Any]) -> float:
    """Mean next-token cross-entropy of [n, T] token ids fed one position at a time through a cache."""
    cache, total = make_cache(), 0.0
    for t in range(ids.shape[1] - 1):
        out = model(input_ids=ids[:, t:t + 1], cache=cache, use_cache=True)
        cache = out.cache
        total += float(torch.nn.functional.cross_entropy(out.logits[:, -1].float(), ids[:, t + 1], reduction="sum"))
    return total / (ids.shape[0] * (ids.shape[1] - 1))


def measure(model: nn.Module, kv: KVCacheConfig, blocks: torch.Tensor, m: MeasureConfig) -> dict[str, Any]:
    """Loss through the real cache, the simulated one and the 16-bit one; decode speed and bytes of real and
    16-bit caches. `model` has the simulation installed (quant.kv); it is switched off and on around the passes."""
    from transformers import DynamicCache

    simulated = getattr(model.config, "_attn_implementation", None) == KV_ATTENTION
    base = getattr(model, "ksir_kv_base", None) or "sdpa"
    ids = blocks[: kv.sequences]

    def dynamic() -> Any:
        return DynamicCache(config=model.config)

    def real() -> Any:
        return hqq_cache(model, kv)

    out: dict[str, Any] = {"backend": kv.cache, "bits": float(kv.bits), "residual": kv.residual,
                           "sequences": int(ids.shape[0]), "tokens": int(ids.shape[1])}
    try:
        model.set_attn_implementation(base)
        losses = {"cache": decode_loss(model, ids, real), "reference": decode_loss(model, ids, dynamic)}
        prompt = ids[:1, : min(m.prompt_len, ids.shape[1])]
        ms_real, cache_real = decode_run(model, prompt, m.decode_tokens, m.repeats, prompt.device, real)
        ms_ref, cache_ref = decode_run(model, prompt, m.decode_tokens, m.repeats, prompt.device, dynamic)
    finally:
        if simulated:
            model.set_attn_implementation(KV_ATTENTION)
    losses["simulated"] = decode_loss(model, ids, dynamic) if simulated else None
    out.update(loss=losses, ms_per_token={"cache": ms_real, "reference": ms_ref},
               cache_bytes={"cache": cache_bytes(cache_real), "reference": cache_bytes(cache_ref)}, context=int(prompt.shape[1] + m.decode_tokens))
    if losses["simulated"] is not None:
        out["cache_minus_simulated"] = losses["cache"] - losses["simulated"]
    return out
