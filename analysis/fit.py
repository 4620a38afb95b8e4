"""Fitting a law to runs: Huber loss on residuals (log space for loss laws), summed over points,
minimised with L-BFGS from a grid of starts; bootstrap intervals; held-out extrapolation.

Chinchilla Approach 3 practice (Hoffmann et al. 2022; Besiroglu et al. 2024): Huber delta 1e-3
on log residuals, *summed* (averaging made the original fit stop early), L-BFGS from a grid.
The objective is evaluated at every grid start at once (vectorised), and L-BFGS runs from the
`top_starts` best of them: local optima of these objectives sit in the basins of the best grid
points, and `top_starts=None` runs every start to check that on any data set.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy.optimize import curve_fit, minimize

from analysis.laws import Law, get_law

torch.set_default_dtype(torch.float64)


class FitError(ValueError):
    """Data a law cannot be fitted to (too few points, one size, constant metric)."""


@dataclass
class FitResult:
    law: str
    formula: str
    metric: str
    group: dict[str, Any]
    params: dict[str, float]
    gof: dict[str, float]
    n: int
    boot: np.ndarray | None = None  # [n_boot, n_params] refitted raw parameters
    heldout: dict[str, Any] | None = None
    ctx: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def law_obj(self) -> Law:
        return get_law(self.law) if isinstance(self.law, str) else self.law

    def vector(self) -> np.ndarray:
        return np.array(list(self.params.values()))

    def predict(self, data: pd.DataFrame | dict[str, Any], params: np.ndarray | None = None) -> np.ndarray:
        """Metric predicted at the rows of `data`; with params [S, P], one row of predictions each."""
        law = self._law
        x = {c: torch.tensor(np.array(data[c], dtype=float)) for c in law.columns}
        p = torch.as_tensor(self.vector() if params is None else params)
        with torch.no_grad():
            return law.predict(p, x, self.ctx).numpy()

    def intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        if self.boot is None or len(self.boot) < 2:
            return {}
        lo, hi = np.nanpercentile(self.boot, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return {n: (float(a), float(b)) for n, a, b in zip(self.params, lo, hi, strict=True)}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: raw and reported parameters with 95% intervals and standard errors."""
        law = self._law
        ci = self.intervals()
        se = dict(zip(self.params, np.nanstd(self.boot, axis=0), strict=True)) if self.boot is not None else {}
        params = {}
        for name, v in self.params.items():
            entry: dict[str, Any] = {"value": v, "ci95": ci.get(name), "se": float(se[name]) if name in se else None}
            if name in law.report:
                label, fn = law.report[name]
                entry.update(reported=label, reported_value=float(fn(v)),
                             reported_ci95=tuple(float(fn(c)) for c in ci[name]) if name in ci else None)
            params[name] = entry
        return {"law": law.name, "formula": law.formula, "metric": self.metric, "group": self.group,
                "n_points": self.n, "params": params, "goodness_of_fit": self.gof,
                "n_bootstrap": 0 if self.boot is None else int(len(self.boot)), "heldout": self.heldout,
                "warnings": self.warnings}

    @property
    def _law(self) -> Law:
        return self.law_obj


def _huber(r: torch.Tensor, delta: float) -> torch.Tensor:
    a = r.abs()
    return torch.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def _residuals(law: Law, p: torch.Tensor, x: dict[str, torch.Tensor], y: torch.Tensor, ctx: dict[str, Any]) -> torch.Tensor:
    pred = law.predict(p, x, ctx)
    return torch.log(pred) - torch.log(y) if law.space == "log" else pred - y


def _grid(law: Law, ctx: dict[str, Any], names: list[str]) -> np.ndarray:
    axes = [np.asarray(law.grid.get(n, [0.0]), dtype=float) for n in names]
    return np.array(list(product(*axes)))


def _lbfgs(law: Law, p0: np.ndarray, x: dict[str, torch.Tensor], y: torch.Tensor, ctx: dict[str, Any],
           delta: float, names: list[str]) -> tuple[np.ndarray, float]:
    def f(p: np.ndarray) -> tuple[float, np.ndarray]:
        pt = torch.tensor(p, requires_grad=True)
        obj = _huber(_residuals(law, pt, x, y, ctx), delta).sum()
        if not torch.isfinite(obj):
            return 1e30, np.zeros_like(p)
        (g,) = torch.autograd.grad(obj, pt)
        return float(obj.detach()), g.numpy()

    bounds = [law.bounds.get(n, (None, None)) for n in names]
    res = minimize(f, p0, jac=True, method="L-BFGS-B", bounds=bounds,
                   options={"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-11})
    return res.x, float(res.fun)


def _check(law: Law, df: pd.DataFrame, metric: str, n_params: int) -> None:
    if len(df) <= n_params:
        raise FitError(f"law {law.name} has {n_params} parameters but only {len(df)} points: too few to fit")
    y = df[metric].to_numpy(float)
    if np.ptp(y) == 0:
        raise FitError(f"{metric} is constant ({y[0]:g}) over all {len(y)} points: nothing to fit")
    if law.space == "log" and (y <= 0).any():
        raise FitError(f"{metric} must be positive for a log-space law ({law.name})")
    for c in ("n_params", "total_bits"):
        if c in law.columns and df[c].nunique() < 2:
            raise FitError(f"law {law.name} needs at least 2 distinct {c}; all {len(df)} points have {df[c].iloc[0]:g}")


def fit_once(law: Law | str, df: pd.DataFrame, metric: str = "val_loss", *, delta: float = 1e-3,
             loss: str = "huber", top_starts: int | None = 16, p0: np.ndarray | None = None,
             ctx: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Best raw parameter vector for one data set (no bootstrap); returns (params, ctx)."""
    law = get_law(law)
    missing = [c for c in (*law.columns, metric) if c not in df.columns]
    if missing:
        raise FitError(f"law {law.name} needs columns {missing}, which the runs do not have")
    cols = {c: df[c].to_numpy(float) for c in law.columns}
    ctx = dict(ctx) if ctx is not None else ({**law.setup(cols)} if law.setup else {})
    ctx.update(_data_flags(law))
    names = law.param_names(ctx)
    _check(law, df, metric, len(names))
    x = {c: torch.tensor(np.array(v, dtype=float)) for c, v in cols.items()}
    y = torch.as_tensor(df[metric].to_numpy(float).copy())
    if p0 is not None:
        starts = np.atleast_2d(p0)
    else:
        starts = _grid(law, ctx, names)
        with torch.no_grad():  # every start at once: [S, n] residuals
            obj = _huber(_residuals(law, torch.as_tensor(starts), x, y, ctx), delta).sum(-1).numpy()
        obj = np.where(np.isfinite(obj), obj, np.inf)
        order = np.argsort(obj, kind="stable")
        starts = starts[order if top_starts is None else order[:top_starts]]
    best, best_obj = None, math.inf
    for s in starts:
        p, o = _lbfgs(law, s, x, y, ctx, delta, names)
        if best is None or o < best_obj - 1e-14 * max(1.0, abs(best_obj)):
            best, best_obj = p, o
    assert best is not None
    if loss == "ols":
        best = _ols(law, best, x, y, ctx)
    elif loss != "huber":
        from ksir.errors import ConfigError

        raise ConfigError("loss", loss, ["huber", "ols"])
    return best, ctx


def _data_flags(law: Law) -> dict[str, Any]:
    return {"data_term": "train_tokens" in law.columns and law.name != "chinchilla"}


def _ols(law: Law, p0: np.ndarray, x: dict[str, torch.Tensor], y: torch.Tensor, ctx: dict[str, Any]) -> np.ndarray:
    """Ordinary least squares in the law's residual space via scipy's curve_fit (from the Huber optimum)."""
    target = torch.log(y).numpy() if law.space == "log" else y.numpy()
    idx = np.arange(len(target), dtype=float)

    def f(_: np.ndarray, *p: float) -> np.ndarray:
        with torch.no_grad():
            pred = law.predict(torch.tensor(p), x, ctx)
        return (torch.log(pred) if law.space == "log" else pred).numpy()

    popt, _ = curve_fit(f, idx, target, p0=p0, maxfev=20000)
    return popt


def goodness_of_fit(law: Law, p: np.ndarray, df: pd.DataFrame, metric: str, ctx: dict[str, Any]) -> dict[str, float]:
    x = {c: torch.tensor(df[c].to_numpy(float)) for c in law.columns}
    y = torch.tensor(df[metric].to_numpy(float))
    with torch.no_grad():
        r = _residuals(law, torch.as_tensor(p), x, y, ctx).numpy()
    target = np.log(y.numpy()) if law.space == "log" else y.numpy()
    n, k = len(r), len(p)
    ss_res, ss_tot = float((r**2).sum()), float(((target - target.mean()) ** 2).sum())
    ll_term = n * math.log(max(ss_res / n, 1e-300))
    return {"n": n, "k": k, "rmse": math.sqrt(ss_res / n), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"),
            "aic": ll_term + 2 * k, "bic": ll_term + k * math.log(n), "space": law.space,
            "max_abs_residual": float(np.abs(r).max())}


def _boot_chunk(args: tuple) -> np.ndarray:
    law, df, metric, delta, loss, p_best, ctx, seeds = args
    out = []
    for seed in seeds:
        idx = np.random.default_rng(seed).integers(0, len(df), len(df))
        sample = df.iloc[idx]
        try:
            p, _ = fit_once(law, sample, metric, delta=delta, loss=loss, p0=p_best, ctx=ctx)
        except (FitError, ValueError, RuntimeError):
            p = np.full_like(p_best, np.nan)  # a degenerate resample (e.g. one size drawn): counted as missing
        out.append(p)
    return np.array(out)


def bootstrap(law: Law, df: pd.DataFrame, metric: str, p_best: np.ndarray, ctx: dict[str, Any], n_boot: int,
              seed: int = 0, delta: float = 1e-3, loss: str = "huber", n_jobs: int | None = None) -> np.ndarray:
    """Refit on `n_boot` resamples of the runs (with replacement), warm-started at the best fit,
    in parallel over processes. Deterministic for a seed, whatever the number of processes."""
    seeds = np.random.SeedSequence(seed).generate_state(n_boot)
    n_jobs = n_jobs or min(os.cpu_count() or 1, 8)
    chunks = [seeds[i::n_jobs] for i in range(n_jobs) if len(seeds[i::n_jobs])]
    args = [(law, df, metric, delta, loss, p_best, ctx, c) for c in chunks]
    # Processes pay ~1 s to start: worth it only for real work (many resamples or many points).
    parallel = n_jobs > 1 and n_boot * len(df) >= 20_000 and _picklable(law)
    if parallel:
        from joblib import Parallel, delayed

        parts = Parallel(n_jobs=len(chunks))(delayed(_boot_chunk)(a) for a in args)
    else:
        parts = [_boot_chunk(a) for a in args]
    # Reassemble in seed order so the result does not depend on n_jobs.
    out = np.empty((n_boot, len(p_best)))
    for i, part in enumerate(parts):
        out[i::len(chunks)] = part
    return out


def _picklable(obj: Any) -> bool:
    try:
        pickle.dumps(obj)
        return True
    except Exception:  # noqa: BLE001 - a user's lambda law: fall back to one process
        return False


def heldout_check(law: Law, df: pd.DataFrame, metric: str, n_holdout: int, delta: float, loss: str,
                  size_col: str = "n_params") -> dict[str, Any] | None:
    """Fit without the largest `n_holdout` model size(s); report the error predicting them."""
    sizes = np.sort(df[size_col].unique())
    if n_holdout < 1 or len(sizes) <= n_holdout:
        return None
    held = df[size_col] >= sizes[-n_holdout]
    try:
        p, ctx = fit_once(law, df[~held], metric, delta=delta, loss=loss)
    except FitError as e:
        return {"error": str(e), "held_out_sizes": [float(s) for s in sizes[-n_holdout:]]}
    res = FitResult(law.name, law.formula, metric, {}, dict(zip(law.param_names(ctx), p, strict=True)), {}, 0, ctx=ctx)
    res.law = law  # type: ignore[assignment]
    pred = res.predict(df[held])
    y = df.loc[held, metric].to_numpy(float)
    rel = (pred - y) / y
    return {"held_out_sizes": [float(s) for s in sizes[-n_holdout:]], "n_fit": int((~held).sum()),
            "n_heldout": int(held.sum()), "mean_abs_rel_error": float(np.abs(rel).mean()),
            "max_abs_rel_error": float(np.abs(rel).max()),
            "log_rmse": float(np.sqrt(np.mean((np.log(pred) - np.log(y)) ** 2))) if (pred > 0).all() else None}


def fit_law(df: pd.DataFrame, law: Law | str = "power_bits", metric: str = "val_loss", *, group: dict | None = None,
            delta: float = 1e-3, loss: str = "huber", n_boot: int = 200, seed: int = 0, holdout: int = 1,
            top_starts: int | None = 16, n_jobs: int | None = None) -> FitResult:
    """Fit one law to one set of runs, with bootstrap intervals and a held-out check."""
    law = get_law(law)
    p, ctx = fit_once(law, df, metric, delta=delta, loss=loss, top_starts=top_starts)
    names = law.param_names(ctx)
    res = FitResult(law.name, law.formula, metric, group or {}, dict(zip(names, map(float, p), strict=True)),
                    goodness_of_fit(law, p, df, metric, ctx), len(df), ctx=ctx)
    res.law = law  # type: ignore[assignment]  # keep custom laws usable
    if n_boot > 0:
        res.boot = bootstrap(law, df, metric, p, ctx, n_boot, seed=seed, delta=delta, loss=loss, n_jobs=n_jobs)
        n_bad = int(np.isnan(res.boot).any(axis=1).sum())
        if n_bad:
            res.warnings.append(f"{n_bad} of {n_boot} bootstrap resamples could not be fitted (left out)")
    if law.columns and "n_params" in df.columns:
        res.heldout = heldout_check(law, df, metric, holdout, delta, loss)
    if law.space == "log" and res.gof["r2"] < 0.9:
        res.warnings.append(f"poor fit: R^2 = {res.gof['r2']:.3f} in log space")
    return res
