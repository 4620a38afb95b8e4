"""The answer first: one answer per budget, the law it comes from, and why that law.

Every fitted law is a candidate. A candidate is usable for the headline only if every one of its
fits is identified and good (`FitResult.verdict`); among usable candidates the one that best
predicts the held-out largest models wins (mean absolute relative error), BIC breaking ties.
The answers of the other candidates and of the model-free interpolation of measured curves are
kept beside it, and every budget where they disagree with the trusted answer is marked. With no
usable law, the headline is the interpolation, inside the measured range only.

Questions (`analysis.select.question`):
- "bits": the (k, scheme) curve with the lowest predicted metric at a total-bit budget. Per-k
  laws predict each curve at B directly; a joint law L(N, k[, D]) at N = B / bits-per-parameter
  of that curve (measured from its runs), with D from the table's own token policy.
- "compute": compute-optimal N and D for a FLOP budget C = 6 N D from a Chinchilla law.
- "size": the metric predicted at larger N from a size law.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from analysis.fit import FitResult, aligned_replicates
from analysis.optimal import curve_label, label_k


@dataclass
class Candidate:
    """One law as fitted to the runs: one fit per group (per-k: per curve; joint: per scheme)."""

    name: str
    fits: dict[tuple, FitResult]
    skipped: list[str] = field(default_factory=list)  # groups the law could not be fitted to, with the reason
    unidentified: list[str] = field(default_factory=list)  # groups whose design cannot identify the law

    def distinct(self) -> list[FitResult]:
        """The fits, each once: the 16-bit curve copied into every scheme is one fit of one set of runs."""
        seen, out = set(), []
        for f in self.fits.values():
            key = None if f.rows is None else tuple(f.rows.tolist())
            if key is None or key not in seen:
                seen.add(key)
                out.append(f)
        return out

    def rows(self) -> frozenset:
        """The runs this candidate was fitted on (run ids): AIC/BIC compare only candidates with the same."""
        return frozenset(r for f in self.distinct() if f.rows is not None for r in f.rows.tolist())

    def verdict(self) -> dict[str, Any]:
        order = {"ok": 0, "poor": 1, "unidentified": 2}
        status, reasons, bound = "ok", [], []
        for key, f in self.fits.items():
            v = f.verdict()
            tag = curve_label(key) if key else ""
            if order[v["status"]] > order[status]:
                status = v["status"]
            reasons += [f"{tag}: {r}" if tag else r for r in v["reasons"]]
            bound += [f"{tag}: {n}" if tag else n for n in v["at_bound"]]
        if self.unidentified:  # a group the law cannot be fitted to for lack of design: never trusted
            status = "unidentified"
            reasons += self.unidentified
        if not self.fits:
            status, reasons = "unidentified", reasons or ["no group could be fitted"]
        return {"status": status, "reasons": reasons, "at_bound": bound}

    def heldout(self) -> str | None:
        """Why no held-out check could test this candidate (None: every fit was tested)."""
        for f in self.distinct():
            if not f.heldout_possible():
                ho = f.heldout or {}
                return ho.get("error") or ho.get("reason") or "no held-out check was run (--holdout 0)"
        return None

    def scores(self) -> dict[str, Any]:
        """n, parameters, AIC/BIC (Gaussian, in the law's residual space, over all its fits) and the
        held-out error (mean over the held-out runs of every fit). A run in several fits (a baseline shared
        by schemes) counts once in each: weight 1/copies; a fit repeated for several curves counts once."""
        fits = self.distinct()
        copies: dict[Any, int] = {}
        for f in fits:
            for r in (f.rows.tolist() if f.rows is not None else []):
                copies[r] = copies.get(r, 0) + 1
        n, rss, k = 0.0, 0.0, sum(len(f.params) for f in fits)
        for f in fits:
            if f.rows is None or f.residuals is None:
                n, rss = n + f.n, rss + f.gof["rmse"] ** 2 * f.n
                continue
            w = np.array([1.0 / copies[r] for r in f.rows.tolist()])
            n, rss = n + w.sum(), rss + float((w * f.residuals ** 2).sum())
        ll = n * math.log(max(rss / n, 1e-300)) if n else math.nan
        held_w, held_e = [], []
        held_copies: dict[Any, int] = {}
        pts = [f.heldout_points for f in fits if f.heldout_points is not None and f.heldout_possible()]
        for rows, _ in pts:
            for r in rows.tolist():
                held_copies[r] = held_copies.get(r, 0) + 1
        for rows, err in pts:
            held_w += [1.0 / held_copies[r] for r in rows.tolist()]
            held_e += err.tolist()
        ho = float(np.average(held_e, weights=held_w)) if held_e else None
        return {"n": round(n, 6), "params": k, "aic": ll + 2 * k, "bic": ll + k * math.log(max(n, 1)), "heldout": ho,
                "heldout_fits": len(pts), "fits": len(fits)}


def choose(cands: list[Candidate], trust_without_heldout: bool = False) -> tuple[Candidate | None, str]:
    """The trusted candidate and the sentence saying why.

    Usable: every fit identified and good, and every fit tested on held-out sizes (or
    `trust_without_heldout`). The lowest held-out error wins; errors within 5% (or 0.1 point) of the best
    are a tie, broken by BIC only among candidates fitted on the same runs (otherwise BIC is not comparable
    and held-out error alone decides)."""
    ok = [c for c in cands if c.verdict()["status"] == "ok"]
    usable = [c for c in ok if trust_without_heldout or c.heldout() is None]
    if not usable:
        why = ", ".join(f"{c.name} {c.verdict()['status']}" if c.verdict()["status"] != "ok" else
                        f"{c.name} has no held-out check ({c.heldout()}), and a law is not trusted on BIC alone "
                        "(--trust-without-heldout to allow it)" for c in cands)
        return None, (f"no law is usable for the headline ({why}; reasons in the table below), so the answer is "
                      "the measured curves interpolated, inside the measured range only" if why else "no law fitted")
    held = [c.scores()["heldout"] for c in usable if c.scores()["heldout"] is not None]
    if held:
        cut = min(held) * 1.05 + 1e-3
        tied = [c for c in usable if c.scores()["heldout"] is not None and c.scores()["heldout"] <= cut]
    else:
        tied = usable
    comparable = len({c.rows() for c in tied}) == 1
    if comparable:
        best = min(tied, key=lambda c: c.scores()["bic"])
    else:  # fitted on different runs: BIC cannot decide
        best = min(tied, key=lambda c: c.scores()["heldout"] if c.scores()["heldout"] is not None else math.inf)
    s = best.scores()
    others = [c for c in cands if c is not best]
    parts = []
    if s["heldout"] is not None:
        parts.append(f"lowest held-out error ({s['heldout']:.2%} predicting the largest models"
                     + ((", tied within 5% and lowest BIC among the tied)" if comparable else
                         ", tied within 5% with laws fitted on other runs, whose BIC is not comparable)")
                        if len(tied) > 1 else ")"))
    else:
        parts.append("lowest BIC (no held-out check possible; trusted without one as asked)")
    parts.append(f"BIC {s['bic']:.1f}")
    if others:
        parts.append("vs " + ", ".join(_other(c, best) for c in others))
    return best, "; ".join(parts)


def _other(c: Candidate, best: Candidate) -> str:
    s, v = c.scores(), c.verdict()
    held = f"held-out {s['heldout']:.2%}, " if s["heldout"] is not None else ""
    bic = f"BIC {s['bic']:.1f}" if c.rows() == best.rows() else "BIC not comparable: other runs"
    flag = "" if v["status"] == "ok" else f", {v['status']}"
    return f"{c.name} ({held}{bic}{flag})"


# ---- the "bits" question ---------------------------------------------------------------------------------


@dataclass
class Curve:
    key: tuple  # values of the curve keys (bits first)
    label: str
    k: float
    scheme: tuple  # values of the scheme keys
    bpp: float | None  # measured bits per parameter (total bits / parameters)
    lo: float = 0.0  # the measured range of total bits: a budget outside it is extrapolated for this curve
    hi: float = math.inf
    fixed: dict[str, float] = field(default_factory=dict)  # other precisions, constant along the curve
    fields: dict[str, Any] = field(default_factory=dict)  # the scheme fields by name

    def fit_of(self, cand: Candidate) -> FitResult | None:
        """The fit of a joint law that covers this curve: the one whose group fields the curve shares (a law
        that models a field itself, as Quartet models the regime, has one fit across its values)."""
        return next((f for f in cand.fits.values() if all(_same(self.fields.get(c), v) for c, v in f.group.items())),
                    None)


    def extrapolated(self, budget: float) -> bool:
        return bool(budget > self.hi * 1.0001 or budget < self.lo / 1.0001)


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


CURVE_PRECISIONS = ("fwd_bits", "bwd_bits", "act_bits", "kv_bits")


def curves_of(df: pd.DataFrame, keys: list[str]) -> list[Curve]:
    out = []
    for key, g in df.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        bpp = float(np.median(g["total_bits"] / g["n_params"])) if "n_params" in g and g["n_params"].notna().all() \
            else None
        fixed = {c: float(g[c].iloc[0]) for c in CURVE_PRECISIONS if c in g and g[c].notna().all() and g[c].nunique() == 1}
        out.append(Curve(key, curve_label(key), float(key[0]), key[1:], bpp, float(g["total_bits"].min()),
                         float(g["total_bits"].max()), fixed, dict(zip(keys[1:], key[1:], strict=True))))
    return out


def token_policy(df: pd.DataFrame) -> dict[str, Any] | None:
    """How the table chose training tokens D for a model of N parameters: constant, or D = c N^s fitted in
    log-log over its runs. Joint laws with a data term are evaluated on this policy at unseen N."""
    if "train_tokens" not in df or not df["train_tokens"].notna().any() or "n_params" not in df:
        return None
    d = df[["n_params", "train_tokens"]].dropna().drop_duplicates()
    if d["train_tokens"].nunique() == 1 or d["n_params"].nunique() < 2:
        return {"kind": "constant", "tokens": float(d["train_tokens"].median()),
                "text": f"D = {d['train_tokens'].median():.3g} tokens (as in the runs)"}
    s, c = np.polyfit(np.log(d["n_params"]), np.log(d["train_tokens"]), 1)
    return {"kind": "power", "log_c": float(c), "slope": float(s),
            "text": f"D = {math.exp(c):.3g} * N^{s:.2f} (least squares over the runs' N and D)"}


def tokens_at(policy: dict[str, Any] | None, n: np.ndarray) -> np.ndarray:
    if policy is None:
        return np.ones_like(n)
    if policy["kind"] == "constant":
        return np.full_like(n, policy["tokens"])
    return np.exp(policy["log_c"] + policy["slope"] * np.log(n))


def predict_curves(cand: Candidate, curves: list[Curve], budgets: np.ndarray,
                   policy: dict[str, Any] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Predicted metric of every curve at every budget ([C, B]) and per bootstrap replicate ([S, C, B])."""
    per_k = next(iter(cand.fits.values())).law.per_k if cand.fits else True
    pred = np.full((len(curves), len(budgets)), np.nan)
    used = {}
    for i, c in enumerate(curves):
        fit = cand.fits.get(c.key) if per_k else c.fit_of(cand)
        if fit is None or (not per_k and c.bpp is None):
            continue
        if per_k:
            x = {"total_bits": budgets}
        else:
            n = budgets / c.bpp
            x = {"n_params": n, "bits": np.full_like(n, c.k), "train_tokens": tokens_at(policy, n),
                 **{col: np.full_like(n, v) for col, v in c.fixed.items()}}
        try:
            pred[i] = fit.predict(x).reshape(-1)
        except (ValueError, KeyError):  # an efficiency law without eff(k) for this k, a precision not on the curve
            continue
        used[i] = (fit, x)
    al = aligned_replicates([f for f, _ in used.values()])
    if al is None:
        return pred, None
    S, ok = al
    boot = np.full((int(ok.sum()), len(curves), len(budgets)), np.nan)
    for i, (fit, x) in used.items():
        boot[:, i] = fit.predict(x, fit.boot[:S][ok])
    return pred, boot


def best_per_budget(pred: np.ndarray, boot: np.ndarray | None, curves: list[Curve],
                    budgets: np.ndarray | None = None) -> list[dict[str, Any]]:
    rows = []
    finite = np.isfinite(pred)
    for j in range(pred.shape[1]):
        if not finite[:, j].any():
            rows.append({"best": None})
            continue
        i = int(np.nanargmin(np.where(finite[:, j], pred[:, j], np.inf)))
        row: dict[str, Any] = {"best": curves[i].label, "best_k": curves[i].k, "predicted": float(pred[i, j])}
        if budgets is not None:
            row["extrapolated"] = curves[i].extrapolated(float(budgets[j]))
        if boot is not None:
            b = np.where(np.isfinite(boot[:, :, j]), boot[:, :, j], np.inf)
            b[:, ~finite[:, j]] = np.inf
            picks = np.argmin(b, axis=1)
            ks = np.array([curves[m].k for m in picks])
            row.update(frequency=float(np.mean(picks == i)),
                       k_ci95=(float(np.percentile(ks, 2.5)), float(np.percentile(ks, 97.5))))
        rows.append(row)
    return rows


def bits_headline(cands: list[Candidate], curves: list[Curve], budgets: np.ndarray, observed_max: float,
                  interpolated: list[dict[str, Any]], policy: dict[str, Any] | None,
                  trust_without_heldout: bool = False) -> dict[str, Any]:
    """One answer per budget. `extrapolated` is judged on the chosen curve's own measured range;
    `contradicted_by` lists the usable laws and the measured data (interpolated) whose answer differs, and
    `disagree` every other candidate's differing answer (unusable ones included, for reference)."""
    trusted, why = choose(cands, trust_without_heldout)
    usable = {c.name for c in cands if c.verdict()["status"] == "ok"}
    answers = {c.name: best_per_budget(*predict_curves(c, curves, budgets, policy), curves, budgets) for c in cands}
    by_label = {c.label: c for c in curves}
    rows = []
    for j, b in enumerate(budgets):
        interp = interpolated[j]["best"]
        row: dict[str, Any] = {"budget_bits": float(b), "answers": {n: a[j] for n, a in answers.items()},
                               "interpolated": interp}
        if trusted is not None:
            pick = answers[trusted.name][j]
            row.update(source=trusted.name, best=pick.get("best"), best_k=pick.get("best_k"),
                       k_ci95=pick.get("k_ci95"), frequency=pick.get("frequency"))
        else:
            row.update(source="interpolated data" if interp else None, best=interp,
                       best_k=label_k(interp) if interp else None)
        chosen = by_label.get(row["best"])
        row["extrapolated"] = chosen.extrapolated(float(b)) if chosen is not None else bool(b > observed_max * 1.0001)
        others = {n: a[j].get("best") for n, a in answers.items() if n != row.get("source")}
        if interp is not None and row.get("source") != "interpolated data":
            others["interpolated data"] = interp
        row["disagree"] = sorted(n for n, v in others.items() if v is not None and v != row["best"])
        row["contradicted_by"] = [n for n in row["disagree"] if n in usable or n == "interpolated data"] \
            if row["best"] is not None else []
        rows.append(row)
    return {"question": "bits", "trusted": trusted.name if trusted else None, "why": why, "rows": rows,
            "token_policy": policy, "candidates": _table(cands, trusted)}


# ---- "compute" and "size" ------------------------------------------------------------------------------


def log_n_opt(params: np.ndarray, flops: np.ndarray | float) -> np.ndarray:
    """log N_opt at C FLOPs for Chinchilla parameter rows [..., (a, b, e, alpha, beta)] (log A, log B, log E and
    the exponents): log G + a log(C/6) with a = beta / (alpha + beta), G = (alpha A / (beta B))^(1/(alpha+beta))
    (Hoffmann et al. 2022, Approach 3). `flops` broadcasts against params[..., 0]."""
    a, b, _, alpha, beta = np.moveaxis(np.asarray(params), -1, 0)
    with np.errstate(all="ignore"):
        return (np.log(alpha) + a - np.log(beta) - b) / (alpha + beta) + beta / (alpha + beta) * np.log(flops / 6)


def log_n_opt_kaplan(params: np.ndarray, flops: np.ndarray | float) -> np.ndarray:
    """log N_opt at C FLOPs for Kaplan et al.'s L(N, D) rows [..., (log N_c, log D_c, alpha_N, alpha_D)]. With
    D = C / (6 N) the loss rises with (N_c / N)^r + 6 D_c N / C (r = alpha_N / alpha_D), whose minimum is at
    N^(r + 1) = r N_c^r C / (6 D_c)."""
    lnc, ldc, an, ad = np.moveaxis(np.asarray(params), -1, 0)
    with np.errstate(all="ignore"):
        r = an / ad
        return (np.log(r) + r * lnc + np.log(flops / 6) - ldc) / (r + 1)


LOG_N_OPT = {"chinchilla": log_n_opt, "kaplan": log_n_opt_kaplan}  # law -> its compute-optimal log N


def compute_optimal(fit: FitResult, flops: np.ndarray) -> list[dict[str, Any]]:
    """N_opt (`log_n_opt`) and D_opt = (C/6) / N_opt (Hoffmann et al. 2022, Approach 3), with bootstrap
    intervals."""

    def nd(p: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, b, e, alpha, beta = (p[..., i:i + 1] for i in range(5))
        n = np.exp(log_n_opt(p[..., None, :], flops))
        d = flops / 6 / n
        loss = np.exp(e) + np.exp(a) * n ** -alpha + np.exp(b) * d ** -beta
        return n, d, loss

    with np.errstate(all="ignore"):
        n, d, loss = nd(fit.vector()[None])
        boot = fit.boot_ok()
        bn, bd, bl = nd(boot) if len(boot) >= 2 else (None, None, None)
    rows = []
    for j, c in enumerate(flops):
        row = {"flops": float(c), "n_opt": float(n[0, j]), "d_opt": float(d[0, j]),
               "tokens_per_param": float(d[0, j] / n[0, j]), "loss": float(loss[0, j])}
        if bn is not None:
            for name, arr in (("n_opt", bn), ("d_opt", bd), ("loss", bl)):
                v = arr[:, j][np.isfinite(arr[:, j])]
                row[f"{name}_ci95"] = (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) else None
        rows.append(row)
    return rows


def numeric_compute_optimal(fit: FitResult, flops: np.ndarray, points: int = 600) -> list[dict[str, Any]]:
    """N_opt, D_opt = argmin over N of L(N, C / (6N)) for any law of (N, D) (a user's own), on a log grid of
    tokens per parameter from 0.01 to 10^4, for the fit and every bootstrap replicate."""
    tpp = np.geomspace(1e-2, 1e4, points)
    n = np.sqrt(flops[:, None] / 6 / tpp[None, :])  # [C, G]
    x = {"n_params": n.ravel(), "train_tokens": (flops[:, None] / 6 / n).ravel()}
    boot = fit.boot_ok()

    def best(pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pred = np.where(np.isfinite(pred), pred, np.inf).reshape(len(flops), points)
        i = np.argmin(pred, axis=1)
        return n[np.arange(len(flops)), i], pred[np.arange(len(flops)), i], (i == 0) | (i == points - 1)

    n_opt, loss, edge = best(fit.predict(x))
    reps = [best(p) for p in fit.predict(x, boot)] if len(boot) >= 2 else []
    rows = []
    for j, c in enumerate(flops):
        row = {"flops": float(c), "n_opt": float(n_opt[j]), "d_opt": float(c / 6 / n_opt[j]),
               "tokens_per_param": float(c / 6 / n_opt[j] ** 2), "loss": float(loss[j]), "at_grid_edge": bool(edge[j])}
        if reps:
            bn = np.array([r[0][j] for r in reps])
            bl = np.array([r[1][j] for r in reps])
            row.update(n_opt_ci95=tuple(np.percentile(bn, [2.5, 97.5]).tolist()),
                       d_opt_ci95=tuple(np.percentile(c / 6 / bn, [2.5, 97.5]).tolist()),
                       loss_ci95=tuple(np.percentile(bl[np.isfinite(bl)], [2.5, 97.5]).tolist()))
        rows.append(row)
    return rows


def _exponents(fit: FitResult, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """a and b of N_opt ~ C^a, D_opt ~ C^b: closed form for the Chinchilla law (with bootstrap intervals),
    else the slope of log N_opt over log C of the rows."""
    p = fit.params
    if fit.law.name == "chinchilla":
        alpha, beta = p["alpha"], p["beta"]
        expo = {"a": beta / (alpha + beta), "b": alpha / (alpha + beta)}
        b = fit.boot_ok()
        if len(b) >= 2:
            i_al, i_be = list(p).index("alpha"), list(p).index("beta")
            ea = b[:, i_be] / (b[:, i_al] + b[:, i_be])
            expo["a_ci95"] = tuple(float(x) for x in np.percentile(ea, [2.5, 97.5]))
            expo["b_ci95"] = tuple(float(x) for x in np.percentile(1 - ea, [2.5, 97.5]))
        return expo
    a = float(np.polyfit(np.log([r["flops"] for r in rows]), np.log([r["n_opt"] for r in rows]), 1)[0])
    return {"a": a, "b": 1 - a}


def _eligible(cands: list[Candidate], columns: set[str]) -> list[Candidate]:
    """Candidates that answer a question whose inputs are `columns` (one fit over all runs)."""
    return [c for c in cands if c.fits and () in c.fits and set(c.fits[()].law.columns) <= columns]


def compute_headline(cands: list[Candidate], df: pd.DataFrame, extrapolate: float,
                     trust_without_heldout: bool = False) -> dict[str, Any]:
    """Compute-optimal N and D per FLOP budget from the trusted law of (N, D): the Chinchilla law in closed
    form, any other (a user's) numerically; with no trusted law, the Chinchilla fit is shown for reference."""
    cands = _eligible(cands, {"n_params", "train_tokens"})
    trusted, why = choose(cands, trust_without_heldout)
    shown = trusted or next((c for c in cands if c.name == "chinchilla"), cands[0])
    fit = shown.fits[()]
    c = 6 * df["n_params"] * df["train_tokens"]
    flops = np.geomspace(c.min(), c.max() * extrapolate, 9)
    rows = compute_optimal(fit, flops) if fit.law.name == "chinchilla" else numeric_compute_optimal(fit, flops)
    for r in rows:
        r["extrapolated"] = bool(r["flops"] > c.max() * 1.0001)
    return {"question": "compute", "trusted": trusted.name if trusted else None, "shown": shown.name, "why": why,
            "rows": rows, "exponents": _exponents(fit, rows), "candidates": _table(cands, trusted),
            "ci": fit.intervals()}


def size_headline(cands: list[Candidate], df: pd.DataFrame, extrapolate: float,
                  trust_without_heldout: bool = False) -> dict[str, Any]:
    cands = _eligible(cands, {"n_params"})
    trusted, why = choose(cands, trust_without_heldout)
    shown = trusted or cands[0]
    fit = shown.fits[()]
    sizes = np.geomspace(df["n_params"].min(), df["n_params"].max() * extrapolate, 9)
    pred = fit.predict({"n_params": sizes}).reshape(-1)
    b = fit.boot_ok()
    bp = fit.predict({"n_params": sizes}, b) if len(b) >= 2 else None
    rows = [{"n_params": float(n), "predicted": float(pred[j]), "extrapolated": bool(n > df["n_params"].max() * 1.0001),
             "ci95": tuple(float(x) for x in np.percentile(bp[:, j], [2.5, 97.5])) if bp is not None else None}
            for j, n in enumerate(sizes)]
    return {"question": "size", "trusted": trusted.name if trusted else None, "shown": shown.name, "why": why,
            "rows": rows, "candidates": _table(cands, trusted)}


def _table(cands: list[Candidate], trusted: Candidate | None) -> list[dict[str, Any]]:
    """One row per candidate. `comparable`: fitted on the same runs as the trusted law (or as the first
    candidate when none is trusted), so that its AIC/BIC can be read against it."""
    ref = (trusted or (cands[0] if cands else None))
    return [{"law": c.name, **c.scores(), **c.verdict(), "trusted": c is trusted, "skipped": c.skipped,
             "heldout_check": c.heldout() or "yes", "comparable": ref is not None and c.rows() == ref.rows()}
            for c in cands]


# ---- text (terminal and report.md share it) -------------------------------------------------------------


def _ci(v: Any, fmt: str = "{:.3g}") -> str:
    return "" if not v else "[" + ", ".join(fmt.format(x) for x in v) + "]"


def lines(h: Mapping[str, Any], metric: str) -> list[str]:
    """The headline as Markdown-compatible text: the answer table, then the candidate laws."""
    out = []
    src = h["trusted"] or "the interpolated data (no usable law)"
    if h["question"] != "bits" and not h["trusted"]:  # no model-free answer exists for these questions
        c = next((c for c in h["candidates"] if c["law"] == h.get("shown")), h["candidates"][0])
        src = f"{c['law']}, which is {c['status']} (see below): its numbers are shown for reference, not as an answer"
        h = {**h, "why": "; ".join(c["reasons"][:3])}
    if h["question"] == "bits":
        out += [f"**Answer: the bit-width k (and scheme) with the lowest {metric} at each total-bit budget**, "
                f"from **{src}**: {h['why']}.", ""]
        if h.get("token_policy") and h["trusted"] and "data" in h["trusted"]:
            out += [f"Training tokens at unseen sizes follow the runs' policy: {h['token_policy']['text']}.", ""]
        out += ["| budget (bits) | best | k 95% CI | chosen in | others that disagree |", "|---|---|---|---|---|"]
        for r in h["rows"]:
            freq = f"{r['frequency']:.0%} of resamples" if r.get("frequency") is not None else "-"
            dis = ", ".join(f"{n}: {_answer(r, n)}" + (" (usable)" if n in r.get("contradicted_by", []) else "")
                            for n in r["disagree"]) or "none"
            best = r["best"] or "not measured here"
            if r.get("contradicted_by"):
                best += " (contradicted)"
            out.append(f"| {r['budget_bits']:.3g}{' (extrap.)' if r['extrapolated'] else ''} | "
                       f"{best} | {_ci(r.get('k_ci95'), '{:g}') or '-'} | {freq} | {dis} |")
    elif h["question"] == "compute":
        e = h["exponents"]
        out += [f"**Answer: compute-optimal parameters N and tokens D for a FLOP budget C = 6ND**, from **{src}**: "
                f"{h['why']}. N_opt ~ C^a, D_opt ~ C^b with a = {e['a']:.3f} {_ci(e.get('a_ci95'), '{:.3f}')}, "
                f"b = {e['b']:.3f} {_ci(e.get('b_ci95'), '{:.3f}')}.", "",
                "| FLOPs | N_opt [95% CI] | D_opt [95% CI] | tokens/param | predicted loss |", "|---|---|---|---|---|"]
        for r in h["rows"]:
            out.append(f"| {r['flops']:.3g}{' (extrap.)' if r['extrapolated'] else ''} | {r['n_opt']:.3g} "
                       f"{_ci(r.get('n_opt_ci95'))} | {r['d_opt']:.3g} {_ci(r.get('d_opt_ci95'))} | "
                       f"{r['tokens_per_param']:.3g} | {r['loss']:.4g} {_ci(r.get('loss_ci95'), '{:.4g}')} |")
    else:
        out += [f"**Answer: {metric} predicted at larger model sizes**, from **{src}**: {h['why']}.", "",
                f"| parameters | predicted {metric} [95% CI] |", "|---|---|"]
        for r in h["rows"]:
            out.append(f"| {r['n_params']:.3g}{' (extrap.)' if r['extrapolated'] else ''} | {r['predicted']:.4g} "
                       f"{_ci(r.get('ci95'), '{:.4g}')} |")
    out += ["", "| candidate law | usable | why not | params at bound | n | params | held-out error | AIC | BIC |",
            "|---|---|---|---|---|---|---|---|---|"]
    for c in h["candidates"]:
        reasons = list(c["reasons"])
        if c.get("heldout_check", "yes") != "yes":
            reasons.append(f"no held-out check: {c['heldout_check']}")
        why = "; ".join(reasons[:3]) + (f" (+{len(reasons) - 3} more)" if len(reasons) > 3 else "")
        bound = ", ".join(c["at_bound"][:4]) + (" ..." if len(c["at_bound"]) > 4 else "")
        use = "**trusted**" if c["trusted"] else ("yes" if c["status"] == "ok" and c.get("heldout_check", "yes") ==
                                                  "yes" else c["status"] if c["status"] != "ok" else "no")
        ho = f"{c['heldout']:.2%}" if c["heldout"] is not None else "-"
        ic = f"{c['aic']:.1f} | {c['bic']:.1f}" if c.get("comparable", True) else "not comparable | (other runs)"
        out.append(f"| {c['law']} | {use} | {why or '-'} | {bound or '-'} | {c['n']:g} | {c['params']} | {ho} | {ic} |")
    return out


def _answer(row: Mapping[str, Any], name: str) -> str:
    if name == "interpolated data":
        return str(row["interpolated"])
    return str(row["answers"][name].get("best"))


def terminal(h: Mapping[str, Any], metric: str, max_rows: int = 9) -> str:
    """The headline for the terminal: the same text, fewer budget rows, no Markdown emphasis."""
    text = lines({**h, "rows": _thin(h["rows"], max_rows)}, metric)
    return "\n".join(t.replace("**", "") for t in text)


def _thin(rows: list, n: int) -> list:
    if len(rows) <= n:
        return rows
    idx = np.unique(np.linspace(0, len(rows) - 1, n).round().astype(int))
    return [rows[i] for i in idx]
