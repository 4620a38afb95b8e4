"""PTQ sweeps: base model loaded once per process and restored between jobs, vs reloaded per job.

Measures the model-acquisition time (plus one in-place pass over the weights) of a sweep of `--jobs` quantize jobs over one checkpoint of
each size of ksir's own family (random weights saved with save_pretrained: load cost does not
depend on the values). Prints seconds per job for both strategies and the speed-up.

    python benchmarks/bench_ptq_reload.py [--sizes xs,m,xl,2xl,3xl] [--jobs 7]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from ksir import checkpoints
from ksir.families import count_params, get_family, own_config


@torch.no_grad()
def touch(model: torch.nn.Module) -> None:
    """What every job does to the weights at least once (quantization reads and rewrites them);
    it also forces lazily memory-mapped weights to be read, so both strategies pay for real I/O."""
    for p in model.parameters():
        p.mul_(0.5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="xs,m,xl,2xl,3xl")
    ap.add_argument("--jobs", type=int, default=7, help="quantize jobs per checkpoint (k = 2,3,4,5,6,8,16)")
    args = ap.parse_args()
    hf_logging.disable_progress_bar()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fam = get_family("llama")
    print(f"device={device}  jobs per checkpoint={args.jobs}")
    print(f"{'size':>5} {'params':>11} {'reload s/job':>13} {'cached s/job':>13} {'speed-up':>9}")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            path = Path(tmp) / size
            AutoModelForCausalLM.from_config(own_config(fam, size, vocab_size=257)).save_pretrained(path)
            ckpt = str(path)
            t0 = time.perf_counter()
            for _ in range(args.jobs):
                model = checkpoints.load_model(ckpt, device)
                touch(model)
            reload_s = (time.perf_counter() - t0) / args.jobs
            n = count_params(model)[0]
            del model
            checkpoints._BASE.clear()
            t0 = time.perf_counter()
            for _ in range(args.jobs):
                model = checkpoints.load_base_model(ckpt, device, cache=True)
                touch(model)
            cached_s = (time.perf_counter() - t0) / args.jobs
            checkpoints._BASE.clear()
            print(f"{size:>5} {n:>11,} {reload_s:>13.4f} {cached_s:>13.4f} {reload_s / cached_s:>8.1f}x")


if __name__ == "__main__":
    main()
