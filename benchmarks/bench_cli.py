"""Start-up cost of the command line, side by side in one run: what a user waits for before any compute.

    python benchmarks/bench_cli.py            # 5 rounds, medians
    python benchmarks/bench_cli.py --jobs 1000 --rounds 3

Rows (each a whole process, timed from outside, rounds interleaved so that machine drift hits all alike):
- `import hydra, omegaconf, yaml`: the floor any Hydra app pays (the yardstick: goal <= 3x for the next two);
- `ksir-run --help`;
- `ksir-run model.family=nope`: a one-line config error;
- `ksir-run -m ... dry_run=true` over N jobs: parse, validate and key every job of an N-job sweep and plan
  its dependencies (the pre-flight every sweep pays before its first job);
- a whole job, start-up included: the tiny model's 16-bit quantize job (its base model trained once before
  the rounds, `force=true` so that every round evaluates and writes its record, W&B offline), with ksir's
  start-up measures (`ksir.startup`) and without them (`KSIR_PLAIN_STARTUP=1`), next to the floor every job
  pays (`import torch` and a transformers model module, hqq / torchao kept out as a job does).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def timed(cmd: list[str], cwd: str, env: dict[str, str] | None = None) -> float:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", **(env or {})}
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    if r.returncode != 0 and "model.family=nope" not in cmd:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr.decode()[-2000:]}")
    return time.perf_counter() - t0


JOB = ["experiment=tiny", "trainer.min_steps=30", "trainer.max_steps=30", "eval.sequences=16"]
PER_SEED = 5 * 7 * 4  # sizes x bit-widths x data types


def sweep_args(n_jobs: int) -> tuple[int, list[str]]:
    """(jobs, arguments) of a quantize sweep of the own family with at least n_jobs jobs: sizes x bit-widths x
    data types x seeds (the seed changes no RTN result, so many jobs share keys: the dedup is part of what is
    measured, and so is planning the 5 base models per seed that the jobs need)."""
    seeds = max(1, -(-n_jobs // PER_SEED))
    return seeds * PER_SEED, ["-m", "job=quantize", "model.size=xs,s,m,l,xl", "quant.bits=2,3,4,5,6,8,16",
                              "quant.dtype=int,float,nf,quantile", f"seed={','.join(map(str, range(seeds)))}",
                              "dry_run=true", "logger=none"]


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--jobs", type=int, default=1000, help=f"jobs in the pre-flight sweep (a multiple of {PER_SEED})")
    p.add_argument("--no-job", action="store_true", help="skip the whole-job rows (they need a trained base model)")
    a = p.parse_args(argv)
    n_jobs, args = sweep_args(a.jobs)
    with tempfile.TemporaryDirectory() as tmp:
        rows: dict[str, tuple[list[str], dict[str, str]]] = {
            "import hydra, omegaconf, yaml": ([sys.executable, "-c", "import hydra, omegaconf, yaml"], {}),
            "ksir-run --help": ([str(BIN / "ksir-run"), "--help"], {}),
            "ksir-run model.family=nope (config error)": ([str(BIN / "ksir-run"), "model.family=nope", f"out_dir={tmp}"], {}),
            f"pre-flight of a {n_jobs:,}-job sweep (dry_run)": ([str(BIN / "ksir-run"), *args, f"out_dir={tmp}"], {}),
        }
        if not a.no_job:
            job = [str(BIN / "ksir-run"), *JOB, f"out_dir={tmp}/job"]
            timed(job, tmp, {"WANDB_MODE": "offline"})  # trains the base model once
            rows |= {
                "floor of a job: import torch + a transformers model": (
                    [sys.executable, "-c", "from ksir.startup import keep_kernel_libraries_lazy as lazy; lazy(); "
                     "import torch, transformers.modeling_utils"], {}),
                "16-bit quantize job (tiny), start-up measures on": ([*job, "force=true"], {"WANDB_MODE": "offline"}),
                "the same job, KSIR_PLAIN_STARTUP=1": ([*job, "force=true"],
                                                        {"WANDB_MODE": "offline", "KSIR_PLAIN_STARTUP": "1"}),
            }
        times: dict[str, list[float]] = {k: [] for k in rows}
        for _ in range(a.rounds):
            for name, (cmd, env) in rows.items():
                times[name].append(timed(cmd, tmp, env))
    floor = statistics.median(times["import hydra, omegaconf, yaml"])
    print(f"{'command':52} {'median s':>9} {'min s':>7} {'max s':>7} {'x floor':>8}")
    out = {}
    for name, ts in times.items():
        med = statistics.median(ts)
        out[name] = med
        print(f"{name:52} {med:9.2f} {min(ts):7.2f} {max(ts):7.2f} {med / floor:8.1f}")
    if not a.no_job:
        on, off = times["16-bit quantize job (tiny), start-up measures on"], times["the same job, KSIR_PLAIN_STARTUP=1"]
        ratios = [x / y for x, y in zip(on, off, strict=True)]
        print(f"job with / without start-up measures, round by round: median {statistics.median(ratios):.2f} "
              f"(min {min(ratios):.2f}, max {max(ratios):.2f})")
    return out


if __name__ == "__main__":
    main()
