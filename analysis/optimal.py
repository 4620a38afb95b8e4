"""The answer users want: for a total-bit budget, which k (and which scheme) gives the lowest loss.

Three views, side by side, so that a disagreement between a law and the data is visible:
- per-k laws: the k whose fitted curve is lowest at the budget, with the bootstrap
  distribution of that choice (each replicate refits every curve);
- model-free: each k's measured curve interpolated linearly in log(bits) (Dettmers &
  Zettlemoyer compared precisions this way), inside the measured range only;
- continuous k from a joint law L(N, k): minimise L(B / b(k), k) over k, where b(k) = k + c is
  the bits per parameter at precision k (c, the overhead of block constants and 16-bit parts,
  is measured from the runs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from analysis.fit import FitResult, aligned_replicates
from ksir.quant.vocab import REFERENCE_BITS, is_baseline


def budget_grid(df: pd.DataFrame, n: int = 25, extrapolate: float = 10.0) -> np.ndarray:
    lo, hi = df["total_bits"].min(), df["total_bits"].max()
    return np.geomspace(lo, hi * extrapolate, n)


def curve_label(key: Any) -> str:
    """`4,nf,64` for a curve key (k first); the 16-bit curve is the unquantized model whatever scheme it was
    copied into (analysis.report.attach_baselines), and says so."""
    key = key if isinstance(key, tuple) else (key,)
    if key and isinstance(key[0], int | float) and is_baseline(key[0], "factorize" in key[1:]):
        return f"{REFERENCE_BITS:g} (unquantized)"
    return ",".join(f"{k:g}" if isinstance(k, float) else str(k) for k in key)


def label_k(label: str) -> float:
    """k back from a curve label (its first field)."""
    return float(str(label).split(",")[0].split(" ")[0])


def per_k_optimum(fits: Mapping[tuple, FitResult], budgets: np.ndarray, observed_max: float) -> list[dict[str, Any]]:
    """Best curve (k or (k, scheme)) at each budget from the per-k fits, with bootstrap frequencies."""
    keys = list(fits)
    pred = np.stack([fits[k].predict({"total_bits": budgets}).reshape(-1) for k in keys])  # [K, B]
    boot_best = None
    al = aligned_replicates([fits[k] for k in keys])  # replicate s of every curve together
    if al is not None:
        n_boot, ok = al
        bp = np.stack([fits[k].predict({"total_bits": budgets}, fits[k].boot[:n_boot][ok]) for k in keys])
        boot_best = np.argmin(np.where(np.isfinite(bp), bp, np.inf), axis=0)  # [S, B]
    rows = []
    for j, b in enumerate(budgets):
        i = int(np.argmin(pred[:, j]))
        row: dict[str, Any] = {"budget_bits": float(b), "extrapolated": _outside(fits[keys[i]], b, observed_max),
                               "best": curve_label(keys[i]), "best_k": float(keys[i][0]),
                               "predicted": {curve_label(k): float(pred[m, j]) for m, k in enumerate(keys)}}
        if boot_best is not None:
            ks = np.array([keys[m][0] for m in boot_best[:, j]], dtype=float)
            freq = pd.Series([curve_label(keys[m]) for m in boot_best[:, j]]).value_counts(normalize=True)
            row.update(best_k_ci95=(float(np.percentile(ks, 2.5)), float(np.percentile(ks, 97.5))),
                       best_frequency=float(freq.get(curve_label(keys[i]), 0.0)))
        rows.append(row)
    return rows


def _outside(fit: FitResult, budget: float, observed_max: float) -> bool:
    """A budget outside the measured total bits of this curve (its own runs), not of the whole table."""
    lo, hi = fit.x_range.get("total_bits", (0.0, observed_max))
    return bool(budget > hi * 1.0001 or budget < lo / 1.0001)


def interpolated_optimum(df: pd.DataFrame, metric: str, keys: list[str], budgets: np.ndarray) -> list[dict[str, Any]]:
    """Model-free: each curve's measured metric interpolated in log(total bits), within its range."""
    rows = []
    curves = {}
    for key, g in df.groupby(keys):
        g = g.groupby("total_bits")[metric].mean().sort_index()
        if len(g) >= 2:
            curves[key if isinstance(key, tuple) else (key,)] = (np.log(g.index.to_numpy(float)), g.to_numpy(float))
    for b in budgets:
        vals = {}
        for key, (lx, y) in curves.items():
            if lx[0] <= np.log(b) <= lx[-1]:
                vals[curve_label(key)] = float(np.interp(np.log(b), lx, y))
        # Comparing is meaningful only where at least two measured curves reach the budget.
        best = min(vals, key=vals.get) if len(vals) >= 2 else None
        rows.append({"budget_bits": float(b), "best": best, "interpolated": vals})
    return rows


def bits_overhead(df: pd.DataFrame) -> float:
    """c in bits-per-parameter = k + c, measured on quantized runs (block constants, 16-bit parts)."""
    q = df[df["bits"] < 16]
    if q.empty:
        return 0.0
    return float(np.median(q["total_bits"] / q["n_params"] - q["bits"]))


def continuous_optimum(fit: FitResult, budgets: np.ndarray, k_range: tuple[float, float], overhead: float,
                       tokens: float | None = None, resolution: float = 0.05,
                       ks: np.ndarray | None = None) -> list[dict[str, Any]]:
    """k* = argmin_k L(N = B / (k + c), k) for a joint law in (N, k), with its bootstrap interval.

    Evaluated on a k grid of `resolution` (or the given `ks`, e.g. the swept k of a law with one
    eff(k) per swept k) for the fit and every bootstrap replicate at once."""
    if ks is None:
        ks = np.arange(k_range[0], k_range[1] + resolution / 2, resolution)
    ks = np.asarray(ks, dtype=float)
    boot = fit.boot[np.isfinite(fit.boot).all(axis=1)] if fit.boot is not None else None
    rows = []
    for b in budgets:
        data = {"n_params": b / (ks + overhead), "bits": ks, "train_tokens": np.full_like(ks, tokens or 1.0)}
        i = int(np.argmin(fit.predict(data)))
        row: dict[str, Any] = {"budget_bits": float(b), "k_star": float(ks[i]), "at_range_edge": i in (0, len(ks) - 1)}
        if boot is not None and len(boot):
            kb = ks[np.argmin(np.where(np.isfinite(p := fit.predict(data, boot)), p, np.inf), axis=1)]
            row["k_star_ci95"] = (float(np.percentile(kb, 2.5)), float(np.percentile(kb, 97.5)))
        rows.append(row)
    return rows


def scheme_label(cols: list[str], scheme: tuple) -> str:
    """`lowrank_mode=correct, regime=ptq` for a scheme (a curve key without k)."""
    parts = []
    for c, v in zip(cols, scheme, strict=True):
        if pd.isna(v) or v == "-":  # a field the scheme does not have: no low rank is said by omission
            if not c.startswith("lowrank"):
                parts.append(f"{c}=none")
            continue
        parts.append(f"{c}={v:g}" if isinstance(v, float) else f"{c}={v}")
    return ", ".join(parts) or "plain k-bit"


def scheme_frontiers(fits: Mapping[tuple, FitResult], cols: list[str], budgets: np.ndarray, observed_max: float,
                     interpolated: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Each scheme at its best k, per budget: the lower envelope of its per-k laws, with bootstrap intervals
    (replicates aligned across curves), the best scheme, and its margin over the runner-up with that margin's
    interval; beside it the best scheme of the measured curves interpolated (model-free, inside their range).
    `cols` names the scheme fields of the curve keys (the curve key without its first field, k)."""
    keys = [k for k in fits if not is_baseline(k[0], "factorize" in k[1:])]  # the unquantized copies
    schemes = sorted({k[1:] for k in keys}, key=str)
    if len(schemes) < 2:
        return []
    pred = np.stack([fits[k].predict({"total_bits": budgets}).reshape(-1) for k in keys])  # [K, B]
    al = aligned_replicates([fits[k] for k in keys])
    bp = None
    if al is not None:
        n_boot, ok = al
        bp = np.stack([fits[k].predict({"total_bits": budgets}, fits[k].boot[:n_boot][ok]) for k in keys])  # [K,S,B]
        bp = np.where(np.isfinite(bp), bp, np.inf)
    member = {s: [i for i, k in enumerate(keys) if k[1:] == s] for s in schemes}
    env = np.stack([pred[member[s]].min(0) for s in schemes])  # [F, B]
    env_b = None if bp is None else np.stack([bp[member[s]].min(0) for s in schemes])  # [F, S, B]
    labels = [scheme_label(cols, s) for s in schemes]
    rows = []
    for j, b in enumerate(budgets):
        order = np.argsort(env[:, j])
        best, second = int(order[0]), int(order[1])
        best_key = keys[member[schemes[best]][int(np.argmin(pred[member[schemes[best]], j]))]]
        row: dict[str, Any] = {"budget_bits": float(b), "extrapolated": _outside(fits[best_key], b, observed_max),
                               "best_scheme": labels[best],
                               "best_k": float(best_key[0]),
                               "loss": {lab: float(env[f, j]) for f, lab in enumerate(labels)},
                               "margin": float(env[second, j] - env[best, j]), "runner_up": labels[second]}
        if env_b is not None:
            lo, hi = np.percentile(env_b[:, :, j], [2.5, 97.5], axis=1)
            row["loss_ci95"] = {lab: (float(lo[f]), float(hi[f])) for f, lab in enumerate(labels)}
            d = env_b[second, :, j] - env_b[best, :, j]
            d = d[np.isfinite(d)]
            if len(d) >= 2:
                row["margin_ci95"] = (float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)))
                row["significant"] = bool(row["margin_ci95"][0] > 0)
        if interpolated is not None:
            vals = interpolated[j].get("interpolated", {})
            by_scheme: dict[str, float] = {}
            for k, s in zip(keys, (k[1:] for k in keys), strict=True):
                v = vals.get(curve_label(k))
                if v is not None:
                    lab = scheme_label(cols, s)
                    by_scheme[lab] = min(v, by_scheme.get(lab, np.inf))
            row["measured_best_scheme"] = min(by_scheme, key=by_scheme.get) if len(by_scheme) >= 2 else None
        rows.append(row)
    return rows
