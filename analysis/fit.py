"""Fitting a law to runs: Huber loss on residuals (log space for loss laws), summed over points;
bootstrap intervals; a held-out extrapolation check; an honest verdict on what the data identify.

Chinchilla Approach 3 practice (Hoffmann et al. 2022; Besiroglu et al. 2024): Huber delta 1e-3
on log residuals, *summed* (averaging shrinks the objective so L-BFGS's relative stopping rule
fires early), minimised from a grid of starts. The objective is evaluated at every grid start
at once (vectorised numpy); the `top_starts` best of them are refined together by the batched
Levenberg-Marquardt of `analysis.solver`, and the best result is polished by L-BFGS-B. A start
far worse than the best grid points lies in the basin of a worse optimum or converges to the
same one, so this equals the full-grid result in practice (`top_starts=None` runs every start;
`test_pruned_grid_finds_the_full_grid_optimum` checks it). Bootstrap refits all run in one
batch, warm-started at the full-data optimum. `engine="scipy"` is the plain one-fit-at-a-time
L-BFGS loop, kept as the yardstick the batched engine is tested and benchmarked against.

Parameters live in a box (`analysis.laws.BOUNDS`): one that ends on its bound is reported "at
bound" and kept out of claims, and a law the data cannot identify (too few model sizes, an
interval spanning orders of magnitude, a poor fit) says so (`FitResult.verdict`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import zlib
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np
import pandas as pd

from analysis.laws import REFERENCE, Law, get_law
from analysis.settings import ENGINES, FitSettings
from analysis.solver import Batch, huber, lm

try:
    from threadpoolctl import threadpool_limits  # installed with scikit-learn (lm-eval); only a speed-up
except ImportError:  # pragma: no cover
    threadpool_limits = None

FINALISTS = 3  # grid starts carried from the batched engine's first 25 iterations to convergence


class FitError(ValueError):
    """Data a law cannot honestly be fitted to (too few points, one size, constant metric)."""


class Unidentified(FitError):
    """A group whose design cannot identify the law (no reference precision, one precision): never fitted,
    never trusted; the message says which runs would fix it."""


@dataclass
class Problem:
    """One data set prepared for a law: columns as arrays, the target in residual space, context."""

    law: Law
    x: dict[str, np.ndarray]
    y: np.ndarray  # metric, linear scale
    ctx: dict[str, Any]
    delta: float = 1e-3
    lo: np.ndarray | None = None  # raw-parameter bounds ([P]; None: unbounded)
    hi: np.ndarray | None = None
    rows: np.ndarray | None = None  # run ids (`_row`, analysis.design): a baseline copied into groups keeps one
    clusters: np.ndarray | None = None  # configuration ids (`_config`): replicates share one
    # Clusters resampled together, each (salt, cluster ids): a stratum shared with other groups (their common
    # baselines) has a salt of its own, so every group draws it alike in a resample; 0: this group's own.
    strata: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.y)
        self.rows = np.arange(n) if self.rows is None else np.asarray(self.rows)
        self.clusters = self.rows.copy() if self.clusters is None else np.asarray(self.clusters)
        if not self.strata:
            self.strata = [(0, _unique_in_order(self.clusters))]

    @property
    def n_clusters(self) -> int:
        return len(np.unique(self.clusters))

    @property
    def target(self) -> np.ndarray:
        return np.log(self.y) if self.law.space == "log" else self.y

    @property
    def names(self) -> list[str]:
        return self.law.param_names(self.ctx)

    def batch(self, p_count: int, w: np.ndarray | None = None, target: np.ndarray | None = None,
              delta: float | None = None) -> Batch:
        """`p_count` copies of this problem (or one per row of w / target) for the batched solver."""
        n = len(self.y)
        t = np.broadcast_to(self.target if target is None else target, (p_count, n))
        w = np.ones((p_count, n)) if w is None else np.broadcast_to(w, (p_count, n))
        P = len(self.names)
        lo = np.broadcast_to(np.full(P, -np.inf) if self.lo is None else self.lo, (p_count, P))
        hi = np.broadcast_to(np.full(P, np.inf) if self.hi is None else self.hi, (p_count, P))
        return Batch(self.law, self.x, self.ctx, t, w, self.delta if delta is None else delta, lo, hi)


def _unique_in_order(a: np.ndarray) -> np.ndarray:
    _, first = np.unique(a, return_index=True)
    return a[np.sort(first)]


def one_blas_thread() -> Any:
    """Context: BLAS on one thread. L-BFGS-B calls BLAS on vectors of a few numbers; a multi-threaded
    OpenBLAS then spends milliseconds per call synchronising threads (fits ran 5x slower on a busy
    2-core machine). Parallelism comes from bootstrap processes instead."""
    return threadpool_limits(1, user_api="blas") if threadpool_limits else contextlib.nullcontext()


_huber = huber


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
    from scipy.optimize import minimize  # imported here: 0.7 s that the batched engine never needs

    res = minimize(lambda p: objective(pb, p, w, target), p0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 3000, "maxcor": 20, **TOL[tol]})
    return res.x, float(res.fun), bool(res.success or res.status == 2)  # 2: no further progress possible


def grid_starts(law: Law, names: list[str]) -> np.ndarray:
    """Every combination of the law's starting values ([S, P]); extra parameters (eff(k)) start at 0."""
    axes = [np.asarray(law.grid.get(n, [0.0]), dtype=float) for n in names]
    return np.array(list(product(*axes)))


def prepare(law: Law | str, df: pd.DataFrame, metric: str, delta: float = 1e-3,
            ctx: dict[str, Any] | None = None, reference: float = REFERENCE) -> Problem:
    """Check the data can support the law (clear FitError otherwise; Unidentified where the design cannot
    identify it) and build the Problem. Optional precision columns a run lacks are the reference (16 bits)."""
    law = get_law(law)
    missing = [c for c in (*law.columns, metric) if c not in df.columns]
    if missing:
        raise FitError(f"law {law.name} needs columns {missing}, which the runs do not have")
    cols = [*law.columns, *(c for c in law.optional if c in df.columns)]
    x = {c: pd.to_numeric(df[c], errors="coerce").to_numpy(float) for c in cols}
    for c in law.optional:
        if c in x:
            x[c] = np.where(np.isnan(x[c]), reference, x[c])
            if (x[c] == reference).all():  # unquantized everywhere: the precision is not varied here
                del x[c]
    y = pd.to_numeric(df[metric], errors="coerce").to_numpy(float)
    bad = ~np.isfinite(y) | np.logical_or.reduce([~np.isfinite(v) for v in x.values()])
    if bad.any():
        raise FitError(f"{int(bad.sum())} of {len(y)} runs have a missing/NaN/inf value in {[*law.columns, metric]}")
    for c in dict.fromkeys(("n_params", law.size_column)):
        if c in x and len(np.unique(x[c])) < 2:
            raise FitError(f"law {law.name} needs at least 2 distinct {c}; all {len(y)} runs have {x[c][0]:g} "
                           f"(a single model size)")
    if ctx is None:
        _check_design(law, x, reference)
    try:
        ctx = dict(ctx) if ctx is not None else law.context(x, reference)
    except ValueError as e:
        raise FitError(str(e)) from None
    n_par = len(law.param_names(ctx))
    n_distinct = len({tuple(v[i] for v in x.values()) for i in range(len(y))}) if x else len(y)
    if n_distinct <= n_par:
        raise FitError(f"law {law.name} has {n_par} parameters but the runs give only {n_distinct} distinct "
                       f"points: too few to fit")
    if np.ptp(y) == 0:
        raise FitError(f"{metric} is constant ({y[0]:g}) over all {len(y)} runs: nothing to fit")
    if law.space == "log" and (y <= 0).any():
        raise FitError(f"{metric} must be positive for a log-space law ({law.name})")
    names = law.param_names(ctx)
    lo, hi = law.box(names)
    if law.space == "log" and "e" in names:  # E below 1% of the smallest loss is zero for every purpose
        i = names.index("e")
        lo[i] = max(lo[i], math.log(y.min()) - math.log(100.0))
        hi[i] = min(hi[i], math.log(y.max()) + 1.0)
    if law.space == "linear":  # sigmoids: floor and ceiling near the data, the midpoint near the inputs
        span = max(float(np.ptp(y)), 1e-9)
        a, b = float(y.min()) - 2 * span, float(y.max()) + 2 * span
        if y.min() >= 0.0 and y.max() <= 1.0:  # a fraction (accuracy): it stays in [0, 1]
            a, b = max(a, 0.0), min(b, 1.0)
        for n in ("lo", "hi"):
            if n in names:
                lo[names.index(n)], hi[names.index(n)] = a, b
        if "m" in names and len(law.columns) == 1:
            v = x[law.columns[0]]
            v = np.log(v) if law.columns[0] == "total_bits" else v
            w = max(float(np.ptp(v)), 1e-9)
            lo[names.index("m")], hi[names.index("m")] = float(v.min()) - 2 * w, float(v.max()) + 2 * w
    rows = df["_row"].to_numpy() if "_row" in df else None
    clusters = df["_config"].to_numpy() if "_config" in df else None
    return Problem(law, x, y, ctx, delta, lo, hi, rows=rows, clusters=clusters)


PRECISIONS = ("bits", "fwd_bits", "bwd_bits", "act_bits", "kv_bits")


def _check_design(law: Law, x: dict[str, np.ndarray], reference: float) -> None:
    """Unidentified before any fit: a per-precision parameter (eff(k)) without the reference precision to be
    relative to trades off freely with A; a precision law (gamma) needs two precisions to see a slope."""
    for c in law.reference_columns:
        ks = set(np.unique(x[c]).tolist())
        if ks - {reference} and reference not in ks:
            raise Unidentified(f"unidentified: no reference precision ({c} = {reference:g}) in this group, so "
                               f"{law.name}'s per-precision efficiencies trade off with A; runs that would fix it: "
                               f"the {reference:g}-bit model of each base model here (same N and D; in ksir, "
                               f"quant.bits={reference:g}), or --base/--reference to join the baselines you have")
    if not law.per_k and not law.paired:
        for c in (c for c in x if c in PRECISIONS and c not in law.reference_columns):
            if len(np.unique(x[c])) < 2:
                raise Unidentified(f"unidentified: one precision ({c} = {x[c][0]:g}) in this group, so {law.name} "
                                   f"cannot tell its precision dependence from A; runs that would fix it: the same "
                                   f"models at a second {c} (e.g. the {reference:g}-bit baseline)")


def _best_starts(pb: Problem, top_starts: int | None, target: np.ndarray | None) -> np.ndarray:
    """The grid's starts ranked by their objective (all evaluated in one vectorised call)."""
    starts = grid_starts(pb.law, pb.names)
    if pb.lo is not None:
        starts = np.unique(np.clip(starts, pb.lo, pb.hi), axis=0)
    f, _ = pb.law.fn(starts, pb.x, pb.ctx, False)  # every start at once: [S, n]
    with np.errstate(invalid="ignore", over="ignore"):
        obj = _huber(f - (pb.target if target is None else target), pb.delta).sum(axis=1)
    order = np.argsort(np.where(np.isfinite(obj), obj, np.inf), kind="stable")
    return starts[order if top_starts is None else order[:top_starts]]


def solve(pb: Problem, *, loss: str = "huber", top_starts: int | None = 16, p0: np.ndarray | None = None,
          w: np.ndarray | None = None, target: np.ndarray | None = None, tol: str = "fit",
          engine: str = "batched") -> tuple[np.ndarray, bool]:
    """Best raw parameter vector from the best grid starts (or from p0); returns (p, converged).

    `engine="batched"`: all starts refined together (`analysis.solver.lm`) inside the law's bounds.
    `engine="scipy"`: L-BFGS from each start in turn, unbounded
    (the reference the batched engine is checked against)."""
    if loss not in ("huber", "ols"):
        from ksir.errors import ConfigError

        raise ConfigError("loss", loss, ["huber", "ols"])
    if engine not in ENGINES:
        from ksir.errors import ConfigError

        raise ConfigError("engine", engine, list(ENGINES))
    starts = np.atleast_2d(p0) if p0 is not None else _best_starts(pb, top_starts, target)
    if engine == "scipy":
        best, best_obj, ok = starts[0], math.inf, False
        for s in starts:
            p, o, conv = _lbfgs(pb, s, w, target, tol)
            if best_obj == math.inf or o < best_obj - 1e-12 * abs(best_obj):
                best, best_obj, ok = p, o, conv
    else:
        best, ok = _refine(lambda owner: pb.batch(len(owner), w, target), [starts], tol)[0]
    if loss == "ols":
        best = _ols(pb, best, w, target)
    return best, ok


def _refine(batch_for: Any, starts: list[np.ndarray], tol: str) -> list[tuple[np.ndarray, bool]]:
    """Batched LM from every group's starts at once; a short run sorts each group's starts and only its
    best few (FINALISTS) are run to convergence. `batch_for(owner)` builds the Batch for problems owned
    by groups `owner` ([S] group indices). Returns (best p, converged) per group."""
    owner = np.concatenate([np.full(len(st), g) for g, st in enumerate(starts)])
    p0 = np.concatenate(starts)
    if any(len(st) > FINALISTS for st in starts):
        p, obj, _ = lm(batch_for(owner), p0, tol=tol, max_iter=25)
        keep = np.concatenate([np.nonzero(owner == g)[0][np.argsort(obj[owner == g], kind="stable")[:FINALISTS]]
                               for g in range(len(starts))])
        owner, p0 = owner[keep], p[keep]
    p, obj, conv = lm(batch_for(owner), p0, tol=tol, max_iter=400)
    out = []
    for g in range(len(starts)):
        idx = np.nonzero(owner == g)[0]
        i = idx[int(np.argmin(obj[idx]))]
        out.append((p[i], bool(conv[i])))
    return out


def stackable(pbs: list[Problem]) -> bool:
    """Problems one batch can hold: the same law and context (hence the same parameters)."""
    return len({(pb.law.name, repr(pb.ctx), tuple(pb.names)) for pb in pbs}) == 1


def stacked_batch(pbs: list[Problem], owner: np.ndarray, weights: list[np.ndarray | None] | None = None,
                  targets: list[np.ndarray | None] | None = None, delta: float | None = None) -> Batch:
    """Problems of one law on different groups of runs, laid on the union of their runs: problem s weighs
    only the rows of its group owner[s] (its case weights, or 1), so one solve serves every group.
    `weights` / `targets`: per problem, over its own group's rows (None: 1 / the data)."""
    law, ctx = pbs[0].law, pbs[0].ctx
    off = np.cumsum([0] + [len(pb.y) for pb in pbs])
    x = {c: np.concatenate([pb.x[c] for pb in pbs]) for c in law.columns}
    W = np.zeros((len(owner), off[-1]))
    T = np.tile(np.concatenate([pb.target for pb in pbs]), (len(owner), 1))
    for s, g in enumerate(owner):
        rows = slice(off[g], off[g + 1])
        W[s, rows] = 1.0 if weights is None or weights[s] is None else weights[s]
        if targets is not None and targets[s] is not None:
            T[s, rows] = targets[s]
    lo = np.stack([pbs[g].lo for g in owner])
    hi = np.stack([pbs[g].hi for g in owner])
    return Batch(law, x, ctx, T, W, pbs[0].delta if delta is None else delta, lo, hi)


def solve_many(pbs: list[Problem], *, loss: str = "huber", top_starts: int | None = 16,
               engine: str = "batched") -> list[tuple[np.ndarray, bool]]:
    """`solve` for several groups (one law): stacked into one batch when they share a context."""
    if engine != "batched" or len(pbs) < 2 or not stackable(pbs):
        return [solve(pb, loss=loss, top_starts=top_starts, engine=engine) for pb in pbs]
    out = _refine(lambda owner: stacked_batch(pbs, owner), [_best_starts(pb, top_starts, None) for pb in pbs], "fit")
    if loss == "ols":
        out = [(_ols(pb, p, None, None), ok) for pb, (p, ok) in zip(pbs, out, strict=True)]
    return out


def _ols(pb: Problem, p0: np.ndarray, w: np.ndarray | None, target: np.ndarray | None) -> np.ndarray:
    """Ordinary least squares in the law's residual space via scipy's curve_fit, from the Huber optimum."""
    from scipy.optimize import curve_fit

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


def resamples(pb: Problem, p_best: np.ndarray, method: str, seeds: list[int]) -> tuple[np.ndarray, np.ndarray,
                                                                                         np.ndarray]:
    """Case weights [S, n], targets [S, n] and a usable mask [S] for the bootstrap's resamples.

    "cases": configurations drawn with replacement within each stratum, all replicates of a drawn
    configuration together (so intervals carry the seed-to-seed spread); a baseline shared with other groups
    is drawn alike in all of them. With one run per configuration and nothing shared this is plain case
    resampling. A resample with too few distinct runs to identify the parameters, or one model size, is
    unusable. "residuals": the fitted curve plus resampled, centred residuals (fixed design, for curves with
    few runs). Resample i always comes from seed i, whatever the engine."""
    n, P = len(pb.y), len(p_best)
    f_hat = pb.law.fn(p_best[None], pb.x, pb.ctx, False)[0][0]
    resid = pb.target - f_hat
    resid = (resid - resid.mean()) * math.sqrt(n / max(n - P, 1))  # degrees-of-freedom correction
    keys = [tuple(v[i] for v in pb.x.values()) for i in range(n)]
    sizes = pb.x.get("n_params", pb.x.get(pb.law.size_column))
    order = np.concatenate([members for _, members in pb.strata])
    where = {c: i for i, c in enumerate(order.tolist())}
    row_cluster = np.array([where[c] for c in pb.clusters.tolist()])
    W, T, ok = np.ones((len(seeds), n)), np.tile(pb.target, (len(seeds), 1)), np.ones(len(seeds), bool)
    for j, seed in enumerate(seeds):
        if method == "cases":
            counts = np.concatenate([np.bincount(np.random.default_rng(seed if salt == 0 else [seed, salt]).integers(
                0, len(members), len(members)), minlength=len(members)) for salt, members in pb.strata])
            W[j] = counts[row_cluster]
            used = W[j] > 0
            ok[j] = len({keys[i] for i in np.nonzero(used)[0]}) > P and (
                sizes is None or len(np.unique(sizes[used])) >= 2)
        else:
            T[j] = f_hat + resid[np.random.default_rng(seed).integers(0, n, n)]
    return W, T, ok


def bootstrap_method(n_configurations: int, n_params: int) -> str:
    """Case resampling needs enough configurations that most resamples can still identify every parameter."""
    return "cases" if n_configurations >= 3 * n_params else "residuals"


def bootstrap(pb: Problem, p_best: np.ndarray, n_boot: int, *, seed: int = 0, loss: str = "huber",
              method: str = "auto", engine: str = "batched") -> tuple[np.ndarray, str]:
    """Refit on `n_boot` resamples, warm-started at the best fit.

    Returns ([n_boot, P] raw parameters, NaN rows for unusable or failed resamples; the method used).
    Deterministic for a seed: resample i always uses the same draw."""
    if method == "auto":
        method = bootstrap_method(pb.n_clusters, len(p_best))
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(n_boot)]
    W, T, ok = resamples(pb, p_best, method, seeds)
    out = np.full((n_boot, len(p_best)), np.nan)
    if not ok.any():
        return out, method
    with one_blas_thread():
        if engine == "scipy":
            for j in np.nonzero(ok)[0]:
                w, t = (W[j], None) if method == "cases" else (None, T[j])
                with contextlib.suppress(ValueError, RuntimeError):  # a failed refit stays NaN and is counted
                    out[j], _ = solve(pb, loss=loss, p0=p_best, w=w, target=t, tol="boot", engine="scipy")
        else:
            batch = pb.batch(int(ok.sum()), W[ok], T[ok], delta=np.inf if loss == "ols" else None)
            p, obj, _ = lm(batch, np.tile(p_best, (int(ok.sum()), 1)), tol="boot")
            p[~np.isfinite(obj)] = np.nan
            out[ok] = p
    return out, method


def bootstrap_many(pbs: list[Problem], ps: list[np.ndarray], n_boot: int, *, seed: int = 0, loss: str = "huber",
                   method: str = "auto", engine: str = "batched") -> list[tuple[np.ndarray, str]]:
    """`bootstrap` for several groups (one law), all their resamples in one batch when they stack."""
    if engine != "batched" or len(pbs) < 2 or not stackable(pbs):
        return [bootstrap(pb, p, n_boot, seed=seed, loss=loss, method=method, engine=engine)
                for pb, p in zip(pbs, ps, strict=True)]
    seeds = [int(s) for s in np.random.SeedSequence(seed).generate_state(n_boot)]
    methods = [bootstrap_method(pb.n_clusters, len(p)) if method == "auto" else method
               for pb, p in zip(pbs, ps, strict=True)]
    draws = [resamples(pb, p, m, seeds) for pb, p, m in zip(pbs, ps, methods, strict=True)]
    owner, weights, targets, p0 = [], [], [], []
    for g, ((W, T, ok), m) in enumerate(zip(draws, methods, strict=True)):
        for j in np.nonzero(ok)[0]:
            owner.append(g)
            weights.append(W[j] if m == "cases" else None)
            targets.append(T[j] if m == "residuals" else None)
            p0.append(ps[g])
    outs = [np.full((n_boot, len(p)), np.nan) for p in ps]
    if owner:
        owner = np.array(owner)
        batch = stacked_batch(pbs, owner, weights, targets, delta=np.inf if loss == "ols" else None)
        with one_blas_thread():
            p, obj, _ = lm(batch, np.array(p0), tol="boot")
        p[~np.isfinite(obj)] = np.nan
        for g, (_, _, ok) in enumerate(draws):
            outs[g][ok] = p[owner == g]
    return list(zip(outs, methods, strict=True))


# ---- the result ------------------------------------------------------------------------------------------

# A positive parameter whose 95% interval spans more than this factor is not identified by the data.
UNIDENTIFIED_SPAN = 100.0
# A loss law that misses the held-out largest size by more than this many times its in-sample RMSE
# (log space, about a relative error) and by more than the floor, or by more than the ceiling at all
# (published loss laws predict their largest runs to 1-2%), does not extrapolate: poor.
EXTRAPOLATION_FACTOR, EXTRAPOLATION_FLOOR, EXTRAPOLATION_CEILING = 3.0, 0.02, 0.05
# At the optimum, the Jacobian of the residuals with respect to the free parameters (columns scaled to unit
# length) must have full rank: a singular value below this fraction of the largest is a direction of the
# parameters that moves no prediction the data can see (e.g. eff(k) against A without a reference precision).
MIN_SINGULAR_RATIO = 1e-6
WEAK_LOADING = 0.3  # parameters with at least this share of an unpinned direction are named
# With fewer residual degrees of freedom than this, the noise is estimated from one number (or none): a
# bootstrap of residuals then gives intervals far too narrow (4 sizes for 3 parameters covered the true
# exponent in 3 of 7 curves of a test table), so the fit is not identified, whatever its intervals say.
MIN_DOF = 2


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
    lo: np.ndarray | None = None  # the raw-parameter box the fit searched
    hi: np.ndarray | None = None
    n_sizes: int | None = None  # distinct model sizes in the data
    rows: np.ndarray | None = None  # run ids of the points (analysis.design `_row`)
    clusters: np.ndarray | None = None  # configuration ids of the points (replicates share one)
    residuals: np.ndarray | None = None  # per point, in the law's residual space
    x_range: dict[str, tuple[float, float]] = field(default_factory=dict)  # measured range of each column
    identifiability: dict[str, Any] = field(default_factory=dict)  # the Jacobian's conditioning at the optimum
    heldout_points: tuple[np.ndarray, np.ndarray] | None = None  # (run ids, abs. relative errors) held out

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
        n = len(next(iter(x.values())))
        for c in (c for c in self.law.optional if c in self.x_range):  # an absent precision is unquantized
            x[c] = np.atleast_1d(np.asarray(data[c], dtype=float)) if c in data else \
                np.full(n, self.ctx.get("reference", REFERENCE))
        return self.law.predict(self.vector() if params is None else params, x, self.ctx)

    def n_configurations(self) -> int:
        return int(len(np.unique(self.clusters))) if self.clusters is not None else self.n

    def dof(self) -> int | None:
        """Residual degrees of freedom: distinct configurations minus the free parameters (those not on a bound)."""
        if self.gof.get("n") is None:
            return None
        return self.n_configurations() - (len(self.params) - len(self.at_bound()))

    def heldout_possible(self) -> bool:
        return bool(self.heldout) and "mean_abs_rel_error" in self.heldout

    def intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """Percentile bootstrap intervals of the raw parameters."""
        b = self.boot_ok()
        if len(b) < 2:
            return {}
        lo, hi = np.percentile(b, [50 * (1 - level), 50 * (1 + level)], axis=0)
        return {n: (float(a), float(c)) for n, a, c in zip(self.params, lo, hi, strict=True)}

    def _near_bound(self, i: int, v: float) -> float | None:
        """The bound of parameter i that v lies on (within 1e-4 of the box's span, at most 1e-3), if any."""
        if self.lo is None:
            return None
        lo, hi = self.lo[i], self.hi[i]
        tol = min(1e-4 * (hi - lo), 1e-3) if np.isfinite(hi - lo) else 1e-3
        return next((float(b) for b in (lo, hi) if np.isfinite(b) and abs(v - b) <= tol), None)

    def at_bound(self) -> dict[str, float]:
        """Parameters that ended on a bound of their box: name -> the bound (raw)."""
        near = {n: self._near_bound(i, v) for i, (n, v) in enumerate(self.params.items())}
        return {n: b for n, b in near.items() if b is not None}

    def _shown(self, name: str, raw: float) -> float:
        return self.law.report[name][1](raw) if name in self.law.report else raw

    def verdict(self) -> dict[str, Any]:
        """Can the law be trusted for claims? status "ok", "poor" or "unidentified", with the reasons.

        Unidentified: fewer distinct model sizes than the law needs; fewer than MIN_DOF residual degrees of
        freedom (configurations minus free parameters); a direction of the free parameters the data cannot pin (the Jacobian at the optimum is rank-deficient); or any free parameter (per-k ones
        included) whose 95% interval reaches its bound, or, for the log of a scale, spans more than a factor
        100, or, for an exponent, reaches 0 or spans more than a factor 100. Poor: R^2 < 0.9, no convergence,
        or a held-out error far above the in-sample error (it does not extrapolate). Parameters at a bound
        are listed; they are fixed there, not claims."""
        reasons, status = [], "ok"
        if self.n_sizes is not None and self.n_sizes < self.law.min_sizes:
            status = "unidentified"
            reasons.append(f"{self.n_sizes} distinct {self.law.size_column} values; the law's size dependence "
                           f"needs at least {self.law.min_sizes}")
        dof = self.dof()
        if dof is not None and dof < MIN_DOF:
            status = "unidentified"
            reasons.append(f"{dof} residual degree(s) of freedom ({self.n_configurations()} configurations for "
                           f"{len(self.params) - len(self.at_bound())} free parameters): its intervals cannot be trusted")
        weak = self.identifiability.get("weak")
        if weak:
            status = "unidentified"
            reasons.append(f"the data cannot pin a direction of ({', '.join(self.law.label(n) for n in weak)}): "
                           f"Jacobian singular value ratio {self.identifiability['min_singular_ratio']:.1e}")
        bound, ci = self.at_bound(), self.intervals()
        names = list(self.params)
        for name, (lo, hi) in ci.items():
            if name in bound:
                continue
            i, label, kind = names.index(name), self.law.label(name), self.law.kind(name)
            edge = self._near_bound(i, lo)
            edge = self._near_bound(i, hi) if edge is None else edge
            if edge is not None:
                status = "unidentified"
                reasons.append(f"{label}'s 95% interval reaches its bound ({self._shown(name, edge):.3g}): the data "
                               "cannot tell it from there")
            elif kind == "log" and hi - lo > math.log(UNIDENTIFIED_SPAN):
                status = "unidentified"
                reasons.append(f"{label}'s 95% interval spans a factor {math.exp(min(hi - lo, 700)):.3g}")
            elif kind == "exponent" and (lo <= 1e-6 or hi / lo > UNIDENTIFIED_SPAN):
                status = "unidentified"
                reasons.append(f"{label}'s 95% interval [{lo:.3g}, {hi:.3g}] " +
                               ("reaches 0" if lo <= 1e-6 else "spans orders of magnitude"))
        r2 = self.gof.get("r2")
        if status == "ok" and (r2 is not None and r2 < 0.9 or not self.converged):
            status = "poor"
            reasons.append(f"R^2 = {r2:.3f}" if r2 is not None and r2 < 0.9 else "no convergence")
        ho = (self.heldout or {}).get("mean_abs_rel_error")
        if status == "ok" and self.law.space == "log" and ho is not None and (ho > EXTRAPOLATION_CEILING or ho > max(
                EXTRAPOLATION_FACTOR * self.gof["rmse"], EXTRAPOLATION_FLOOR)):
            status = "poor"
            reasons.append(f"held-out error {ho:.1%} (in-sample {self.gof['rmse']:.1%}): it does not extrapolate to "
                           "the largest size")
        return {"status": status, "reasons": reasons, "at_bound": bound}

    def summary(self) -> dict[str, Any]:
        """JSON-ready: raw and reported parameters with 95% intervals and standard errors."""
        ci, b, bound = self.intervals(), self.boot_ok(), self.at_bound()
        se = dict(zip(self.params, b.std(axis=0, ddof=1), strict=True)) if len(b) >= 2 else {}
        params = {}
        for name, v in self.params.items():
            entry: dict[str, Any] = {"value": v, "ci95": ci.get(name), "se": float(se[name]) if name in se else None,
                                     "at_bound": name in bound}
            if name in self.law.report:
                label, fn = self.law.report[name]
                entry.update(reported=label, reported_value=float(fn(v)),
                             reported_ci95=tuple(float(fn(c)) for c in ci[name]) if name in ci else None)
            params[name] = entry
        n_boot = 0 if self.boot is None else len(self.boot)
        return {"law": self.law.name, "formula": self.law.formula, "metric": self.metric, "group": self.group,
                "n_points": self.n, "n_configurations": None if self.clusters is None else
                int(len(np.unique(self.clusters))), "params": params, "goodness_of_fit": self.gof,
                "bootstrap": {"n": n_boot, "converged": int(len(b)), "method": self.boot_method},
                "converged": self.converged, "heldout": self.heldout, "identifiability": self.identifiability,
                "measured_range": {c: list(r) for c, r in self.x_range.items()}, "verdict": self.verdict(),
                "warnings": self.warnings}


def identifiability(pb: Problem, p: np.ndarray, free: np.ndarray) -> dict[str, Any]:
    """Rank and conditioning of the Jacobian at the optimum over the free parameters (columns scaled to unit
    length, so units do not matter): the smallest singular value over the largest, and the parameters that
    make up every direction below MIN_SINGULAR_RATIO (a parameter with no effect at all is one)."""
    names = np.array(pb.names)[free]
    if not free.any():
        return {"min_singular_ratio": None, "weak": []}
    with np.errstate(all="ignore"):
        _, J = pb.law.fn(p[None], pb.x, pb.ctx, True)
    J = np.asarray(J[0])[:, free]
    if not np.isfinite(J).all():
        return {"min_singular_ratio": None, "weak": []}
    norms = np.linalg.norm(J, axis=0)
    dead = norms <= 1e-12 * max(norms.max(), 1e-300)
    Js = J / np.where(dead, 1.0, norms)
    sv, vt = np.linalg.svd(Js, full_matrices=False)[1:]
    ratio = float(sv[-1] / sv[0]) if sv[0] > 0 else 0.0
    weak = set(names[dead].tolist())
    for s_val, v in zip(sv, vt, strict=True):
        if s_val < MIN_SINGULAR_RATIO * sv[0]:
            weak |= set(names[np.abs(v) >= WEAK_LOADING].tolist())
    return {"min_singular_ratio": ratio, "weak": [n for n in pb.names if n in weak]}


def _heldout_split(pb: Problem, df: pd.DataFrame, n_holdout: int) -> tuple[dict[str, Any], np.ndarray | None] | None:
    """(description, rows held out) for a held-out refit without the largest `n_holdout` model sizes, or
    (why it is impossible, None) when the refit would not have more sizes than size-dependent parameters."""
    col = "n_params" if "n_params" in df else pb.law.size_column
    if n_holdout < 1 or col not in df:
        return None
    sizes = np.sort(df[col].unique())
    left = len(sizes) - n_holdout
    if left <= pb.law.size_params:
        return {"held_out": f"largest {n_holdout} {col}", "possible": False,
                "reason": f"{len(sizes)} distinct {col}: a refit without the largest {n_holdout} has {max(left, 0)}, "
                          f"not more than the law's {pb.law.size_params} size-dependent parameters"}, None
    held = (df[col] >= sizes[-n_holdout]).to_numpy()
    return {"held_out": f"largest {n_holdout} {col}", "possible": True,
            "held_out_sizes": [float(s) for s in sizes[-n_holdout:]]}, held


def _heldout_error(pb: Problem, held: np.ndarray, p: np.ndarray, sub: Problem) -> tuple[dict[str, Any], np.ndarray]:
    x = {c: v[held] for c, v in pb.x.items()}
    pred, y = pb.law.predict(p, x, pb.ctx), pb.y[held]
    rel = np.abs(pred - y) / np.abs(y)
    return {"n_fit": len(sub.y), "n_heldout": int(held.sum()), "mean_abs_rel_error": float(rel.mean()),
            "max_abs_rel_error": float(rel.max()), "rmse": float(np.sqrt(np.mean((pred - y) ** 2)))}, rel


def aligned_replicates(fits: list[FitResult]) -> tuple[int, np.ndarray] | None:
    """(S, ok): replicate s of every fit taken together (the first S of each), ok [S] where it converged in all;
    None without bootstraps or with fewer than 2 usable replicates."""
    if not fits or any(f.boot is None for f in fits):
        return None
    S = min(len(f.boot) for f in fits)
    ok = np.logical_and.reduce([np.isfinite(f.boot[:S]).all(axis=1) for f in fits])
    return (S, ok) if ok.sum() >= 2 else None


def heldout_checks(pbs: list[Problem], dfs: list[pd.DataFrame], metric: str, n_holdout: int, loss: str,
                   engine: str = "batched") -> list[tuple[dict[str, Any] | None, tuple | None]]:
    """For each group: fit without its largest `n_holdout` model size(s); (the error predicting them, (run ids,
    abs. relative error) of each held-out point)."""
    out: list[tuple[dict[str, Any] | None, tuple | None]] = [(None, None)] * len(pbs)
    todo = []
    for i, (pb, df) in enumerate(zip(pbs, dfs, strict=True)):
        split = _heldout_split(pb, df, n_holdout)
        if split is None:
            continue
        info, held = split
        out[i] = (info, None)
        if held is None:
            continue
        try:
            todo.append((i, held, prepare(pb.law, df[~held], metric, pb.delta, pb.ctx)))
        except (FitError, ValueError) as e:
            out[i] = ({**info, "possible": False, "error": str(e)}, None)
    sols = solve_many([sub for _, _, sub in todo], loss=loss, engine=engine) if todo else []
    for (i, held, sub), (p, _) in zip(todo, sols, strict=True):
        err, rel = _heldout_error(pbs[i], held, p, sub)
        out[i] = ({**out[i][0], **err}, (pbs[i].rows[held], rel))
    return out


def heldout_check(pb: Problem, df: pd.DataFrame, metric: str, n_holdout: int, loss: str,
                  engine: str = "batched") -> dict[str, Any] | None:
    """Fit without the largest `n_holdout` model size(s); report the error predicting them."""
    return heldout_checks([pb], [df], metric, n_holdout, loss, engine)[0][0]


def fit_law(df: pd.DataFrame, law: Law | str = "power_bits", metric: str = "val_loss",
            settings: FitSettings | None = None, *, group: dict[str, Any] | None = None, top_starts: int | None = 16,
            boot_method: str = "auto", **changes: Any) -> FitResult:
    """Fit one law to one set of runs, with bootstrap intervals and a held-out extrapolation check, as
    `settings` say (`changes`: any of its fields, e.g. `n_boot=500`, applied on top).

    Raises FitError for data that cannot support the law; a poor but valid fit is returned with
    its (low) R^2 and a warning, so that it is reported rather than hidden."""
    res = fit_laws({(): df}, law, metric, settings, top_starts=top_starts, boot_method=boot_method, **changes)[()]
    if isinstance(res, FitError):
        raise res
    res.group = group or {}
    return res


def assign_strata(pbs: list[Problem]) -> None:
    """Each group's clusters in strata: its own, and per set of groups it shares clusters with (their common
    baselines), one stratum whose salt is that set's, so every sharing group draws those clusters alike."""
    member: dict[Any, set[int]] = {}
    for g, pb in enumerate(pbs):
        for c in np.unique(pb.clusters).tolist():
            member.setdefault(c, set()).add(g)
    for pb in pbs:
        order = _unique_in_order(pb.clusters)
        own = np.array([c for c in order.tolist() if len(member[c]) == 1], dtype=order.dtype)
        shared: dict[tuple[int, ...], list] = {}
        for c in order.tolist():
            if len(member[c]) > 1:
                shared.setdefault(tuple(sorted(member[c])), []).append(c)
        pb.strata = ([(0, own)] if len(own) else []) + [
            (zlib.crc32(repr(sig).encode()) or 1, np.array(cs, dtype=order.dtype)) for sig, cs in sorted(shared.items())]


def _signature(pb: Problem) -> tuple:
    """Groups with the same runs and values are one fit (the 16-bit curve copied into every scheme)."""
    return (tuple(pb.rows.tolist()), pb.y.tobytes(), tuple(v.tobytes() for v in pb.x.values()))


def fit_laws(groups: dict[Any, pd.DataFrame], law: Law | str, metric: str = "val_loss",
             settings: FitSettings | None = None, *, labels: dict[Any, dict[str, Any]] | None = None,
             top_starts: int | None = 16, boot_method: str = "auto", **changes: Any) -> dict[Any, FitResult | FitError]:
    """`fit_law` for every group of runs (e.g. every (k, scheme) curve of a per-k law), solved together:
    the grid searches, the bootstrap refits and the held-out refits of all groups are one batch each.
    Groups with the same runs are fitted once. A baseline shared by groups is drawn alike in each bootstrap
    resample (`assign_strata`). Returns a FitResult per group, or the FitError saying why that group cannot
    be fitted (Unidentified where its design cannot identify the law). `settings` (with `changes`, any of its
    fields) give the loss, Huber delta, bootstrap, held-out sizes, engine and reference precision."""
    st = (settings or FitSettings()).replace(**changes)
    out: dict[Any, FitResult | FitError] = {}
    pbs: dict[Any, Problem] = {}
    same: dict[Any, Any] = {}  # group -> the group whose fit it shares
    seen: dict[tuple, Any] = {}
    law = get_law(law)
    for key, df in groups.items():
        try:
            pb = prepare(law, df, metric, st.delta, reference=st.reference)
        except FitError as e:
            out[key] = e
            continue
        sig = _signature(pb)
        if sig in seen:
            same[key] = seen[sig]
            continue
        seen[sig], pbs[key] = key, pb
    if not pbs:
        return {k: out[k] for k in groups}
    keys, plist = list(pbs), list(pbs.values())
    assign_strata(plist)
    with one_blas_thread():
        sols = solve_many(plist, loss=st.loss, top_starts=top_starts, engine=st.engine)
        boots = bootstrap_many(plist, [p for p, _ in sols], st.n_boot, seed=st.seed, loss=st.loss, method=boot_method,
                               engine=st.engine) if st.n_boot > 0 else [(None, None)] * len(plist)
        held = heldout_checks(plist, [groups[k] for k in keys], metric, st.holdout, st.loss, st.engine)
    for key, pb, (p, ok), (boot, method), (ho, pts) in zip(keys, plist, sols, boots, held, strict=True):
        out[key] = _result(pb, p, ok, boot, method, ho, metric, (labels or {}).get(key, {}))
        out[key].heldout_points = pts
    for key, twin in same.items():
        out[key] = dataclasses.replace(out[twin], group=(labels or {}).get(key, {}))
    return {k: out[k] for k in groups}


def _result(pb: Problem, p: np.ndarray, ok: bool, boot: np.ndarray | None, method: str | None,
            heldout: dict[str, Any] | None, metric: str, group: dict[str, Any]) -> FitResult:
    size_col = pb.law.size_column if pb.law.size_column in pb.x else next(iter(pb.x))
    gof = goodness_of_fit(pb, p)
    f, _ = pb.law.fn(p[None], pb.x, pb.ctx, False)
    res = FitResult(pb.law, metric, group, dict(zip(pb.names, map(float, p), strict=True)), gof,
                    pb.ctx, boot=boot, boot_method=method, heldout=heldout, converged=ok, lo=pb.lo, hi=pb.hi,
                    n_sizes=len(np.unique(pb.x[size_col])), rows=pb.rows, clusters=pb.clusters,
                    residuals=f[0] - pb.target, x_range={c: (float(v.min()), float(v.max())) for c, v in pb.x.items()})
    free = np.array([n not in res.at_bound() for n in pb.names])
    res.identifiability = identifiability(pb, p, free)
    if not ok:
        res.warnings.append("the optimiser did not report convergence; treat the parameters with care")
    if boot is not None:
        n_bad = len(boot) - len(res.boot_ok())
        if n_bad:
            res.warnings.append(f"{n_bad} of {len(boot)} bootstrap resamples could not be fitted (left out)")
        if method == "residuals":
            res.warnings.append(f"only {pb.n_clusters} configurations for {len(p)} parameters: intervals from "
                                "resampled residuals (fixed design), not resampled runs")
    for name, b in res.at_bound().items():
        res.warnings.append(f"{name} is at its bound ({b:.4g}): fixed there by the fit, not a measured value")
    if heldout and not heldout.get("possible", True):
        res.warnings.append(f"no held-out check: {heldout.get('error') or heldout['reason']}")
    r2 = res.gof["r2"]
    if r2 is not None and r2 < 0.9:
        res.warnings.append(f"poor fit: R^2 = {r2:.3f} ({pb.law.space} space)")
    return res
