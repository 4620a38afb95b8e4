"""Fitting a law to runs: Huber loss on residuals (log space for loss laws), summed over points,
minimised with L-BFGS from a grid of starts; bootstrap intervals; a held-out extrapolation check.

Chinchilla Approach 3 practice (Hoffmann et al. 2022; Besiroglu et al. 2024): Huber delta 1e-3
on log residuals, *summed* (averaging shrinks the objective so L-BFGS's relative stopping rule
fires early), L-BFGS from a grid. The objective is evaluated at every grid start at once
(vectorised numpy), and L-BFGS runs from the `top_starts` best of them: a start far worse than
the best grid points lies in the basin of a worse optimum or converges to the same one, so this
equals the full-grid result in practice; `top_starts=None` runs every start, and
`test_pruned_grid_finds_the_full_grid_optimum` / `bench_fit.py --full-grid` check the equality.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit, minimize

from analysis.laws import Law, get_law

try:
    from threadpoolctl import threadpool_limits  # installed with scikit-learn (lm-eval); only a speed-up
except ImportError:  # pragma: no cover
    threadpool_limits = None


class FitError(ValueError):
    """Data a law cannot honestly be fitted to (too few points, one size, constant metric)."""


@dataclass
class Problem:
    """One data set prepared for a law: columns as arrays, the target in residual space, context."""

    law: Law
    x: dict[str, np.ndarray]
    y: np.ndarray  # metric, linear scale
    ctx: dict[str, Any]
    delta: float = 1e-3

    @property
    def target(self) -> np.ndarray:
        return np.log(self.y) if self.law.space == "log" else self.y

    @property
    def names(self) -> list[str]:
        return self.law.param_names(self.ctx)


def one_blas_thread() -> Any:
    """Context: BLAS on one thread. L-BFGS-B calls BLAS on vectors of a few numbers; a multi-threaded
    OpenBLAS then spends milliseconds per call synchronising threads (fits ran 5x slower on a busy
    2-core machine). Parallelism comes from bootstrap processes instead."""
    return threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def objective(pb: Problem, p: np.ndarray, w: np.ndarray | None = None,
              target: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """sum_i w_i Huber(f_i(p) - t_i) and its exact gradient J^T (w * clip(r, -delta, delta))."""
    with np.errstate(all="ignore"):  # a step into overflow is rejected below, not an error
        f, J = pb.law.fn(p[None, :], pb.x, pb.ctx, True)
        r = f[0] - (pb.target if target is None else target)
        w = np.ones_like(r) if w is None else w
        g = J[0].T @ (w * np.clip(r, -pb.delta, pb.delta))
    if not (np.isfinite(r).all() and np.isfinite(g).all()):
        return 1e30, np.zeros_like(p)
    return float(w @ _huber(r, pb.delta)), g


# ftol is relative to max(|f|, 1) in L-BFGS-B: with Huber delta 1e-3 the objective is far below 1,
# so ftol must be tiny or the fit stops early (the original Chinchilla pitfall). Bootstrap refits
# start at the optimum and feed percentiles, so they stop at a looser (still tiny) tolerance.
TOL = {"fit": {"ftol": 1e-16, "gtol": 1e-12}, "boot": {"ftol": 1e-12, "gtol": 1e-9}}


def _lbfgs(pb: Problem, p0: np.ndarray, w: np.ndarray | None = None, target: np.ndarray | None = None,
           tol: str = "fit") -> tuple[np.ndarray, float, bool]:
    res = minimize(lambda p: objective(pb, p, w, target), p0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 3000, "maxcor": 20, **TOL[tol]})
    return res.x, float(res.fun), bool(res.success or res.status == 2)  # 2: no further progress possible


def grid_starts(law: Law, names: list[str]) -> np.ndarray:
    """Every combination of the law's starting values ([S, P]); extra parameters (eff(k)) start at 0."""
    axes = [np.asarray(law.grid.get(n, [0.0]), dtype=float) for n in names]
    return np.array(list(product(*axes)))


def prepare(law: Law | str, df: pd.DataFrame, metric: str, delta: float = 1e-3,
            ctx: dict[str, Any] | None = None) -> Problem:
    """Check the data can support the law (clear FitError otherwise) and build the Problem."""
    law = get_law(law)
    missing = [c for c in (*law.columns, metric) if c not in df.columns]
    if missing:
        raise FitError(f"law {law.name} needs columns {missing}, which the runs do not have")
    x = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(float) for c in law.columns}
    y = pd.to_numeric(df[metric], errors="coerce").to_numpy(float)
    bad = ~np.isfinite(y) | np.logical_or.reduce([~np.isfinite(v) for v in x.values()])
    if bad.any():
        raise FitError(f"{int(bad.sum())} of {len(y)} runs have a missing/NaN/inf value in {[*law.columns, metric]}")
    for c in dict.fromkeys(("n_params", law.size_column)):
        if c in x and len(np.unique(x[c])) < 2:
            raise FitError(f"law {law.name} needs at least 2 distinct {c}; all {len(y)} runs have {x[c][0]:g} "
                           f"(a single model size)")
    ctx = dict(ctx) if ctx is not None else law.context(x)
    n_par = len(law.param_names(ctx))
    n_distinct = len({tuple(v[i] for v in x.values()) for i in range(len(y))}) if x else len(y)
    if n_distinct <= n_par:
        raise FitError(f"law {law.name} has {n_par} parameters but the runs give only {n_distinct} distinct "
                       f"points: too few to fit")
    if np.ptp(y) == 0:
        raise FitError(f"{metric} is constant ({y[0]:g}) over all {len(y)} runs: nothing to fit")
    if law.space == "log" and (y <= 0).any():
        raise FitError(f"{metric} must be positive for a log-space law ({law.name})")
    return Problem(law, x, y, ctx, delta)


def solve(pb: Problem, *, loss: str = "huber", top_starts: int | None = 16, p0: np.ndarray | None = None,
          w: np.ndarray | None = None, target: np.ndarray | None = None, tol: str = "fit") -> tuple[np.ndarray, bool]:
    """Best raw parameter vector: L-BFGS from the best grid starts (or from p0); returns (p, converged)."""
    if p0 is not None:
        starts = np.atleast_2d(p0)
    else:
        starts = grid_starts(pb.law, pb.names)
        f, _ = pb.law.fn(starts, pb.x, pb.ctx, False)  # every start at once: [S, n]
        with np.errstate(invalid="ignore", over="ignore"):
            obj = _huber(f - (pb.target if target is None else target), pb.delta).sum(axis=1)
        order = np.argsort(np.where(np.isfinite(obj), obj, np.inf), kind="stable")
        starts = starts[order if top_starts is None else order[:top_starts]]
    best, best_obj, ok = starts[0], math.inf, False
    for s in starts:
        p, o, conv = _lbfgs(pb, s, w, target, tol)
        if best_obj == math.inf or o < best_obj - 1e-12 * abs(best_obj):
            best, best_obj, ok = p, o, conv
    if loss == "ols":
        best = _ols(pb, best, w, target)
    elif loss != "huber":
        from ksir.errors import ConfigError

        raise ConfigError("loss", loss, ["huber", "ols"])
    return best, ok


def _ols(pb: Problem, p0: np.ndarray, w: np.ndarray | None, target: np.ndarray | None) -> np.ndarray:
    """Ordinary least squares in the law's residual space via scipy's curve_fit, from the Huber optimum."""
    t = pb.target if target is None else target
    keep = np.ones(len(t), bool) if w is None else w > 0
    sigma = None if w is None else 1 / np.sqrt(w[keep])  # case weights = repeated points
    idx = np.nonzero(keep)[0].astype(float)

    def f(i: np.ndarray, *p: float) -> np.ndarray:
        return pb.law.fn(np.array(p)[None], pb.x, pb.ctx, False)[0][0][i.astype(int)]

    def jac(i: np.ndarray, *p: float) -> np.ndarray:
        return pb.law.fn(np.array(p)[None], pb.x, pb.ctx, True)[1][0][i.astype(int)]

    popt, _ = curve_fit(f, idx, t[keep], p0=p0, sigma=sigma, jac=jac, maxfev=20000)
    return popt


def fit_once(law: Law | str, df: pd.DataFrame, metric: str = "val_loss", *, delta: float = 1e-3,
             loss: str = "huber", top_starts: int | None = 16, p0: np.ndarray | None = None,
             ctx: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Best raw parameter vector for one data set (no bootstrap); returns (params, ctx)."""
    pb = prepare(law, df, metric, delta, ctx)
    with one_blas_thread():
        p, _ = solve(pb, loss=loss, top_starts=top_starts, p0=p0)
    return p, pb.ctx


def goodness_of_fit(pb: Problem, p: np.ndarray) -> dict[str, Any]:
    """RMSE and R^2 in the law's residual space; Gaussian AIC/BIC (n log(SSR/n) + penalty)."""
    f, _ = pb.law.fn(p[None], pb.x, pb.ctx, False)
    r = f[0] - pb.target
    n, k = len(r), len(p)
    ss_res, ss_tot = float((r**2).sum()), float(((pb.target - pb.target.mean()) ** 2).sum())
    ll = n * math.log(max(ss_res / n, 1e-300))
    return {"n": n, "k": k, "rmse": math.sqrt(ss_res / n), "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None,
            "aic": ll + 2 * k, "bic": ll + k * math.log(n), "space": pb.law.space,
            "max_abs_residual": float(np.abs(r).max())}


# ---- bootstrap -------------------------------------------------------------------------------------------


def _boot_chunk(pb: Problem, p_best: np.ndarray, loss: str, method: str, seeds: list[int]) -> np.ndarray:
    with one_blas_thread():
        return _boot_refits(pb, p_best, loss, method, seeds)


def _boot_refits(pb: Problem, p_best: np.ndarray, loss: str, method: str, seeds: list[int]) -> np.ndarray:
    n, P = len(pb.y), len(p_best)
    f_hat = pb.law.fn(p_best[None], pb.x, pb.ctx, False)[0][0]
    resid = pb.target - f_hat
    resid = (resid - resid.mean()) * math.sqrt(n / max(n - P, 1))  # degrees-of-freedom correction
    keys = [tuple(v[i] for v in pb.x.values()) for i in range(n)]
    sizes = pb.x.get("n_params", pb.x.get(pb.law.size_column))
    out = np.full((len(seeds), P), np.nan)
    for j, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        draw = rng.integers(0, n, n)
        w, target = None, None
        if method == "cases":  # resample runs: multinomial case weights on the original points
            w = np.bincount(draw, minlength=n).astype(float)
            used = w > 0
            if len({keys[i] for i in np.nonzero(used)[0]}) <= P or (
                    sizes is not None and len(np.unique(sizes[used])) < 2):
                continue  # a degenerate resample (too few distinct runs): counted as failed
        else:  # resample residuals around the fitted curve (fixed design: for curves with few runs)
            target = f_hat + resid[draw]
        with contextlib.suppress(ValueError, RuntimeError):  # a failed refit stays NaN and is counted
            out[j], _ = solve(pb, loss=loss, p0=p_best, w=w, target=target, tol="boot")
    return out


def bootstrap_method(n_points: int, n_params: int) -> str:
    """Case resampling needs enough runs that most resamples can still identify every parameter."""
    return "cases" if n_points >= 3 * n_params else "residuals"


def bootstrap(pb: Problem, p_best: np.ndarray, n_boot: int, *, seed: int = 0, loss: str = "huber",
              method: str = "auto", n_jobs: int | None = None) -> tuple[np.ndarray, str]:
    """Refit on `n_boot` resamples, warm-started at the best fit, in parallel over processes (joblib;
    `n_jobs=None` uses all cores when the work is large enough to pay for starting them).

    Returns ([n_boot, P] raw parameters, NaN rows for failed resamples; the method used).
    Deterministic for a seed whatever the number of processes: resample i always uses seed i."""
    if method == "auto":
        method = bootstrap_method(len(pb.y), len(p_best))
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(n_boot)]
    if n_jobs is None:  # worker processes cost ~1 s to start: by default only for real work
        n_jobs = (os.cpu_count() or 1) if n_boot * len(pb.y) * len(p_best) >= 200_000 else 1
    if n_jobs <= 1 or n_boot < 2 * n_jobs:
        return _boot_chunk(pb, p_best, loss, method, seeds), method
    from joblib import Parallel, delayed

    chunks = [seeds[i::n_jobs] for i in range(n_jobs)]
    parts = Parallel(n_jobs=n_jobs)(delayed(_boot_chunk)(pb, p_best, loss, method, c) for c in chunks)
    out = np.empty((n_boot, len(p_best)))
    for i, part in enumerate(parts):
        out[i::n_jobs] = part
    return out, method


# ---- the result ------------------------------------------------------------------------------------------


@dataclass
class FitResult:
    """A fitted law: parameters, goodness of fit, bootstrap replicates, held-out check, warnings."""

    law: Law
    metric: str
    group: dict[str, Any]
    params: dict[str, float]
    gof: dict[str, Any]
    ctx: dict[str, Any] = field(default_factory=dict)
    boot: np.ndarray | None = None  # [n_boot, P] refitted raw parameters (NaN rows: failed resamples)
    boot_method: str | None = None
    heldout: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    converged: bool = True

    @property
    def n(self) -> int:
        return int(self.gof["n"])

    def vector(self) -> np.ndarray:
        return np.array(list(self.params.values()))

    def boot_ok(self) -> np.ndarray:
        """Bootstrap replicates that converged ([S, P]; empty without a bootstrap)."""
        if self.boot is None:
            return np.empty((0, len(self.params)))
        return self.boot[np.isfinite(self.boot).all(axis=1)]

    def predict(self, data: pd.DataFrame | dict[str, Any], params: np.ndarray | None = None) -> np.ndarray:
        """Metric predicted at the rows of `data` ([n]); with params [S, P], one row per vector ([S, n])."""
        x = {c: np.atleast_1d(np.asarray(data[c], dtype=float)) for c in self.law.columns}
        return self.law.predict(self.vector() if params is None else params, x, self.ctx)

    def intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals of the raw parameters."""
        b = self.boot_ok()
        if len(b) < 2:
            return {}
        lo, hi = np.percentile(b, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return {n: (float(a), float(c)) for n, a, c in zip(self.params, lo, hi, strict=True)}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: raw and reported parameters with 95% intervals and standard errors."""
        ci, b = self.intervals(), self.boot_ok()
        se = dict(zip(self.params, b.std(axis=0, ddof=1), strict=True)) if len(b) >= 2 else {}
        params = {}
        for name, v in self.params.items():
            entry: dict[str, Any] = {"value": v, "ci95": ci.get(name), "se": float(se[name]) if name in se else None}
            if name in self.law.report:
                label, fn = self.law.report[name]
                entry.update(reported=label, reported_value=float(fn(v)),
                             reported_ci95=tuple(float(fn(c)) for c in ci[name]) if name in ci else None)
            params[name] = entry
        n_boot = 0 if self.boot is None else len(self.boot)
        return {"law": self.law.name, "formula": self.law.formula, "metric": self.metric, "group": self.group,
                "n_points": self.n, "params": params, "goodness_of_fit": self.gof,
                "bootstrap": {"n": n_boot, "converged": int(len(b)), "method": self.boot_method},
                "converged": self.converged, "heldout": self.heldout, "warnings": self.warnings}


def heldout_check(pb: Problem, df: pd.DataFrame, metric: str, n_holdout: int, loss: str) -> dict[str, Any] | None:
    """Fit without the largest `n_holdout` model size(s); report the error predicting them."""
    col = "n_params" if "n_params" in df else pb.law.size_column
    if n_holdout < 1 or col not in df:
        return None
    sizes = np.sort(df[col].unique())
    if len(sizes) <= n_holdout:
        return None
    held = (df[col] >= sizes[-n_holdout]).to_numpy()
    out: dict[str, Any] = {"held_out": f"largest {n_holdout} {col}", "held_out_sizes": [float(s) for s in sizes[-n_holdout:]]}
    try:
        sub = prepare(pb.law, df[~held], metric, pb.delta, pb.ctx)
        p, _ = solve(sub, loss=loss)
    except (FitError, ValueError) as e:
        return {**out, "error": str(e)}
    x = {c: v[held] for c, v in pb.x.items()}
    pred, y = pb.law.predict(p, x, pb.ctx), pb.y[held]
    rel = (pred - y) / np.abs(y)
    return {**out, "n_fit": int((~held).sum()), "n_heldout": int(held.sum()),
            "mean_abs_rel_error": float(np.abs(rel).mean()), "max_abs_rel_error": float(np.abs(rel).max()),
            "rmse": float(np.sqrt(np.mean((pred - y) ** 2)))}


def fit_law(df: pd.DataFrame, law: Law | str = "power_bits", metric: str = "val_loss", *,
            group: dict[str, Any] | None = None, delta: float = 1e-3, loss: str = "huber", n_boot: int = 200,
            seed: int = 0, holdout: int = 1, top_starts: int | None = 16, n_jobs: int | None = None,
            boot_method: str = "auto") -> FitResult:
    """Fit one law to one set of runs, with bootstrap intervals and a held-out extrapolation check.

    Raises FitError for data that cannot support the law; a poor but valid fit is returned with
    its (low) R^2 and a warning, so that it is reported rather than hidden."""
    with one_blas_thread():
        return _fit_law(df, law, metric, group, delta, loss, n_boot, seed, holdout, top_starts, n_jobs, boot_method)


def _fit_law(df: pd.DataFrame, law: Law | str, metric: str, group: dict[str, Any] | None, delta: float, loss: str,
             n_boot: int, seed: int, holdout: int, top_starts: int | None, n_jobs: int | None,
             boot_method: str) -> FitResult:
    pb = prepare(law, df, metric, delta)
    p, ok = solve(pb, loss=loss, top_starts=top_starts)
    res = FitResult(pb.law, metric, group or {}, dict(zip(pb.names, map(float, p), strict=True)),
                    goodness_of_fit(pb, p), pb.ctx, converged=ok)
    if not ok:
        res.warnings.append("L-BFGS did not report convergence; treat the parameters with care")
    if n_boot > 0:
        res.boot, res.boot_method = bootstrap(pb, p, n_boot, seed=seed, loss=loss, method=boot_method, n_jobs=n_jobs)
        n_bad = n_boot - len(res.boot_ok())
        if n_bad:
            res.warnings.append(f"{n_bad} of {n_boot} bootstrap resamples could not be fitted (left out)")
        if res.boot_method == "residuals":
            res.warnings.append(f"only {len(pb.y)} runs for {len(p)} parameters: intervals from resampled "
                                "residuals (fixed design), not resampled runs")
    res.heldout = heldout_check(pb, df, metric, holdout, loss)
    r2 = res.gof["r2"]
    if r2 is not None and r2 < 0.9:
        res.warnings.append(f"poor fit: R^2 = {r2:.3f} ({pb.law.space} space)")
    if pb.law.space == "log" and "alpha" in res.params and res.params["alpha"] <= 0:
        res.warnings.append(f"alpha = {res.params['alpha']:.3g} <= 0: the metric does not improve with scale here")
    return res
