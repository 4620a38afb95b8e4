"""Published claims as checks: a registry of claim kinds, each a predicate over a study's results.

A claim compares one number ksir measured (from `ksir-fit`'s report or from the runs) with the
paper's value and a tolerance, and says whether it holds: "yes", "no", or "not measurable here"
with the reason (the law it needs is unidentified, the runs it compares do not exist, ...). A
number from a law the data do not identify is never used to say "yes" or "no".

Kinds (one `@claim_kind` entry each; the entry carries its own evaluation):
- `param`: a fitted law parameter (reported scale: E, A, B, alpha, ...) within `tol` of the paper.
- `exponent`: a compute-optimal exponent (a = beta/(alpha+beta) or b) within `tol`.
- `optimal_k`: the headline's best k, the most frequent over the measured budgets (or the smaller half
  of them: `budgets: low`), within `tol`; `budget: measured_bytes` reads the fit on measured memory.
- `gap`: mean over model sizes of metric(a) - metric(b) for two selections of runs, against a bound
  (`below` / `above`), e.g. "block 64 beats per-channel at 3 bits by > 0.05 nats".
- `ratio`: the largest relative difference |metric(a) / metric(b) - 1| over model sizes, at most `max`.
- `gap_closed`: the share of the gap between `base` and `ref` (e.g. fixed scales vs unquantized) that
  `a` closes, (base - a) / (base - ref), averaged over pairs, at least `min`.
- `correlation`: Pearson r between two run columns within `tol` of the paper's.
- `bound`: every selected run's `column` inside [`min`, `max`] (`at: largest`: only each group's largest
  model, groups by `per`), e.g. "measured bytes within 2% of the formula for every packed format".
- `lr_transfer`: one learning rate serves every model size: over the selected runs (a learning-rate sweep at
  several sizes, grouped by `per`, default `size`), the shared rate whose worst loss penalty against each
  size's own best rate is smallest; holds when that penalty is at most `max` (nats). The optimum of each size
  and its shift in octaves are reported; an optimum at the edge of the swept rates cannot confirm the claim.
- `best_scheme`: the scheme (report section "Best scheme per budget") that wins the most measured budgets
  (`budgets: low`: the smaller half), from the interpolated runs (`by: measured`, default) or the laws
  (`by: laws`, only where the laws are usable); holds when its label contains `paper` (e.g. "correct").
Selections may rename a column per side (`rename: {a: {attention_bits: k}, b: {bits: k}}`) so that runs
are paired on a quantity each side stores under its own name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

NOT_MEASURABLE = "not measurable here"


@dataclass
class Verdict:
    ksir: float | str | None
    holds: str  # "yes" | "no" | NOT_MEASURABLE
    reason: str = ""


Evaluator = Callable[[Mapping[str, Any], Mapping[str, Any], pd.DataFrame], Verdict]
KINDS: dict[str, Evaluator] = {}
FIELDS: dict[str, frozenset[str]] = {}  # the fields each kind reads, besides COMMON
COMMON = frozenset({"id", "text", "kind", "paper", "paper_text", "expect", "source"})
PAIRING = ("a", "b", "pair", "rename", "metric")


def claim_kind(name: str, fields: tuple[str, ...]) -> Callable[[Evaluator], Evaluator]:
    """Register a kind with the fields it reads (a claim with any other field is refused when loaded)."""

    def register(fn: Evaluator) -> Evaluator:
        KINDS[name], FIELDS[name] = fn, frozenset(fields)
        return fn

    return register


def check(claim: Mapping[str, Any]) -> str | None:
    """Why a claim as written cannot be evaluated (unknown kind or field), or None. A misspelt field would
    otherwise be ignored and the claim silently checked with a default (YAML reads a bare `on:` as True)."""
    kind = claim.get("kind")
    if kind not in KINDS:
        return f"kind {kind!r} is not one of {sorted(KINDS)}"
    extra = sorted(map(str, set(claim) - COMMON - FIELDS[kind]))
    return f"unknown field(s) {extra} for kind {kind} (allowed: {sorted(FIELDS[kind] | COMMON)})" if extra else None


def evaluate(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """One claim's verdict; a claim of an unknown kind is a one-line error."""
    if claim.get("kind") not in KINDS:
        from ksir.errors import ConfigError

        raise ConfigError(f"claims[{claim.get('id')}].kind", claim.get("kind"), sorted(KINDS))
    try:
        return KINDS[claim["kind"]](claim, report, runs)
    except KeyError as e:
        return Verdict(None, NOT_MEASURABLE, f"the results have no {e.args[0]!r}")


def _within(value: float, claim: Mapping[str, Any]) -> Verdict:
    off = abs(value - float(claim["paper"]))
    ok = off <= float(claim["tol"])
    return Verdict(value, "yes" if ok else "no", f"off by {off:.3g} ({'within' if ok else 'beyond'} {claim['tol']})")


def _law(report: Mapping[str, Any], name: str) -> tuple[Mapping[str, Any] | None, str]:
    """The law's summary and why it cannot be used ('' when it can)."""
    s = report.get("laws", {}).get(name)
    if s is None:
        return None, f"law {name} was not fitted"
    v = s.get("verdict", {})
    if v.get("status", "ok") != "ok":
        return s, f"law {name} is {v['status']}: {'; '.join(v.get('reasons', [])[:2])}"
    return s, ""


@claim_kind("param", ("law", "param", "tol"))
def _param(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    s, why = _law(report, claim["law"])
    if s is None or why:
        return Verdict(None, NOT_MEASURABLE, why)
    p = s["params"][claim["param"]]
    value = p.get("reported_value", p["value"])
    if p.get("at_bound"):
        return Verdict(value, NOT_MEASURABLE, f"{claim['param']} is at its bound: not a measured value")
    return _within(float(value), claim)


@claim_kind("exponent", ("name", "tol"))
def _exponent(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    h = report.get("headline", {})
    if h.get("question") != "compute":
        return Verdict(None, NOT_MEASURABLE, "the runs do not vary parameters and tokens independently")
    if not h.get("trusted"):
        return Verdict(h["exponents"][claim["name"]], NOT_MEASURABLE, "the Chinchilla law is not usable here")
    return _within(float(h["exponents"][claim["name"]]), claim)


@claim_kind("optimal_k", ("tol", "budgets", "budget"))
def _optimal_k(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    axis = claim.get("budget", "total_bits")
    if axis != "total_bits":  # the fit on another memory axis (ksir-repro runs it when a claim asks)
        report = (report.get("by_budget") or {}).get(axis) or {}
        if not report:
            return Verdict(None, NOT_MEASURABLE, f"no fit on the {axis} axis")
    h = report.get("headline", {})
    rows = [r for r in h.get("rows", []) if not r.get("extrapolated") and r.get("best_k") is not None]
    if claim.get("budgets") == "low":  # the smaller half of the measured budgets
        rows = rows[: max(1, len(rows) // 2)]
    if h.get("question") != "bits" or not rows:
        return Verdict(None, NOT_MEASURABLE, "no optimal k was measured inside the runs' budgets")
    ks = pd.Series([float(r["best_k"]) for r in rows])
    k = float(ks.mode().min())
    v = _within(k, claim)
    src = h.get("trusted") or "interpolated data"
    v.reason = f"most frequent best k over {len(rows)} measured budgets, from {src}; " + v.reason
    against = [r for r in rows if float(r["best_k"]) == k and r.get("contradicted_by")]
    if against:  # never reported bare: a usable law or the measured data answers otherwise there
        who = sorted({n for r in against for n in r["contradicted_by"]})
        v.reason += f"; contradicted at {len(against)} of those budgets by {', '.join(who)}"
    return v


def _select(runs: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    """Runs matching every {column: value or list}; none when a column is missing (nothing to compare)."""
    from analysis.collect import select

    try:
        return select(runs, where)
    except KeyError:
        return runs.iloc[0:0]


def _side(claim: Mapping[str, Any], runs: pd.DataFrame, side: str, on: list[str]) -> pd.Series | str:
    sel = _select(runs, claim[side]).rename(columns=(claim.get("rename") or {}).get(side, {}))
    if any(c not in sel for c in on):
        return f"the runs have no column {[c for c in on if c not in sel]} to pair on"
    return sel.groupby(on)[claim.get("metric", "val_loss")].mean()


def _paired(claim: Mapping[str, Any], runs: pd.DataFrame, sides: tuple[str, ...] = ("a", "b")) -> tuple | str:
    """The metric of each selection (a, b, ...), matched on `pair` (default: the model size)."""
    on = claim.get("pair", "n_params")
    on = list(on) if isinstance(on, list | tuple) else [on]
    got = [_side(claim, runs, s, on) for s in sides]
    if any(isinstance(g, str) for g in got):
        return next(g for g in got if isinstance(g, str))
    common = got[0].index
    for g in got[1:]:
        common = common.intersection(g.index)
    if not len(common):
        return f"no {'/'.join(on)} has runs of {' and '.join(str(dict(claim[s])) for s in sides)}"
    return tuple(g[common] for g in got)


@claim_kind("gap", (*PAIRING, "below", "above"))
def _gap(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    pair = _paired(claim, runs)
    if isinstance(pair, str):
        return Verdict(None, NOT_MEASURABLE, pair)
    a, b = pair
    gap = float((a - b).mean())
    if "below" in claim:
        ok, rule = gap < float(claim["below"]), f"< {claim['below']}"
    else:
        ok, rule = gap > float(claim["above"]), f"> {claim['above']}"
    return Verdict(gap, "yes" if ok else "no", f"mean over {len(a)} pairs of a - b = {gap:.4g} (needs {rule})")


@claim_kind("gap_closed", (*PAIRING, "base", "ref", "min"))
def _gap_closed(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    got = _paired(claim, runs, ("a", "base", "ref"))
    if isinstance(got, str):
        return Verdict(None, NOT_MEASURABLE, got)
    a, base, ref = got
    gap = float((base - ref).mean())
    if gap <= 0:
        return Verdict(None, NOT_MEASURABLE, f"base is no worse than ref on average over {len(a)} pairs "
                       f"({gap:+.4g}): there is no gap to close")
    share = float((base - a).mean()) / gap  # a ratio of means: one pair with a tiny gap cannot dominate
    ok = share >= float(claim["min"])
    return Verdict(share, "yes" if ok else "no",
                   f"closes {share:.0%} of a mean gap of {gap:.4g} over {len(a)} pairs (needs >= {float(claim['min']):.0%})")


@claim_kind("correlation", ("x", "y", "tol"))
def _correlation(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """Pearson r between two run columns (e.g. loss and zero-shot accuracy) within `tol` of the paper."""
    x, y = claim["x"], claim["y"]
    if x not in runs or y not in runs:
        return Verdict(None, NOT_MEASURABLE, f"the runs have no {y if x in runs else x} column")
    d = runs[[x, y]].apply(pd.to_numeric, errors="coerce").dropna()
    if len(d) < 3 or d[x].nunique() < 2 or d[y].nunique() < 2:
        return Verdict(None, NOT_MEASURABLE, f"{len(d)} runs with both {x} and {y}: too few to correlate")
    v = _within(float(d[x].corr(d[y])), claim)
    v.reason = f"over {len(d)} runs; " + v.reason
    return v


@claim_kind("ratio", (*PAIRING, "max"))
def _ratio(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    pair = _paired(claim, runs)
    if isinstance(pair, str):
        return Verdict(None, NOT_MEASURABLE, pair)
    a, b = pair
    worst = float((a / b - 1).abs().max())
    ok = worst <= float(claim["max"])
    return Verdict(worst, "yes" if ok else "no",
                   f"largest relative difference over {len(a)} pairs {worst:.2%} (needs <= {float(claim['max']):.2%})")


@claim_kind("bound", ("where", "column", "min", "max", "at", "per"))
def _bound(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """The worst value of a run column over a selection, against [min, max]."""
    col = claim["column"]
    sel = _select(runs, claim.get("where") or {})
    if col not in sel or sel.empty:
        return Verdict(None, NOT_MEASURABLE, f"no run of {dict(claim.get('where') or {})} has {col!r}")
    sel = sel.assign(_v=pd.to_numeric(sel[col], errors="coerce")).dropna(subset=["_v"])
    per = list(claim.get("per") or [])
    if claim.get("at") == "largest" and "n_params" in sel:
        sel = sel[sel["n_params"] == sel.groupby(per)["n_params"].transform("max")] if per else \
            sel[sel["n_params"] == sel["n_params"].max()]
    if sel.empty:
        return Verdict(None, NOT_MEASURABLE, f"no finite {col!r} in the selection")
    lo, hi = claim.get("min"), claim.get("max")
    v = sel["_v"]
    excess = pd.concat([float(lo) - v if lo is not None else v * 0 - float("inf"),
                        v - float(hi) if hi is not None else v * 0 - float("inf")], axis=1).max(axis=1)
    worst = float(v.loc[excess.idxmax()])  # the value furthest outside (or closest to) the bounds
    bad = sel[excess > 0]
    rule = " and ".join(x for x in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if x)
    where = f"{len(sel)} runs" + (" (largest model of each group)" if claim.get("at") == "largest" else "")
    if bad.empty:
        return Verdict(worst, "yes", f"all {where} have {col} {rule} (range {v.min():.4g}..{v.max():.4g})")
    row = sel.loc[excess.idxmax()]
    label = ", ".join(f"{c}={row[c]}" for c in [*per, "size"] if c in sel) or f"run {row.name}"
    return Verdict(worst, "no", f"{len(bad)} of {where} outside {rule} (range {v.min():.4g}..{v.max():.4g}; "
                   f"worst {label}: {worst:.4g})")


@claim_kind("lr_transfer", ("where", "per", "x", "metric", "max"))
def _lr_transfer(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    import math

    x, metric, per = claim.get("x", "lr"), claim.get("metric", "val_loss"), claim.get("per", "size")
    sel = _select(runs, claim.get("where") or {})
    if sel.empty or x not in sel or per not in sel:
        return Verdict(None, NOT_MEASURABLE, f"no runs of {dict(claim.get('where') or {})} with {x!r} and {per!r}")
    grid = (sel.assign(_x=pd.to_numeric(sel[x], errors="coerce"), _y=pd.to_numeric(sel[metric], errors="coerce"))
            .dropna(subset=["_x", "_y"]).groupby([per, "_x"])["_y"].mean().unstack(per))
    grid = grid.dropna()  # rates swept at every size
    if grid.shape[1] < 2 or grid.shape[0] < 3:
        return Verdict(None, NOT_MEASURABLE, f"needs >= 3 rates swept at >= 2 sizes; have {grid.shape[0]} rates "
                       f"common to {grid.shape[1]} sizes")
    best = grid.idxmin()  # each size's own best rate
    penalty = (grid - grid.min()).max(axis=1)  # worst loss penalty of each shared rate
    shared = float(penalty.idxmin())
    worst = float(penalty.min())
    edge = [str(c) for c in grid.columns if best[c] in (grid.index.min(), grid.index.max())]
    shift = math.log2(float(best.max()) / float(best.min()))
    detail = (f"best rate per {per}: " + ", ".join(f"{c} {best[c]:.3g}" for c in grid.columns)
              + f" (optimum moves {shift:.2g} octaves over {len(grid)} rates); the shared rate {shared:.3g} costs at "
              f"most {worst:.4g} nats (needs <= {claim['max']})")
    ok = worst <= float(claim["max"])
    if ok and edge:
        return Verdict(worst, NOT_MEASURABLE, f"the optimum of {', '.join(edge)} is at the edge of the swept rates; " + detail)
    return Verdict(worst, "yes" if ok else "no", detail)


@claim_kind("best_scheme", ("budgets", "by"))
def _best_scheme(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    rows = [r for r in report.get("scheme_frontiers") or [] if not r.get("extrapolated")]
    if claim.get("budgets") == "low":
        rows = rows[: max(1, len(rows) // 2)]
    by = claim.get("by", "measured")
    if by == "laws":
        status = next((c.get("status") for c in (report.get("headline") or {}).get("candidates", [])
                       if c.get("law") == "power_bits"), None)
        if status != "ok":
            return Verdict(None, NOT_MEASURABLE, f"the per-k laws are {status or 'not fitted'}")
    field = "measured_best_scheme" if by == "measured" else "best_scheme"
    winners = pd.Series([r.get(field) for r in rows]).dropna()
    if winners.empty:
        return Verdict(None, NOT_MEASURABLE, "no budget inside the runs compares two or more schemes")
    counts = winners.value_counts()
    top = str(counts.index[0])
    ok = str(claim["paper"]) in top
    tally = "; ".join(f"{lab}: {n}" for lab, n in counts.items())
    return Verdict(top, "yes" if ok else "no", f"best at {counts.iloc[0]} of {len(winners)} budgets ({by}; {tally})")
