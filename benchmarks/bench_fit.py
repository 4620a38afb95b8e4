"""Fitting speed: a 5-parameter law (Chinchilla form) on ~250 runs from the full 4,500-point
starting grid, and 1,000 bootstrap refits, on this machine's cores.

    python benchmarks/bench_fit.py [--points 250] [--boot 1000] [--full-grid]

`--full-grid` also runs L-BFGS from every one of the 4,500 starts (slow) and checks that the
default (objective at all starts, L-BFGS from the best 16) reaches the same optimum.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd

from analysis.fit import bootstrap, one_blas_thread, prepare, solve
from analysis.laws import get_law

TRUE = {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}  # Besiroglu et al. 2024


def runs(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(4e7), np.log(1.6e10), n))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), n))
    L = TRUE["E"] + TRUE["A"] / N ** TRUE["alpha"] + TRUE["B"] / D ** TRUE["beta"]
    return pd.DataFrame({"n_params": N, "train_tokens": D, "val_loss": L * np.exp(rng.normal(0, 0.01, n))})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=250)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--full-grid", action="store_true")
    args = ap.parse_args()
    df = runs(args.points)
    law = get_law("chinchilla")
    grid = int(np.prod([len(v) for v in law.grid.values()]))
    print(f"cores={os.cpu_count()} points={len(df)} law=chinchilla (5 parameters) grid={grid} starts")
    t0 = time.perf_counter()
    pb = prepare(law, df, "val_loss")
    with one_blas_thread():
        p, _ = solve(pb)
    t_fit = time.perf_counter() - t0
    a, b, e, alpha, beta = p
    print(f"fit from the full grid (L-BFGS from the best 16): {t_fit:6.2f} s   (goal < 5 s)"
          f"   E={np.exp(e):.3f} A={np.exp(a):.1f} B={np.exp(b):.1f} alpha={alpha:.4f} beta={beta:.4f}")
    t0 = time.perf_counter()
    boot, method = bootstrap(pb, p, args.boot, seed=0, n_jobs=os.cpu_count())
    t_boot = time.perf_counter() - t0
    ok = np.isfinite(boot).all(axis=1).sum()
    lo, hi = np.percentile(boot[np.isfinite(boot).all(axis=1), 3], [2.5, 97.5])
    print(f"{args.boot} bootstrap refits ({method}, {ok} converged, {os.cpu_count()} processes): {t_boot:6.2f} s   (goal < 60 s)   alpha 95% CI [{lo:.4f}, {hi:.4f}]")
    if args.full_grid:
        t0 = time.perf_counter()
        with one_blas_thread():
            full, _ = solve(pb, top_starts=None)
        t_full = time.perf_counter() - t0
        print(f"L-BFGS from all {grid} starts: {t_full:6.1f} s; same optimum as the default: "
              f"{np.allclose(full, p, rtol=1e-4, atol=1e-6)} (max |diff| {np.abs(full - p).max():.2e})")


if __name__ == "__main__":
    main()
