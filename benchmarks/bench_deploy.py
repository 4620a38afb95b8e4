"""Packed k-bit models against their 16-bit selves, side by side in one run: bytes, prefill, decode.

    python benchmarks/bench_deploy.py                  # CUDA if present (a 1.1B Llama, bf16), else the own family's largest size
    python benchmarks/bench_deploy.py --preset own-xl --repeats 5 --json out.json

Every model is built from the same random weights (speed and storage do not depend on training), cast to
bf16, then packed by each backend of `ksir.quant.backends` that runs on this device (ksir.deploy.measure
times them exactly as a packed quantize job does). The yardstick is the memory-bandwidth limit: at batch 1
a decode step reads every stored byte once, so it cannot be faster than bytes / bandwidth. The bandwidth is
measured in the same run (a large bf16 copy: bytes read + written / s); the H100's spec is 3.35 TB/s.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
import warnings
from typing import Any

import torch

from ksir.deploy import measure
from ksir.deploy.job import formula_summary
from ksir.quant.backends import BACKENDS, format_for
from ksir.quant.config import MeasureConfig, QuantConfig

# (label, quant overrides): every format of the registry, at the settings ksir's studies use
FORMATS: list[tuple[str, dict[str, Any]]] = [
    ("bnb nf4", dict(backend="bitsandbytes", bits=4, dtype="nf")),
    ("bnb nf4 dq", dict(backend="bitsandbytes", bits=4, dtype="nf", scale_bits=8)),
    ("bnb fp4", dict(backend="bitsandbytes", bits=4, dtype="float", exponent_bits=2)),
    ("bnb int8", dict(backend="bitsandbytes", bits=8, dtype="int", granularity="channel")),
    ("torchao int8 wo", dict(backend="torchao", bits=8, dtype="int", granularity="channel")),
    ("torchao float8 wo", dict(backend="torchao", bits=8, dtype="float", exponent_bits=4, granularity="channel")),
    ("torchao int4 wo", dict(backend="torchao", bits=4, dtype="int_asym", blocksize=128)),
    ("torchao intx4 (unpacked)", dict(backend="torchao", bits=4, dtype="int_asym", zero_point="int")),
    ("hqq 4", dict(backend="hqq", bits=4, dtype="int_asym")),
    ("hqq 3", dict(backend="hqq", bits=3, dtype="int_asym")),
    ("hqq 2", dict(backend="hqq", bits=2, dtype="int_asym")),
]
PRESETS = {  # Llama shapes
    "1b": dict(hidden_size=2048, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
               intermediate_size=5632, vocab_size=32000),  # TinyLlama-1.1B
    "own-4xl": None,  # the own family's largest size (ksir.families), byte vocabulary
    "own-xl": None,
}


def build(preset: str) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    if preset.startswith("own-"):
        from ksir.families import get_family, own_config

        cfg = own_config(get_family("llama"), preset[4:], vocab_size=259)
    else:
        cfg = LlamaConfig(**PRESETS[preset], max_position_embeddings=4096, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg).eval()


def copy_bandwidth(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Bytes read + written per second by a bf16 copy (the device's practical memory bandwidth)."""
    n = nbytes // 2 if device.type == "cuda" else nbytes // 8
    a, b = torch.empty(n, dtype=torch.bfloat16, device=device).normal_(), torch.empty(n, dtype=torch.bfloat16, device=device)
    t = measure._timed(lambda: b.copy_(a), 5, device)
    return 2 * a.numel() * a.element_size() / t


def figures(model: torch.nn.Module, tokens: torch.Tensor, m: MeasureConfig, device: torch.device) -> dict[str, Any]:
    return {"bytes": measure.stored_bytes(model), **measure.speed(model, tokens, m, device)}


def main() -> None:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="1b" if cuda else "own-4xl")
    p.add_argument("--prompt-len", type=int, default=512 if cuda else 128)
    p.add_argument("--prefill-batch", type=int, default=8 if cuda else 4)
    p.add_argument("--decode-tokens", type=int, default=64 if cuda else 32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--formats", nargs="*", help="labels to run (default: all that run on this device)")
    p.add_argument("--json")
    a = p.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device("cuda" if cuda else "cpu")
    m = MeasureConfig(prompt_len=a.prompt_len, prefill_batch=a.prefill_batch, decode_batches=[1, 8],
                      decode_tokens=a.decode_tokens, repeats=a.repeats)
    base = build(a.preset)
    n = sum(p.numel() for p in base.parameters())
    tokens = torch.randint(0, base.config.vocab_size, (64, a.prompt_len), generator=torch.Generator().manual_seed(0))
    bw = copy_bandwidth(device)
    where = torch.cuda.get_device_name() if cuda else measure.device_name(device)
    print(f"{a.preset}: {n / 1e6:.1f}M parameters on {where}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}; copy bandwidth {bw / 1e9:.1f} GB/s (read + written)")
    ref = copy.deepcopy(base).to(device=device, dtype=torch.bfloat16)
    figures(ref, tokens, m, device)  # a discarded pass: thread pools, allocator and kernel caches warm up
    rows = [{"format": "bf16 (reference)", **figures(ref, tokens, m, device), "formula_bytes": 2.0 * n}]
    for label, over in FORMATS:
        if a.formats and label not in a.formats:
            continue
        q = QuantConfig(**over)
        fmt = format_for(q)
        if device.type not in fmt.devices:
            rows.append({"format": label, "skipped": f"{fmt.name} runs on {'/'.join(fmt.devices)} only"})
            continue
        summary, names = formula_summary(base, q)
        model = copy.deepcopy(base).to(device=device, dtype=torch.bfloat16)
        BACKENDS[q.backend].pack(model, q, names, fmt, torch.bfloat16, device)
        rows.append({"format": label, **figures(model, tokens, m, device), "formula_bytes": summary.total_bits / 8})
        del model
    rows.append({"format": "bf16 (again, drift check)", **figures(ref, tokens, m, device), "formula_bytes": 2.0 * n})
    r0 = rows[0]
    print(f"\nprefill: batch {m.prefill_batch} x {m.prompt_len} tokens; decode: {m.decode_tokens} steps after a "
          f"{m.prompt_len}-token prompt; medians of {m.repeats}; bound = stored bytes / copy bandwidth "
          "(a decode step at batch 1 reads every stored byte once)\n")
    print("| format | MB stored | / formula | prefill tok/s | x bf16 | decode b1 ms | x bf16 | bound ms | "
          "of bound | decode b8 ms | x bf16 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['format']} | {r['skipped']} |")
            continue
        d1, d8 = r["decode_ms_per_token"]["1"], r["decode_ms_per_token"]["8"]
        bound = 1000 * r["bytes"] / bw
        print(f"| {r['format']} | {r['bytes'] / 1e6:.2f} | {r['bytes'] / r['formula_bytes']:.4f} | "
              f"{r['prefill_tokens_per_s']:,.0f} | {r['prefill_tokens_per_s'] / r0['prefill_tokens_per_s']:.2f} | "
              f"{d1:.2f} | {r0['decode_ms_per_token']['1'] / d1:.2f} | {bound:.3f} | {bound / d1:.0%} | "
              f"{d8:.2f} | {r0['decode_ms_per_token']['8'] / d8:.2f} |")
    print("\n(x bf16 > 1: faster than the 16-bit model; 'of bound': how close a decode step at batch 1 comes to "
          "reading the stored bytes at the copy bandwidth)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"preset": a.preset, "device": where, "machine": platform.node(), "copy_bandwidth": bw,
                       "settings": m.__dict__, "rows": rows}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
