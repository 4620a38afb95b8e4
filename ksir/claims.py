"""Published claims as checks: a registry of claim kinds, each a predicate over a study's results.

A claim compares one number ksir measured (from `ksir-fit`'s report or from the runs) with the
paper's value and a tolerance, and says whether it holds: "yes", "no", or "not measurable here"
with the reason (the law it needs is unidentified, the runs it compares do not exist, ...). A
number from a law the data do not identify is never used to say "yes" or "no".

Kinds (one `@claim_kind` entry each; the entry carries its own evaluation):
- `param`: a fitted law parameter (reported scale: E, A, B, alpha, ...) within `tol` of the paper.
- `exponent`: a compute-optimal exponent (a = beta/(alpha+beta) or b) within `tol`.
- `optimal_k`: the headline's best k, the most frequent over the measured budgets, within `tol`.
- `gap`: mean over model sizes of metric(a) - metric(b) for two selections of runs, against a bound
  (`below` / `above`), e.g. "block 64 beats per-channel at 3 bits by > 0.05 nats".
- `ratio`: the largest relative difference |metric(a) / metric(b) - 1| over model sizes, at most `max`.
"""

from __future__ import annotations

import math
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


def claim_kind(name: str) -> Callable[[Evaluator], Evaluator]:
    def register(fn: Evaluator) -> Evaluator:
        KINDS[name] = fn
        return fn

    return register


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


@claim_kind("param")
def _param(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    s, why = _law(report, claim["law"])
    if s is None or why:
        return Verdict(None, NOT_MEASURABLE, why)
    p = s["params"][claim["param"]]
    value = p.get("reported_value", p["value"])
    if p.get("at_bound"):
        return Verdict(value, NOT_MEASURABLE, f"{claim['param']} is at its bound: not a measured value")
    return _within(float(value), claim)


@claim_kind("exponent")
def _exponent(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    h = report.get("headline", {})
    if h.get("question") != "compute":
        return Verdict(None, NOT_MEASURABLE, "the runs do not vary parameters and tokens independently")
    if not h.get("trusted"):
        return Verdict(h["exponents"][claim["name"]], NOT_MEASURABLE, "the Chinchilla law is not usable here")
    return _within(float(h["exponents"][claim["name"]]), claim)


@claim_kind("optimal_k")
def _optimal_k(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    h = report.get("headline", {})
    rows = [r for r in h.get("rows", []) if not r.get("extrapolated") and r.get("best_k") is not None]
    if h.get("question") != "bits" or not rows:
        return Verdict(None, NOT_MEASURABLE, "no optimal k was measured inside the runs' budgets")
    ks = pd.Series([float(r["best_k"]) for r in rows])
    k = float(ks.mode().min())
    v = _within(k, claim)
    src = h.get("trusted") or "interpolated data"
    v.reason = f"most frequent best k over {len(rows)} measured budgets, from {src}; " + v.reason
    return v


def _select(runs: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    out = runs
    for col, want in where.items():
        if col not in out:
            return out.iloc[0:0]
        wants = {str(w) for w in (want if isinstance(want, list) else [want])}
        out = out[out[col].map(lambda v, w=wants: _norm(v) in w)]
    return out


def _norm(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return str(int(v))
    return str(v)


def _paired(claim: Mapping[str, Any], runs: pd.DataFrame) -> tuple[pd.Series, pd.Series] | str:
    """The metric of selections a and b, matched on `on` (default: the model size)."""
    metric, on = claim.get("metric", "val_loss"), claim.get("on", "n_params")
    a = _select(runs, claim["a"]).groupby(on)[metric].mean()
    b = _select(runs, claim["b"]).groupby(on)[metric].mean()
    common = a.index.intersection(b.index)
    if not len(common):
        return f"no model size has runs of both {dict(claim['a'])} and {dict(claim['b'])}"
    return a[common], b[common]


@claim_kind("gap")
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
    return Verdict(gap, "yes" if ok else "no", f"mean over {len(a)} sizes of a - b = {gap:.4g} (needs {rule})")


@claim_kind("ratio")
def _ratio(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    pair = _paired(claim, runs)
    if isinstance(pair, str):
        return Verdict(None, NOT_MEASURABLE, pair)
    a, b = pair
    worst = float((a / b - 1).abs().max())
    ok = worst <= float(claim["max"])
    return Verdict(worst, "yes" if ok else "no",
                   f"largest relative difference over {len(a)} sizes {worst:.2%} (needs <= {float(claim['max']):.2%})")
