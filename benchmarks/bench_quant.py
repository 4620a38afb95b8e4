"""Round-to-nearest throughput per data type: GB/s of bf16 weights (bytes read + written), side by side with a plain
tensor copy of the same bytes in the same run. CPU always (scaled-down shapes unless --full), CUDA when present
(eager and torch.compile).

    python benchmarks/bench_quant.py            # CPU, half-width Llama-7B block shapes (~4 min on 2 cores)
    python benchmarks/bench_quant.py --full     # the 32 blocks of Llama-7B (on a GPU: whole model timing)
"""

from __future__ import annotations

import argparse
import time

import torch

from ksir.quant.blockwise import fit_data_code, make_grid, quantize_blocks
from ksir.quant.config import QuantConfig

# One Llama-7B transformer block: q, k, v, o [4096, 4096]; gate, up [11008, 4096]; down [4096, 11008].
LLAMA7B_BLOCK = [(4096, 4096)] * 4 + [(11008, 4096)] * 2 + [(4096, 11008)]
LLAMA7B_BLOCKS = 32
DTYPES = ["int", "int_asym", "int_asym:int", "float", "dynamic", "nf", "quantile"]  # ":int" = quant.zero_point=int


def shapes(full: bool, device: str) -> list[tuple[int, int]]:
    if full:
        return LLAMA7B_BLOCK * LLAMA7B_BLOCKS
    if device == "cpu":
        # 1/4 of one block: 50M weights, 100 MB of bf16, several times a server CPU's last-level cache, so that the
        # copy baseline (like any real model) streams from memory instead of running at cache speed.
        return [(o // 2, i // 2) for o, i in LLAMA7B_BLOCK]
    return LLAMA7B_BLOCK * 4


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, tensors, device: str, reps: int) -> float:
    for t in tensors:  # warm-up (and compilation)
        fn(t)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        for t in tensors:
            fn(t)
    sync(device)
    return (time.perf_counter() - t0) / reps


def run(device: str, full: bool, compile_: bool, reps: int, blocksize: int, bits: int) -> list[dict]:
    g = torch.Generator(device=device).manual_seed(0)
    ws = [
        torch.randn(s, generator=g, device=device).mul_(0.02).to(torch.bfloat16) for s in shapes(full, device)
    ]
    nbytes = 2 * sum(w.numel() * w.element_size() for w in ws)  # read + write
    rows = []
    copy_s = timed(lambda w: w.clone(), ws, device, reps)
    rows.append({"dtype": "copy", "mode": "eager", "GB/s": nbytes / copy_s / 1e9, "s": copy_s, "ratio": 1.0})
    for dtype in DTYPES:
        name, _, zero_point = dtype.partition(":")
        grid = make_grid(QuantConfig(bits=bits, dtype=name, blocksize=blocksize, zero_point=zero_point or "float"))
        if grid.data_driven:  # the tensor's own codebook, fitted once per tensor (a sort) outside the timed pass
            grid = fit_data_code(ws[0].float().reshape(-1, blocksize), grid)

        def qd(w, grid=grid):
            return quantize_blocks(w.float().reshape(-1, blocksize), grid).to(torch.bfloat16)

        modes = [("eager", qd)]
        if compile_:
            torch._dynamo.reset()
            modes.append(("compile", torch.compile(qd, dynamic=False)))
        for mode, fn in modes:
            s = timed(fn, ws, device, reps)
            rows.append({"dtype": dtype, "mode": mode, "GB/s": nbytes / s / 1e9, "s": s, "ratio": copy_s / s})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="all 32 Llama-7B blocks (6.5B weights; needs ~30 GB)")
    ap.add_argument("--compile", action="store_true", help="also torch.compile on CPU (always on with CUDA)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--blocksize", type=int, default=64)
    ap.add_argument("--bits", type=int, default=4)
    args = ap.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        name = torch.cuda.get_device_name() if dev == "cuda" else f"cpu x{torch.get_num_threads()} threads"
        full = args.full and dev == "cuda" or (args.full and not torch.cuda.is_available())
        rows = run(dev, full, args.compile or dev == "cuda", args.reps, args.blocksize, args.bits)
        n = sum(o * i for o, i in shapes(full, dev))
        print(
            f"\n{name}: {n / 1e6:.1f}M bf16 weights, {args.bits}-bit, block {args.blocksize}, torch {torch.__version__}"
        )
        print("| dtype | mode | GB/s | x copy | s per pass |\n|---|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['dtype']} | {r['mode']} | {r['GB/s']:.2f} | {r['ratio']:.2f} | {r['s']:.4f} |")


if __name__ == "__main__":
    main()
