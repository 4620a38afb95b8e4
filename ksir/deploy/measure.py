"""What a model occupies and how fast it runs: bytes as stored, peak memory while evaluating, prefill and decode.

Every figure is measured on the model object in this process, never computed from a formula:
- bytes: every tensor of the state dict (what `save_pretrained` writes), tensor subclasses (torchao) taken
  apart into their inner tensors, storage shared by tied weights counted once;
- peak memory: CUDA's allocator high-water mark (weights included); on CPU the bytes as stored plus the growth
  of the process's resident set during the evaluation (Linux /proc high-water mark, reset first);
- prefill: tokens/s of one forward pass over [batch, prompt_len] tokens, no cache;
- decode: ms per step (one new token per sequence) with the KV cache, greedy, after a prompt of prompt_len tokens.
Timings are medians over `repeats` after one warm-up, with the device synchronised around each.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def tensor_bytes(t: torch.Tensor, seen: set[tuple[int, int, int]]) -> int:
    """Bytes of t's data; a tensor subclass (`__tensor_flatten__`) is the sum of its inner tensors."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        inner, _ = t.__tensor_flatten__()
        return sum(tensor_bytes(getattr(t, n), seen) for n in inner)
    n = t.numel() * t.element_size()
    key = (t.untyped_storage().data_ptr(), t.storage_offset(), n) if n else (id(t), 0, 0)
    if key in seen:
        return 0
    seen.add(key)
    return n


def stored_bytes(model: nn.Module) -> int:
    """Bytes of the model as stored: every state-dict tensor (quantization constants included), once."""
    seen: set[tuple[int, int, int]] = set()
    return sum(tensor_bytes(v, seen) for v in model.state_dict().values() if isinstance(v, torch.Tensor))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_memory(fn: Callable[[], Any], model_bytes: int, device: torch.device) -> tuple[Any, int | None, str]:
    """(fn's result, peak bytes while it ran, how it was measured)."""
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        out = fn()
        _sync(device)
        return out, int(torch.cuda.max_memory_allocated(device)), "cuda max_memory_allocated (weights included)"
    before = _rss_kib("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        reset = True
    except OSError:
        reset = False
    out = fn()
    peak = _rss_kib("VmHWM")
    if not reset or before is None or peak is None:
        return out, None, "not measurable here (no resettable /proc high-water mark)"
    return out, model_bytes + max(0, peak - before) * 1024, "bytes as stored + resident-set growth while evaluating"


def _timed(fn: Callable[[], Any], repeats: int, device: torch.device) -> float:
    """Median seconds of fn over `repeats` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def prompts(tokens: torch.Tensor, batch: int, length: int) -> torch.Tensor:
    """[batch, length] token ids cut from evaluation text (repeated if there is too little)."""
    flat = tokens.reshape(-1)
    need = batch * length
    if flat.numel() < need:
        flat = flat.repeat(need // max(1, flat.numel()) + 1)
    return flat[:need].reshape(batch, length)


@torch.inference_mode()
def prefill_tokens_per_s(model: nn.Module, ids: torch.Tensor, repeats: int, device: torch.device) -> float:
    ids = ids.to(device)
    return ids.numel() / _timed(lambda: model(input_ids=ids, use_cache=False), repeats, device)


def decode_ms_per_step(model: nn.Module, ids: torch.Tensor, steps: int, repeats: int, device: torch.device) -> float:
    """Median ms of one greedy decode step (a token for every sequence of the batch) with the KV cache."""
    return decode_run(model, ids, steps, repeats, device)[0]


@torch.inference_mode()
def decode_run(model: nn.Module, ids: torch.Tensor, steps: int, repeats: int, device: torch.device,
               make_cache: Callable[[], Any] | None = None) -> tuple[float, Any]:
    """Median ms of one greedy decode step after the prompt `ids`, and the cache the last repetition left; each
    repetition starts from `make_cache()` (a quantized cache, ksir.deploy.kvcache) or the model's default cache."""
    ids = ids.to(device)

    def run() -> tuple[float, Any]:
        out = model(input_ids=ids, use_cache=True, **({"past_key_values": make_cache()} if make_cache else {}))
        cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache, nxt = out.past_key_values, out.logits[:, -1:].argmax(-1)
        _sync(device)
        return time.perf_counter() - t0, cache

    run()  # warm-up
    times, cache = [], None
    for _ in range(repeats):
        dt, cache = run()
        times.append(dt)
    return 1000 * statistics.median(times) / steps, cache


def speed(model: nn.Module, tokens: torch.Tensor, m: Any, device: torch.device) -> dict[str, Any]:
    """Prefill tokens/s and decode ms/step at each batch size of `m` (a MeasureConfig)."""
    out: dict[str, Any] = {
        "prefill_tokens_per_s": prefill_tokens_per_s(model, prompts(tokens, m.prefill_batch, m.prompt_len),
                                                     m.repeats, device)}
    out["decode_ms_per_token"] = {str(b): decode_ms_per_step(model, prompts(tokens, b, m.prompt_len), m.decode_tokens,
                                                            m.repeats, device) for b in m.decode_batches}
    return out


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu} ({torch.get_num_threads()} threads)"
