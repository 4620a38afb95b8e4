"""Many robust fits at once: a batched, bounded Levenberg-Marquardt for summed Huber losses.

A bootstrap refits one law to S resampled data sets, and a grid search refits it from S starts.
Run one at a time through scipy (1,600 L-BFGS calls for the demo's bootstrap), that loop was
almost all of `ksir-fit`'s time. Here the S problems advance together: one call of the law's
vectorised function gives every residual and Jacobian ([S, n], [S, n, P]); the normal
equations of all S problems are built with one einsum and solved with one batched
`np.linalg.solve`.

The Huber loss is handled by iteratively reweighted least squares: around the current
residuals r, Huber(r) is majorised by a quadratic with weight min(1, delta / |r|), so a
Gauss-Newton step on that quadratic (damped, Levenberg-Marquardt style) decreases the true
objective when accepted; a step is accepted only if it does. Parameters live in a box: steps
are projected onto it, and a parameter on its bound whose gradient points outwards is frozen
for that step (so the others still move). Every problem keeps its own damping and stops on its
own convergence test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.laws import Law

Array = np.ndarray


def huber(r: Array, delta: float) -> Array:
    a = np.abs(r)
    return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


@dataclass
class Batch:
    """S problems sharing one law and design: per-problem targets and case weights."""

    law: Law
    x: dict[str, Array]
    ctx: dict
    target: Array  # [S, n]
    weight: Array  # [S, n] (case weights; 0 = point not in this resample)
    delta: float
    lo: Array  # [S, P] lower bounds of the raw parameters (each problem its own box)
    hi: Array  # [S, P]

    def values(self, p: Array, rows: Array | slice = slice(None)) -> Array:
        """Summed Huber objective of problems `rows` at their parameters p -> [len(rows)] (inf where undefined)."""
        with np.errstate(all="ignore"):
            f, _ = self.law.fn(p, self.x, self.ctx, False)
            obj = (self.weight[rows] * huber(f - self.target[rows], self.delta)).sum(axis=1)
        return np.where(np.isfinite(obj), obj, np.inf)


# Stopping rules, as scipy's L-BFGS-B states them (so both engines stop at the same optimum): a
# problem is done when its largest free gradient component is at most `gtol`, when an accepted
# step lowers the objective by at most `ftol * max(objective, 1)` (with Huber delta 1e-3 the
# objective is far below 1, so this is absolute), or when no damped step lowers it any more.
TOL = {"fit": (1e-14, 1e-10), "boot": (1e-12, 1e-9)}
# ... or when 10 iterations together lower it by at most STALL relative: a flat valley (parameters
# that trade off, as in a law the data do not identify) where each step still gains a little but no
# prediction changes. Looser for bootstrap refits, whose spread is what matters.
STALL = {"fit": 1e-9, "boot": 1e-6}


def lm(batch: Batch, p0: Array, *, tol: str = "boot", max_iter: int = 200) -> tuple[Array, Array, Array]:
    """Minimise every problem of the batch from its start p0 [S, P].

    Returns (p [S, P], objective [S], converged [S] bool)."""
    ftol, gtol = TOL[tol]
    xtol = 1e-12
    S, P = p0.shape
    p = np.clip(p0.astype(float), batch.lo, batch.hi)
    lam = np.full(S, 1e-3)
    done = np.zeros(S, bool)
    converged = np.zeros(S, bool)
    obj = batch.values(p)
    eye = np.eye(P)
    checkpoint = obj.copy()
    for it in range(max_iter):
        if it and it % 10 == 0:  # a slow crawl along a flat direction changes no prediction: stop it
            crawl = ~done & (checkpoint - obj <= STALL[tol] * np.abs(obj))
            done[crawl] = converged[crawl] = True
            checkpoint = obj.copy()
        act = np.nonzero(~done)[0]
        if not len(act):
            break
        pa, w, t, lo, hi = p[act], batch.weight[act], batch.target[act], batch.lo[act], batch.hi[act]
        with np.errstate(all="ignore"):
            f, J = batch.law.fn(pa, batch.x, batch.ctx, True)
            r = f - t
            irls = w * np.minimum(1.0, batch.delta / np.maximum(np.abs(r), 1e-300))  # majoriser weights
            Jt = J.transpose(0, 2, 1)  # [S, P, n]
            g = np.matmul(Jt, (w * np.clip(r, -batch.delta, batch.delta))[..., None])[..., 0]
            H = np.matmul(Jt * irls[:, None, :], J)
        bad = ~(np.isfinite(g).all(axis=1) & np.isfinite(H).all(axis=(1, 2)))
        # A parameter on a bound whose descent direction leaves the box is held there this step.
        frozen = ((pa <= lo) & (g > 0)) | ((pa >= hi) & (g < 0))
        free = ~frozen
        Hf = np.where(free[:, :, None] & free[:, None, :], H, 0.0)
        diag = np.einsum("spp->sp", Hf)
        scale = np.where(free, np.maximum(diag, 1e-12 * np.maximum(diag.max(axis=1, keepdims=True), 1e-300)), 1.0)
        A = Hf + eye * (lam[act, None] * scale)[:, None, :] + eye * (~free)[:, None, :]
        gf = np.where(free, g, 0.0)
        flat = np.abs(gf).max(axis=1) <= gtol
        if flat.any():  # first-order optimal: nothing left to do for these
            done[act[flat]] = converged[act[flat]] = ~bad[flat]
        with np.errstate(all="ignore"):
            try:
                step = -np.linalg.solve(A, gf[..., None])[..., 0]
            except np.linalg.LinAlgError:
                step = -np.stack([np.linalg.lstsq(a, b, rcond=None)[0] for a, b in zip(A, gf, strict=True)])
        step = np.where(np.isfinite(step), step, 0.0)
        trial = np.clip(pa + step, lo, hi)
        moved = np.abs(trial - pa).max(axis=1)
        new = batch.values(trial, act)
        old = obj[act]
        better = (new < old) & ~bad
        acc = act[better]
        p[acc], obj[acc] = trial[better], new[better]
        lam[acc] = np.maximum(lam[acc] / 3.0, 1e-12)
        small = old[better] - new[better] <= ftol * np.maximum(old[better], 1.0)
        done[acc[small]] = converged[acc[small]] = True
        # reject: more damping; a problem that no damping can improve sits at a (local) optimum
        rej, bad_rej = act[~better], bad[~better]
        lam[rej] *= 4.0
        stuck = (lam[rej] > 1e12) | (moved[~better] <= xtol) | bad_rej
        done[rej[stuck]] = True
        converged[rej[stuck]] = ~bad_rej[stuck]
    return p, obj, converged
