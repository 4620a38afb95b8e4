"""Published claims as checks whose verdict comes from an interval: **holds**, **fails** or **inconclusive**.

A claim measures one quantity from a study's runs (or its fit) and compares its interval with a margin the
study declares once, with its source (`margins:` in study.yaml). Replicates earn the interval: runs that differ
only in `seed` (the seeds of the base models, for methods that are deterministic given their base model) are
paired, so every gap is a paired difference with a seed-level interval. One seed gives no interval: such a
claim is inconclusive, whatever its point value says.

Tests (`test:` of a claim; the form the paper states it in):
- `superiority`: "a beats b" (`direction: lower`, the default for a loss: a - b < -threshold; `higher`:
  a - b > threshold; the threshold is the claim's margin, default 0). Holds when the 95% interval of a - b lies
  wholly on the claimed side, fails when it lies wholly on the other side, inconclusive otherwise.
- `equivalence`: "a is as good as b within m": holds when the 90% interval of the quantity lies inside
  (-m, m) (two one-sided tests at 5%), fails when it lies wholly outside, inconclusive otherwise. Failing to
  show a difference is never equivalence.
- `reproduce`: a deterministic re-computation (a refit of published data): holds within a numerical
  tolerance of the published value, fails beyond it.
- exact choices (the optimal k, the best scheme): the share of bootstrap resamples (of seeds) that agree
  with the paper; holds at >= 95%, fails at <= 5%, inconclusive between.

Kinds (one `@claim_kind` entry each: the fields it reads and its evaluation):
- `param` / `exponent`: a fitted parameter or compute-optimal exponent, `reproduce`d within `margin`.
- `gap`: mean over paired sizes (`pair`) of metric(a) - metric(b), per seed; superiority or equivalence.
- `gap_at_bits`: a - b at equal total bits (each curve interpolated in log total bits over the budgets both
  reach), per seed; e.g. a low-rank correction that adds bits against plain k-bit at the same memory.
- `ratio`: |metric(a) / metric(b) - 1| at every paired size: equivalence within `margin` at each size.
- `gap_closed`: the share (base - a) / (base - ref) of a gap that a closes, per seed; superiority over `min`.
- `optimal_k`: the k with the lowest metric per measured budget on the claim's own curves (`where`), the most
  frequent over the budgets (`budgets: low`: the smaller half), exactly the paper's k.
- `best_scheme`: the scheme whose curves (each scheme at its best k) win most measured budgets.
- `correlation`: Pearson r between two columns, equivalence to the paper's within `margin` (Fisher z).
- `bound`: a deterministic measured column (bytes, packed minus simulated loss) inside [min, max] for every run.
- `lr_transfer`: the best shared learning rate's worst penalty against each size's own best, below `margin`.
- `composition`: Kumar et al.'s law fitted on single-axis runs predicts the mixed runs, per seed, below `margin`.
- `plan_reach`: ksir-plan's loop reaches the grid's k* with at most `margin` of the grid's compute (FLOPs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ksir.quant.vocab import REFERENCE_BITS

HOLDS, FAILS, INCONCLUSIVE = "holds", "fails", "inconclusive"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE)
SUPERIORITY_LEVEL, EQUIVALENCE_LEVEL = 0.95, 0.90
AGREE = 0.95  # share of resamples that must agree for an exact choice to hold (<= 1 - AGREE: fails)
N_RESAMPLES = 1000
REPLICATE = "seed"


@dataclass
class Verdict:
    ksir: float | str | None  # the measured quantity (point estimate: the mean over replicates)
    verdict: str  # holds | fails | inconclusive
    reason: str = ""
    interval: tuple[float, float] | None = None
    level: float | None = None
    replicates: int | None = None
    share: float | None = None  # exact choices: the share of resamples agreeing with the paper
    margin: dict[str, Any] | None = None  # the declared margin used: {name, value, source}
    extra: dict[str, Any] = field(default_factory=dict)


Evaluator = Callable[[Mapping[str, Any], Mapping[str, Any], pd.DataFrame], Verdict]
KINDS: dict[str, Evaluator] = {}
FIELDS: dict[str, frozenset[str]] = {}  # the fields each kind reads, besides COMMON
COMMON = frozenset({"id", "text", "kind", "paper", "paper_text", "expect", "source", "margin", "test", "direction"})
PAIRING = ("a", "b", "pair", "rename", "metric", "over")
TESTS = ("superiority", "equivalence", "reproduce", "exact")


def claim_kind(name: str, fields: tuple[str, ...]) -> Callable[[Evaluator], Evaluator]:
    """Register a kind with the fields it reads (a claim with any other field is refused when loaded)."""

    def register(fn: Evaluator) -> Evaluator:
        KINDS[name], FIELDS[name] = fn, frozenset(fields)
        return fn

    return register


def check(claim: Mapping[str, Any], margins: Mapping[str, Any] | None = None) -> str | None:
    """Why a claim as written cannot be evaluated (unknown kind, field, test or margin), or None. A misspelt
    field would otherwise be ignored and the claim silently checked with a default."""
    kind = claim.get("kind")
    if kind not in KINDS:
        return f"kind {kind!r} is not one of {sorted(KINDS)}"
    extra = sorted(map(str, set(claim) - COMMON - FIELDS[kind]))
    if extra:
        return f"unknown field(s) {extra} for kind {kind} (allowed: {sorted(FIELDS[kind] | COMMON)})"
    if claim.get("test", default_test(claim)) not in TESTS:
        return f"test {claim.get('test')!r} is not one of {list(TESTS)}"
    name = claim.get("margin")
    if name is not None and margins is not None and name not in margins:
        return f"margin {name!r} is not declared in the study's margins ({sorted(margins) or 'none'})"
    if claim.get("test", default_test(claim)) == "equivalence" and name is None:
        return "an equivalence claim needs a declared margin (margin: <name>)"
    return None


def default_test(claim: Mapping[str, Any]) -> str:
    return {"param": "reproduce", "exponent": "reproduce", "optimal_k": "exact", "best_scheme": "exact",
            "ratio": "equivalence", "correlation": "equivalence", "bound": "reproduce"}.get(claim.get("kind"),
                                                                                       "superiority")


def evaluate(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame,
             margins: Mapping[str, Any] | None = None) -> Verdict:
    """One claim's verdict; a claim of an unknown kind is a one-line error."""
    if claim.get("kind") not in KINDS:
        from ksir.errors import ConfigError

        raise ConfigError(f"claims[{claim.get('id')}].kind", claim.get("kind"), sorted(KINDS))
    c = dict(claim)
    m = None
    if c.get("margin") is not None:
        decl = (margins or {}).get(c["margin"])
        if decl is None:
            return Verdict(None, INCONCLUSIVE, f"margin {c['margin']!r} is not declared")
        m = {"name": c["margin"], "value": float(decl["value"]), "source": decl.get("source", ""),
             "relative": bool(decl.get("relative", False))}
    c["_margin"] = m
    try:
        v = KINDS[c["kind"]](c, report, runs)
    except KeyError as e:
        v = Verdict(None, INCONCLUSIVE, f"not measurable here: the results have no {e.args[0]!r}")
    v.margin = m
    return v


# ---- intervals and tests ---------------------------------------------------------------------------------


def t_interval(values: np.ndarray, level: float) -> tuple[float, float] | None:
    """The t interval of the mean of replicate values (None with fewer than 2)."""
    from scipy import stats

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return None
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v))
    return float(v.mean() - half), float(v.mean() + half)


def superiority(values: np.ndarray, claim: Mapping[str, Any], what: str) -> Verdict:
    """a - b (per replicate) against the claimed side of the threshold (the margin, default 0)."""
    lower = claim.get("direction", "lower") == "lower"
    m = claim.get("_margin")
    t = (-1 if lower else 1) * (m["value"] if m else 0.0)
    point = float(np.nanmean(values))
    ci = t_interval(values, SUPERIORITY_LEVEL)
    rule = f"{what} {'<' if lower else '>'} {t:g}"
    if ci is None:
        return Verdict(point, INCONCLUSIVE, f"{what} = {point:.4g} from {len(values)} replicate(s): no interval "
                       f"(needs >= 2 seeds); claim: {rule}", replicates=len(values))
    lo, hi = ci
    claimed = hi < t if lower else lo > t
    against = lo > t if lower else hi < t
    verdict = HOLDS if claimed else FAILS if against else INCONCLUSIVE
    where = "wholly on the claimed side" if claimed else "wholly on the other side" if against else "across it"
    return Verdict(point, verdict, f"{what} = {point:.4g}, 95% CI [{lo:.4g}, {hi:.4g}] over {len(values)} seeds, "
                   f"{where} of {t:g} (claim: {rule})", interval=ci, level=SUPERIORITY_LEVEL, replicates=len(values))


def equivalence(values: np.ndarray, m: float, what: str, center: float = 0.0) -> Verdict:
    point = float(np.nanmean(values))
    ci = t_interval(values, EQUIVALENCE_LEVEL)
    if ci is None:
        return Verdict(point, INCONCLUSIVE, f"{what} = {point:.4g} from {len(values)} replicate(s): no interval "
                       f"(needs >= 2 seeds); claim: within {m:g} of {center:g}", replicates=len(values))
    return _equivalence_ci(point, ci, m, what, center, len(values))


def _equivalence_ci(point: float, ci: tuple[float, float], m: float, what: str, center: float,
                    n: int | None) -> Verdict:
    lo, hi = ci
    inside = center - m < lo and hi < center + m
    outside = lo >= center + m or hi <= center - m
    verdict = HOLDS if inside else FAILS if outside else INCONCLUSIVE
    where = "inside" if inside else "wholly outside" if outside else "not inside"
    return Verdict(point, verdict, f"{what} = {point:.4g}, 90% CI [{lo:.4g}, {hi:.4g}]{f' over {n} seeds' if n else ''}"
                   f" {where} ({center - m:g}, {center + m:g})", interval=ci, level=EQUIVALENCE_LEVEL, replicates=n)


def exact_share(share: float, point: Any, claim: Mapping[str, Any], what: str, n: int) -> Verdict:
    """An exact choice from the share of resamples agreeing with the paper."""
    if n < 2:
        return Verdict(point, INCONCLUSIVE, f"{what} = {point} from {n} seed: no resampling possible (needs >= 2 "
                       f"seeds)", replicates=n)
    verdict = HOLDS if share >= AGREE else FAILS if share <= 1 - AGREE else INCONCLUSIVE
    return Verdict(point, verdict, f"{what} = {point}; {share:.0%} of {N_RESAMPLES} resamples of the {n} seeds agree "
                   f"with the paper's {claim.get('paper')} (holds >= {AGREE:.0%}, fails <= {1 - AGREE:.0%})",
                   share=share, replicates=n)


def seed_resamples(seeds: list[Any]) -> dict[tuple[Any, ...], int]:
    """N_RESAMPLES draws of the seeds with replacement (seeded: the same draws every run), as {multiset: count}:
    a statistic of a multiset does not depend on its order, so each distinct one is computed once."""
    rng = np.random.default_rng(0)
    counts: dict[tuple[Any, ...], int] = {}
    for _ in range(N_RESAMPLES):
        draw = tuple(sorted(seeds[i] for i in rng.integers(0, len(seeds), len(seeds))))
        counts[draw] = counts.get(draw, 0) + 1
    return counts


def _resample(d: pd.DataFrame, draw: tuple[Any, ...]) -> pd.DataFrame:
    return pd.concat([d[d["_seed"] == s] for s in draw])


# ---- selections and pairing ------------------------------------------------------------------------------


def _select(runs: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    """Runs matching every {column: value or list}; none when a column is missing (nothing to compare)."""
    from analysis.collect import select

    try:
        return select(runs, where)
    except KeyError:
        return runs.iloc[0:0]


def _replicates(runs: pd.DataFrame) -> pd.Series:
    return runs[REPLICATE].fillna(0) if REPLICATE in runs else pd.Series(0, index=runs.index)


def _side(claim: Mapping[str, Any], runs: pd.DataFrame, side: str, on: list[str]) -> pd.Series | str:
    sel = _select(runs, claim[side]).rename(columns=(claim.get("rename") or {}).get(side, {}))
    if any(c not in sel for c in on):
        return f"the runs have no column {[c for c in on if c not in sel]} to pair on"
    sel = sel.assign(**{REPLICATE: _replicates(sel)})
    return sel.groupby([REPLICATE, *on])[claim.get("metric", "val_loss")].mean()


def paired(claim: Mapping[str, Any], runs: pd.DataFrame, sides: tuple[str, ...] = ("a", "b")) -> list[pd.Series] | str:
    """The metric of each selection (a, b, ...), matched on seed and `pair` (default: the model size)."""
    on = claim.get("pair", "n_params")
    on = list(on) if isinstance(on, list | tuple) else [on]
    got = [_side(claim, runs, s, on) for s in sides]
    if any(isinstance(g, str) for g in got):
        return next(g for g in got if isinstance(g, str))
    common = got[0].index
    for g in got[1:]:
        common = common.intersection(g.index)
    if not len(common):
        return f"not measurable here: no {'/'.join(on)} has runs of {' and '.join(str(dict(claim[s])) for s in sides)}"
    return [g[common] for g in got]


def per_replicate(values: pd.Series, claim: Mapping[str, Any]) -> np.ndarray:
    """Per seed: the mean over paired sizes (`over: pairs` treats each pair as a replicate instead: a hub model
    has one base model per size, so there are no seeds to pair on)."""
    if claim.get("over") == "pairs":
        return values.to_numpy(float)
    return values.groupby(level=0).mean().to_numpy(float)


def _test_values(values: np.ndarray, claim: Mapping[str, Any], what: str) -> Verdict:
    if claim.get("test", default_test(claim)) == "equivalence":
        return equivalence(values, claim["_margin"]["value"], what)
    return superiority(values, claim, what)


# ---- kinds -----------------------------------------------------------------------------------------------


def _law(report: Mapping[str, Any], name: str) -> tuple[Mapping[str, Any] | None, str]:
    """The law's summary and why it cannot be used ('' when it can)."""
    s = report.get("laws", {}).get(name)
    if s is None:
        return None, f"law {name} was not fitted"
    v = s.get("verdict", {})
    if v.get("status", "ok") != "ok":
        return s, f"law {name} is {v['status']}: {'; '.join(v.get('reasons', [])[:2])}"
    return s, ""


def _reproduce(value: float, claim: Mapping[str, Any], note: str = "") -> Verdict:
    m = claim.get("_margin")
    if m is None:
        return Verdict(value, INCONCLUSIVE, "a reproduce claim needs a declared numerical tolerance (margin)")
    paper = float(claim["paper"])
    off = abs(value - paper)
    tol = m["value"] * abs(paper) if m.get("relative") else m["value"]
    ok = off <= tol
    allowed = f"{m['value']:.2%} of the published value" if m.get("relative") else f"{m['value']:g}"
    return Verdict(value, HOLDS if ok else FAILS, f"{value:.6g} vs published {paper:g}: off by {off:.3g} "
                   f"({off / abs(paper):.2%}; tolerance {allowed}){note}")


@claim_kind("param", ("law", "param"))
def _param(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    s, why = _law(report, claim["law"])
    if s is None or why:
        return Verdict(None, INCONCLUSIVE, why)
    p = s["params"][claim["param"]]
    value = p.get("reported_value", p["value"])
    if p.get("at_bound"):
        return Verdict(value, INCONCLUSIVE, f"{claim['param']} is at its bound: not a measured value")
    ci = p.get("reported_ci95") or p.get("ci95")
    v = _reproduce(float(value), claim, f"; ksir's bootstrap 95% CI [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")
    v.interval = tuple(ci) if ci else None
    return v


@claim_kind("exponent", ("name",))
def _exponent(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    h = report.get("headline", {})
    if h.get("question") != "compute":
        return Verdict(None, INCONCLUSIVE, "not measurable here: the runs do not vary parameters and tokens "
                       "independently")
    if not h.get("trusted"):
        return Verdict(h["exponents"][claim["name"]], INCONCLUSIVE, "the Chinchilla law is not usable here")
    e = h["exponents"]
    ci = e.get(f"{claim['name']}_ci95")
    v = _reproduce(float(e[claim["name"]]), claim, f"; ksir's bootstrap 95% CI [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    v.interval = tuple(ci) if ci else None
    return v


@claim_kind("gap", PAIRING)
def _gap(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    pair = paired(claim, runs)
    if isinstance(pair, str):
        return Verdict(None, INCONCLUSIVE, pair)
    a, b = pair
    v = _test_values(per_replicate(a - b, claim), claim, "mean a - b")
    v.extra = {"pairs": int(len(a))}
    return v


@claim_kind("gap_at_bits", ("a", "b", "metric", "points"))
def _gap_at_bits(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """a - b at equal total bits, per seed: each side's best curve (the lower envelope of its k-curves) at each
    budget both sides reach, interpolated in log total bits; the mean over those budgets."""
    metric = claim.get("metric", "val_loss")
    sides = {s: _select(runs, claim[s]) for s in ("a", "b")}
    if any(d.empty or "total_bits" not in d for d in sides.values()):
        return Verdict(None, INCONCLUSIVE, "not measurable here: a side has no runs with total bits")
    values, budgets_used = [], 0
    for seed in sorted(set(_replicates(sides["a"])) & set(_replicates(sides["b"]))):
        curves = {s: _curves(d[_replicates(d) == seed], metric) for s, d in sides.items()}
        if not all(curves.values()):
            continue
        lo = max(min(c[0][0] for c in cs) for cs in curves.values())
        hi = min(max(c[0][-1] for c in cs) for cs in curves.values())
        diffs = []
        for b in np.linspace(lo, hi, int(claim.get("points", 9))) if hi > lo else []:
            env = [_envelope(curves[s], b) for s in ("a", "b")]
            if None not in env:
                diffs.append(env[0] - env[1])
        if diffs:
            values.append(float(np.mean(diffs)))
            budgets_used = len(diffs)
    if not values:
        return Verdict(None, INCONCLUSIVE, "not measurable here: the two sides share no range of total bits")
    return _test_values(np.array(values), claim, f"a - b at equal total bits (mean over {budgets_used} budgets)")


def _curves(d: pd.DataFrame, metric: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """One (log total bits, metric) curve per bit-width k of a selection (2 points at least)."""
    out = []
    for _, g in d.groupby("bits") if "bits" in d else [(None, d)]:
        g = g.groupby("total_bits")[metric].mean().sort_index()
        if len(g) >= 2:
            out.append((np.log(g.index.to_numpy(float)), g.to_numpy(float)))
    return out


def _envelope(curves: list[tuple[np.ndarray, np.ndarray]], log_budget: float) -> float | None:
    """The lowest of the curves that reach a budget (None: none does)."""
    vals = [float(np.interp(log_budget, *c)) for c in curves if c[0][0] <= log_budget <= c[0][-1]]
    return min(vals) if vals else None


@claim_kind("ratio", PAIRING)
def _ratio(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    pair = paired(claim, runs)
    if isinstance(pair, str):
        return Verdict(None, INCONCLUSIVE, pair)
    a, b = pair
    rel = a / b - 1
    m = claim["_margin"]["value"]
    verdicts = []
    on = [n for n in rel.index.names if n != REPLICATE]
    for key, v in rel.groupby(level=on):
        verdicts.append((key, equivalence(v.to_numpy(float), m, "a / b - 1")))
    worst = max(verdicts, key=lambda kv: max(abs(x) for x in (kv[1].interval or (kv[1].ksir, kv[1].ksir))))
    if any(v.verdict == FAILS for _, v in verdicts):
        verdict = FAILS
    elif all(v.verdict == HOLDS for _, v in verdicts):
        verdict = HOLDS
    else:
        verdict = INCONCLUSIVE
    held = sum(v.verdict == HOLDS for _, v in verdicts)
    at = worst[0][0] if isinstance(worst[0], tuple) and len(worst[0]) == 1 else worst[0]
    return Verdict(worst[1].ksir, verdict, f"{held} of {len(verdicts)} paired sizes inside (-{m:g}, {m:g}); the "
                   f"widest, {'/'.join(on) if on else 'pair'}={at}: {worst[1].reason}", interval=worst[1].interval,
                   level=EQUIVALENCE_LEVEL, replicates=worst[1].replicates)


@claim_kind("gap_closed", (*PAIRING, "base", "ref", "min"))
def _gap_closed(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    got = paired(claim, runs, ("a", "base", "ref"))
    if isinstance(got, str):
        return Verdict(None, INCONCLUSIVE, got)
    a, base, ref = got
    per_seed = pd.DataFrame({"a": a, "base": base, "ref": ref}).groupby(level=0).mean()
    gap = per_seed["base"] - per_seed["ref"]
    if (gap <= 0).all():
        return Verdict(None, INCONCLUSIVE, f"base is no worse than ref in any seed ({gap.mean():+.4g}): there is no gap "
                       "to close")
    share = ((per_seed["base"] - per_seed["a"]) / gap).to_numpy(float)  # per seed, a ratio of means over sizes
    v = superiority(share, {**claim, "direction": "higher", "_margin": {"value": float(claim["min"])}},
                    "share of the gap closed")
    v.extra = {"mean_gap": float(gap.mean())}
    return v


@claim_kind("correlation", ("x", "y"))
def _correlation(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """Pearson r between two run columns, its 90% interval (Fisher z) inside the paper's value +- margin."""
    x, y = claim["x"], claim["y"]
    if x not in runs or y not in runs:
        return Verdict(None, INCONCLUSIVE, f"not measurable here: the runs have no {y if x in runs else x} column")
    d = runs[[x, y]].apply(pd.to_numeric, errors="coerce").dropna()
    if len(d) < 4 or d[x].nunique() < 2 or d[y].nunique() < 2:
        return Verdict(None, INCONCLUSIVE, f"not measurable here: {len(d)} runs with both {x} and {y}")
    from scipy import stats

    r = float(d[x].corr(d[y]))
    z, se = math.atanh(max(min(r, 0.999999), -0.999999)), 1 / math.sqrt(len(d) - 3)
    q = stats.norm.ppf(0.5 + EQUIVALENCE_LEVEL / 2)
    ci = (math.tanh(z - q * se), math.tanh(z + q * se))
    return _equivalence_ci(r, ci, claim["_margin"]["value"], f"r over {len(d)} runs", float(claim["paper"]), None)


@claim_kind("bound", ("where", "column", "min", "max", "at", "per"))
def _bound(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """A deterministic run column (bytes as stored, packed minus simulated loss on the same tokens): measured
    exactly, so every selected run inside [min, max] holds and any outside fails."""
    col = claim["column"]
    sel = _select(runs, claim.get("where") or {})
    if col not in sel or sel.empty:
        return Verdict(None, INCONCLUSIVE, f"not measurable here: no run of {dict(claim.get('where') or {})} has {col!r}")
    sel = sel.assign(_v=pd.to_numeric(sel[col], errors="coerce")).dropna(subset=["_v"])
    per = list(claim.get("per") or [])
    if claim.get("at") == "largest" and "n_params" in sel:
        sel = sel[sel["n_params"] == sel.groupby(per)["n_params"].transform("max")] if per else \
            sel[sel["n_params"] == sel["n_params"].max()]
    if sel.empty:
        return Verdict(None, INCONCLUSIVE, f"not measurable here: no finite {col!r} in the selection")
    lo, hi = claim.get("min"), claim.get("max")
    v = sel["_v"]
    excess = pd.concat([float(lo) - v if lo is not None else v * 0 - float("inf"),
                        v - float(hi) if hi is not None else v * 0 - float("inf")], axis=1).max(axis=1)
    worst = float(v.loc[excess.idxmax()])
    bad = sel[excess > 0]
    rule = " and ".join(x for x in (f">= {lo}" if lo is not None else "", f"<= {hi}" if hi is not None else "") if x)
    where = f"{len(sel)} runs" + (" (largest model of each group)" if claim.get("at") == "largest" else "")
    if bad.empty:
        return Verdict(worst, HOLDS, f"all {where} have {col} {rule} (range {v.min():.4g}..{v.max():.4g}; measured "
                       "exactly, no interval needed)", interval=(float(v.min()), float(v.max())))
    row = sel.loc[excess.idxmax()]
    label = ", ".join(f"{c}={row[c]}" for c in [*per, "size"] if c in sel) or f"run {row.name}"
    return Verdict(worst, FAILS, f"{len(bad)} of {where} outside {rule} (range {v.min():.4g}..{v.max():.4g}; "
                   f"worst {label}: {worst:.4g})", interval=(float(v.min()), float(v.max())))


def _measured_choice(claim: Mapping[str, Any], runs: pd.DataFrame, choose: Callable[[pd.DataFrame], Any],
                     what: str) -> Verdict:
    """An exact choice (k*, best scheme) from the seed-mean measured curves, and the share of seed resamples
    (drawn jointly for every configuration: the design is paired) whose choice is the paper's."""
    sel = _select(runs, claim.get("where") or {}).assign(_seed=lambda d: _replicates(d))
    if sel.empty:
        return Verdict(None, INCONCLUSIVE, f"not measurable here: no runs of {dict(claim.get('where') or {})}")
    seeds = sorted(sel["_seed"].unique())
    point = choose(sel)
    if point is None:
        return Verdict(None, INCONCLUSIVE, "not measurable here: no measured budget compares two or more curves")
    agree = sum(n * _same(choose(_resample(sel, draw)), claim["paper"])
                for draw, n in (seed_resamples(seeds).items() if len(seeds) > 1 else []))
    share = agree / N_RESAMPLES if len(seeds) > 1 else float(_same(point, claim["paper"]))
    return exact_share(share, point, claim, what, len(seeds))


def _same(a: Any, b: Any) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(b) in str(a)


def _interpolated_best(sel: pd.DataFrame, metric: str, key: list[str], budgets: str | None) -> list[Any]:
    """Per measured budget (25 log-spaced totals in the selection's range), the curve (`key`) with the lowest
    metric, each curve interpolated in log total bits inside its own range; budgets where fewer than two curves
    reach are skipped. Seed-mean curves (replicates averaged per configuration)."""
    curves = {}
    for k, g in sel.groupby(key):
        k = k[0] if isinstance(k, tuple) and len(k) == 1 else k
        g = g.groupby("total_bits")[metric].mean().sort_index()
        if len(g) >= 2:
            curves[k] = (np.log(g.index.to_numpy(float)), g.to_numpy(float))
    if len(curves) < 2:
        return []
    lo = min(c[0][0] for c in curves.values())
    hi = max(c[0][-1] for c in curves.values())
    out = []
    for b in np.linspace(lo, hi, 25):
        vals = {k: float(np.interp(b, *c)) for k, c in curves.items() if c[0][0] <= b <= c[0][-1]}
        if len(vals) >= 2:
            out.append(min(vals, key=vals.get))
    if budgets == "low":
        out = out[: max(1, len(out) // 2)]
    return out


@claim_kind("optimal_k", ("where", "budgets", "budget", "metric"))
def _optimal_k(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """The most frequent best k over the measured budgets of the claim's own curves (model-free: each k's
    measured curve interpolated, as Dettmers & Zettlemoyer compared precisions), exactly the paper's."""
    metric = claim.get("metric", "val_loss")
    if claim.get("budget", "total_bits") != "total_bits":
        runs = runs.assign(total_bits=pd.to_numeric(runs.get("measured_bytes"), errors="coerce") * 8).dropna(
            subset=["total_bits"])

    def choose(d: pd.DataFrame) -> float | None:
        best = _interpolated_best(d, metric, ["bits"], claim.get("budgets"))
        return float(pd.Series(best).mode().min()) if best else None

    v = _measured_choice(claim, runs, choose, "most frequent best k over the measured budgets")
    contradicted = [r for r in (report.get("headline") or {}).get("rows", []) if r.get("contradicted_by")]
    if contradicted:
        v.reason += f"; the fit's answer is contradicted at {len(contradicted)} budgets (see report.md)"
    return v


@claim_kind("best_scheme", ("where", "budgets", "schemes", "metric"))
def _best_scheme(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """The scheme (each at its best k: the lower envelope of its measured curves) that wins most measured
    budgets; holds when its label contains the paper's."""
    metric = claim.get("metric", "val_loss")
    cols = [c for c in claim.get("schemes", ["regime", "lowrank_mode", "lowrank_rank", "method"]) if c in runs]

    def choose(d: pd.DataFrame) -> str | None:
        d = d.assign(_scheme=[",".join(map(str, t)) for t in d[cols].itertuples(index=False)] if cols else "all")
        d = d[~((d["bits"] == REFERENCE_BITS) & ~d["_scheme"].str.contains("factorize"))] if "bits" in d else d
        curves = {}
        for (s, _k), g in d.groupby(["_scheme", "bits"]):
            g = g.groupby("total_bits")[metric].mean().sort_index()
            if len(g) >= 2:
                curves.setdefault(s, []).append((np.log(g.index.to_numpy(float)), g.to_numpy(float)))
        if len(curves) < 2:
            return None
        lo = min(c[0][0] for cs in curves.values() for c in cs)
        hi = max(c[0][-1] for cs in curves.values() for c in cs)
        wins = []
        for b in np.linspace(lo, hi, 25):
            env = {s: min(float(np.interp(b, *c)) for c in cs if c[0][0] <= b <= c[0][-1]) for s, cs in curves.items()
                   if any(c[0][0] <= b <= c[0][-1] for c in cs)}
            if len(env) >= 2:
                wins.append(min(env, key=env.get))
        if claim.get("budgets") == "low":
            wins = wins[: max(1, len(wins) // 2)]
        return str(pd.Series(wins).value_counts().index[0]) if wins else None

    return _measured_choice(claim, runs, choose, "the scheme winning most measured budgets")


@claim_kind("lr_transfer", ("where", "per", "x", "metric"))
def _lr_transfer(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """One learning rate for every size: the shared rate with the smallest worst penalty against each size's
    own best (seed-mean curves), and that penalty's interval over seed resamples, below the margin."""
    x, metric, per = claim.get("x", "lr"), claim.get("metric", "val_loss"), claim.get("per", "size")
    sel = _select(runs, claim.get("where") or {})
    if sel.empty or x not in sel or per not in sel:
        return Verdict(None, INCONCLUSIVE, f"not measurable here: no runs of {dict(claim.get('where') or {})} with "
                       f"{x!r} and {per!r}")
    sel = sel.assign(_x=pd.to_numeric(sel[x], errors="coerce"), _y=pd.to_numeric(sel[metric], errors="coerce"),
                     _seed=_replicates(sel)).dropna(subset=["_x", "_y"])

    def penalty(d: pd.DataFrame) -> tuple[float, float, pd.Series, pd.DataFrame] | None:
        grid = d.groupby([per, "_x"])["_y"].mean().unstack(per).dropna()
        if grid.shape[1] < 2 or grid.shape[0] < 3:
            return None
        pen = (grid - grid.min()).max(axis=1)
        return float(pen.min()), float(pen.idxmin()), grid.idxmin(), grid

    got = penalty(sel)
    if got is None:
        return Verdict(None, INCONCLUSIVE, "not measurable here: needs >= 3 rates swept at >= 2 sizes")
    worst, shared, best, grid = got
    seeds = sorted(sel["_seed"].unique())
    draws = []
    for draw, n in seed_resamples(seeds).items() if len(seeds) > 1 else []:
        r = penalty(_resample(sel, draw))
        if r is not None:
            draws += [r[0]] * n
    m = claim["_margin"]["value"]
    shift = math.log2(float(best.max()) / float(best.min()))
    detail = (f"best rate per {per}: " + ", ".join(f"{c} {best[c]:.3g}" for c in grid.columns)
              + f" (moves {shift:.2g} octaves over {len(grid)} rates); the shared rate {shared:.3g} costs at most "
              f"{worst:.4g} nats")
    edge = [str(c) for c in grid.columns if best[c] in (grid.index.min(), grid.index.max())]
    if edge:
        return Verdict(worst, INCONCLUSIVE, f"the optimum of {', '.join(edge)} is at the edge of the swept rates; "
                       + detail, replicates=len(seeds))
    if len(draws) < 2:
        return Verdict(worst, INCONCLUSIVE, detail + f"; {len(seeds)} seed(s): no interval", replicates=len(seeds))
    ci = (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)))
    below, above = ci[1] < m, ci[0] > m
    if claim.get("direction", "lower") == "higher":  # the claim is that no rate transfers
        below, above = above, below
    verdict = HOLDS if below else FAILS if above else INCONCLUSIVE
    return Verdict(worst, verdict, detail + f"; 95% CI of that penalty [{ci[0]:.4g}, {ci[1]:.4g}] over seed resamples "
                   f"against {m:g}", interval=ci, level=SUPERIORITY_LEVEL, replicates=len(seeds))


@claim_kind("composition", ("where", "metric"))
def _composition(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """Kumar et al.: the precisions' effects compose (N_eff is a product of one factor per precision). Per seed,
    their law fitted on that seed's single-axis runs (`analysis.compose`) predicts the seed's mixed runs; the
    mean absolute relative error per seed, its t interval over seeds, below the declared margin. Where a seed's
    fit is unidentified, the error is reported but not judged (inconclusive, naming why)."""
    from analysis.compose import mixed_holdout
    from analysis.fit import FitError
    from analysis.settings import FitSettings

    if claim.get("_margin") is None:
        return Verdict(None, INCONCLUSIVE, "a composition claim needs a declared margin (margin: <name>)")
    metric = claim.get("metric", "val_loss")
    sel = _select(runs, claim.get("where") or {})
    if sel.empty:
        return Verdict(None, INCONCLUSIVE, f"not measurable here: no runs of {dict(claim.get('where') or {})}")
    seeds = _replicates(sel)
    errors, unidentified = [], {}
    for seed in sorted(seeds.unique()):
        try:
            held = mixed_holdout(sel[seeds == seed], metric, FitSettings(n_boot=0))
        except FitError as e:
            return Verdict(None, INCONCLUSIVE, f"not measurable here: seed {seed}: {e}")
        errors.append(held["mean_abs_rel_error"])
        fit_verdict = held["fit"].get("verdict") or {}
        if fit_verdict.get("status") == "unidentified":
            for why in fit_verdict.get("reasons") or ["unidentified"]:
                unidentified.setdefault(why, []).append(seed)
    m = claim["_margin"]["value"]
    point, what = float(np.mean(errors)), "mean |relative error| of the mixed runs predicted from single-axis runs"
    ci = t_interval(np.array(errors), SUPERIORITY_LEVEL)
    if ci is None:
        return Verdict(point, INCONCLUSIVE, f"{what} = {point:.4g} from {len(errors)} seed: no interval (needs >= 2 "
                       "seeds)", replicates=len(errors))
    measured = f"{what} = {point:.4g}, 95% CI [{ci[0]:.4g}, {ci[1]:.4g}] over {len(errors)} seeds"
    if unidentified:  # an error from a law the seed's runs cannot identify says nothing about composing
        why = "; ".join(f"{w} (seed {', '.join(map(str, s))})" for w, s in unidentified.items())
        verdict, reason = INCONCLUSIVE, f"{measured}, not judged: the law fitted on the single-axis runs is unidentified: {why}"
    else:
        verdict = HOLDS if ci[1] < m else FAILS if ci[0] > m else INCONCLUSIVE
        reason = f"{measured} (claim: < {m:g})"
    return Verdict(point, verdict, reason, interval=ci, level=SUPERIORITY_LEVEL, replicates=len(errors))


def run_flops(runs: pd.DataFrame) -> float:
    """The compute a set of post-training runs stands for: each distinct base model (size, seed) trained once
    (6 N D) and each run's evaluation (2 N per evaluated token); machine-independent, so a claim on it
    reproduces anywhere."""
    n = pd.to_numeric(runs["n_params"], errors="coerce")
    bases = runs.assign(_n=n, _d=pd.to_numeric(runs["train_tokens"], errors="coerce")).drop_duplicates(
        ["size", REPLICATE] if REPLICATE in runs else ["size"])
    train = float((6 * bases["_n"] * bases["_d"]).sum())
    return train + float((2 * n * pd.to_numeric(runs["eval_tokens"], errors="coerce")).sum())


@claim_kind("plan_reach", ("where", "budget_bits", "share", "bootstrap", "seed"))
def _plan_reach(claim: Mapping[str, Any], report: Mapping[str, Any], runs: pd.DataFrame) -> Verdict:
    """ksir-plan's loop against the grid. The runs carry `plan_round` (0: the loop's starting runs, r: chosen in
    round r, empty: run by the grid only). The grid's k* at `budget_bits` is the best k of most bootstrap
    replicates of its per-k laws (`analysis.plan`, the fits ksir-plan itself makes); the loop reaches it when
    >= `share` of its own fit's replicates agree. Measured: the loop's compute when it first reaches the answer
    over the grid's (`run_flops`), against the declared margin. FLOPs are exact; the replicates' share carries
    the fits' uncertainty, so there is no interval."""
    from analysis.plan import best_k, fit_bits

    if claim.get("_margin") is None:
        return Verdict(None, INCONCLUSIVE, "a plan_reach claim needs a declared margin (margin: <name>)")
    sel = _select(runs, claim.get("where") or {})
    if sel.empty or "plan_round" not in sel:
        return Verdict(None, INCONCLUSIVE, "not measurable here: the runs have no plan rounds (plan_round)")
    budget, need = float(claim["budget_bits"]), float(claim.get("share", AGREE))
    n_boot, seed = int(claim.get("bootstrap", 200)), int(claim.get("seed", 0))
    replicates = int(sel[REPLICATE].nunique()) if REPLICATE in sel else 1
    if replicates < 2:  # the planner's noise model and the fits' replicates need seed-to-seed scatter
        return Verdict(None, INCONCLUSIVE, f"{replicates} seed: needs >= 2 seeds (the loop's noise is the seeds' "
                       "scatter)", replicates=replicates)

    def answer(d: pd.DataFrame) -> tuple[np.ndarray, dict] | tuple[None, dict]:
        try:
            _, fits, reps = fit_bits(d, n_boot, seed)
        except ValueError:
            return None, {}
        return best_k(fits, reps, budget), fits

    grid, grid_fits = answer(sel)
    if grid is None:
        return Verdict(None, INCONCLUSIVE, "not measurable here: the grid's runs fit no per-k laws")
    unidentified = [f"{k:g}" for k, f in sorted(grid_fits.items()) if f.verdict().get("status") == "unidentified"]
    flag = (f"; flagged: the grid's per-k laws at k = {', '.join(unidentified)} are unidentified, so the replicates' "
            "agreement is the planner's criterion, not an answer the data pin down") if unidentified else ""
    values, counts = np.unique(grid, return_counts=True)
    k_grid, grid_share = float(values[np.argmax(counts)]), float(counts.max() / len(grid))
    grid_flops = run_flops(sel)
    rounds = pd.to_numeric(sel["plan_round"], errors="coerce")
    path, reached = [], None
    for r in sorted(rounds.dropna().unique()):
        sub = sel[rounds <= r]
        ks, _ = answer(sub)
        share = float(np.mean(ks == k_grid)) if ks is not None else 0.0
        path.append({"round": int(r), "runs": len(sub), "flops": run_flops(sub), "share": share})
        if reached is None and share >= need:
            reached = path[-1]
    trail = "; ".join(f"round {p['round']}: {p['runs']} runs, {p['flops'] / grid_flops:.0%} of the grid's FLOPs, "
                      f"{p['share']:.0%} agree" for p in path)
    head = (f"the grid ({len(sel)} runs, {grid_flops:.3g} FLOPs) gives k* = {k_grid:g} at {budget:g} bits in "
            f"{grid_share:.0%} of {len(grid)} replicates")
    extra = {"path": path, "k_grid": k_grid, "grid_share": grid_share, "grid_flops": grid_flops}
    if grid_share < need:
        return Verdict(None, INCONCLUSIVE, f"{head}: the grid itself does not settle the answer (needs {need:.0%}); "
                       + trail + flag, replicates=replicates, extra=extra)
    m = claim["_margin"]["value"]
    if reached is None:
        last = path[-1]["flops"] / grid_flops if path else float("nan")
        return Verdict(None, FAILS, f"{head}; the planned runs never reach {need:.0%} agreement ({trail}; "
                       f"{last:.0%} of the grid's FLOPs spent){flag}", replicates=replicates, extra=extra)
    ratio = reached["flops"] / grid_flops
    verdict = HOLDS if ratio <= m else FAILS
    return Verdict(ratio, verdict, f"{head}; the planned runs reach it at round {reached['round']} with "
                   f"{ratio:.3g} of the grid's FLOPs (claim: <= {m:g}): {trail}{flag}", replicates=replicates,
                   extra=extra)
