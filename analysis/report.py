"""Runs -> fits -> optimal k -> report (JSON + Markdown) and figures: what `ksir-fit` does."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import compose, design, headline, ladder, memory, optimal, plot, support
from analysis.collect import Collected
from analysis.design import SCHEME_COLS
from analysis.fit import FitError, FitResult, Unidentified, fit_laws
from analysis.headline import Candidate
from analysis.laws import Law, get_law
from analysis.settings import REFERENCE_BITS, FitSettings


def attach_baselines(df: pd.DataFrame, reference: float = REFERENCE_BITS, replicate: str | None = None,
                     base: tuple[str, ...] = ()) -> pd.DataFrame:
    """`analysis.design.attach_baselines` without the join account (the Python API's old name)."""
    return design.attach_baselines(df, reference, replicate, base)[0]


def curve_keys(df: pd.DataFrame) -> list[str]:
    """k, plus every scheme column that varies in the data (so each curve is one scheme at one k)."""
    return ["bits"] + [c for c in SCHEME_COLS if c in df and df[c].astype(str).nunique() > 1]


NOT_SET = "-"  # a scheme field a run does not have (blocksize of a per-channel run, lowrank of a plain one)


def fill_scheme_gaps(df: pd.DataFrame) -> pd.DataFrame:
    """Missing scheme fields as NOT_SET, so that grouping by the curve keys keeps those runs (pandas drops
    NaN groups): a per-channel run (no block size) is a curve of its own, not silently left out."""
    df = df.copy()
    for c in ("act_bits", "kv_bits"):  # a precision left out is the reference precision: a number, not a gap
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce").fillna(float(REFERENCE_BITS))
    for c in SCHEME_COLS:
        if c in df and df[c].isna().any():
            df[c] = df[c].astype(object).where(df[c].notna(), NOT_SET)
    return df


def _key(v: Any) -> tuple:
    return v if isinstance(v, tuple) else (v,)


def _describe(df: pd.DataFrame, metric: str) -> str:
    parts = [f"{metric} of {len(df)} runs"]
    if "family" in df and df["family"].notna().any():
        parts.append("family " + ",".join(sorted(df["family"].dropna().astype(str).unique())))
    if "n_params" in df:
        parts.append(f"{df['n_params'].nunique()} model sizes")
    if "train_tokens" in df and df["train_tokens"].nunique() > 1:
        parts.append(f"{df['train_tokens'].nunique()} token counts")
    if "bits" in df and df["bits"].notna().any():
        parts.append("k in {" + ", ".join(f"{k:g}" for k in sorted(df["bits"].dropna().unique())) + "}")
    return ", ".join(parts)


NUMERIC = ("bits", "total_bits", "n_params", "train_tokens")


def _fit_groups(df: pd.DataFrame, law: Law, keys: list[str], metric: str, cand_name: str, report: dict[str, Any],
                st: FitSettings) -> Candidate:
    """One fit of `law` per group of `keys` (all runs when keys is empty), solved together, as a candidate."""
    keys = [k for k in keys if k not in law.absorbs]
    groups = {_key(k): g for k, g in df.groupby(keys, sort=True)} if keys else {(): df}
    if "_row" in df:  # a baseline copied into several schemes that one group merges is one run in its fit
        groups = {k: g.drop_duplicates("_row") for k, g in groups.items()}
    labels = {k: dict(zip(keys, map(_plain, k), strict=True)) for k in groups}
    cand = Candidate(cand_name, {})
    for key, res in fit_laws(groups, law, metric, st, labels=labels).items():
        if isinstance(res, FitError):
            tag = ",".join(map(str, key))
            (cand.unidentified if isinstance(res, Unidentified) else cand.skipped).append(
                f"{tag}: {res}" if tag else str(res))
            report["skipped_curves"].append({"curve" if law.per_k else "law": labels[key] or cand_name,
                                             "reason": str(res), "unidentified": isinstance(res, Unidentified)})
        else:
            cand.fits[key] = res
    return cand


def _precision_columns(df: pd.DataFrame, reference: float) -> pd.DataFrame:
    """Forward and backward precision for Quartet's law where a table gives one `bits` column: QAT trains both
    at k, PTQ (and any run not trained by QAT) has a 16-bit backward."""
    if "bits" not in df or ("fwd_bits" in df and "bwd_bits" in df):
        return df
    df = df.copy()
    qat = df["regime"].astype(str).isin(["qat", "qat-finetune"]) if "regime" in df else \
        pd.Series(False, index=df.index)
    if "fwd_bits" not in df:
        df["fwd_bits"] = df["bits"]
    if "bwd_bits" not in df:
        df["bwd_bits"] = np.where(qat, df["bits"], reference)
    return df


def _paired_laws(raw: pd.DataFrame, laws: list[Law], metric: str, scheme_keys: list[str], rep: str | None,
                 st: FitSettings, report: dict[str, Any]) -> None:
    """Degradation laws on paired differences: each post-training-quantized run minus its base model's
    baseline. Differences at or below 0 (quantization noise that did not hurt) cannot enter a log-space fit:
    they are left out and counted."""
    paired = [law for law in laws if law.paired]
    if not paired:
        return
    ptq = raw
    if "regime" in raw:
        ptq = raw[raw["regime"].astype(str).isin(["ptq", "nan", "None", NOT_SET])
                  | design.is_reference(raw, st.reference)]
    diffs, lonely = design.paired_differences(ptq, metric, st.reference, rep, st.base)
    dm = f"delta_{metric}"
    report["paired"] = {"metric": dm, "n_pairs": int(len(diffs)), "unpaired": lonely,
                        "not_positive": int((diffs[dm] <= 0).sum()) if len(diffs) else 0}
    pos = diffs[diffs[dm] > 0] if len(diffs) else diffs
    keys = [k for k in scheme_keys if k in pos and k != "regime"]
    for law in paired:
        name = law.name
        if pos.empty:
            report["skipped_curves"].append({"law": name, "reason": "no quantized run has a baseline of its base model "
                                             f"at k={st.reference:g} with a positive difference", "unidentified": True})
            continue
        cand = _fit_groups(pos, law, keys, dm, name, report, st)
        for key, f in cand.fits.items():
            s = f.summary()
            if report["paired"]["not_positive"]:
                s["warnings"].append(f"{report['paired']['not_positive']} paired difference(s) <= 0 left out of "
                                     "this log-space fit (quantization did not raise the loss measurably there)")
            report["laws"][name + ("" if not keys else "[" + ",".join(map(str, key)) + "]")] = s


def _replicate_spread(df: pd.DataFrame, metric: str, rep: str | None, fits: dict[tuple, FitResult]) -> list[dict]:
    """Per configuration with several replicates: their mean, standard deviation and range, next to the
    per-k law's mean residual at that configuration (log space)."""
    if rep is None or "_config" not in df:
        return []
    resid: dict[Any, list[float]] = {}
    for f in {id(f): f for f in fits.values()}.values():
        if f.clusters is not None and f.residuals is not None:
            for c, r in zip(f.clusters.tolist(), f.residuals.tolist(), strict=True):
                resid.setdefault(c, []).append(r)
    out = []
    for cfg, g in df.drop_duplicates("_row").groupby("_config"):
        if g[rep].nunique() < 2:
            continue
        y = g[metric].to_numpy(float)
        first = g.iloc[0]
        out.append({"curve": curve_label_of(first), "n_params": _plain(first.get("n_params")),
                    "replicates": int(len(y)), rep + "s": sorted(map(_plain, g[rep].unique())), "mean": float(y.mean()),
                    "sd": float(y.std(ddof=1)), "range": float(np.ptp(y)),
                    "fit_residual": float(np.mean(resid[cfg])) if cfg in resid else None})
    return out


def curve_label_of(row: pd.Series) -> str:
    parts = [f"k={_plain(row['bits']):g}" if "bits" in row else ""]
    parts += [f"{c}={row[c]}" for c in SCHEME_COLS if c in row and str(row[c]) not in ("-", "none", "nan", "None")]
    return " ".join(p for p in parts if p)


def analyse(collected: Collected, out_dir: str | Path, *, metric: str = "val_loss", laws: tuple[str, ...] = (),
            settings: FitSettings | None = None, figures: bool = True, acc_metric: str = "zs_acc_mean",
            predict: tuple[dict[str, float], ...] = (), budget: str = "total_bits",
            user_laws: tuple[Law, ...] = ()) -> dict[str, Any]:
    """Everything `ksir-fit` does: choose and fit the laws the columns support, compare them, answer the
    question the table asks (headline first), fit accuracy from loss, write fit.json, report.md, figures."""
    st = settings or FitSettings()
    df = collected.runs.copy()
    if df.empty:
        raise FitError("no runs left to fit (all were left out or none matched the filters)")
    if metric not in df:
        raise FitError(f"runs have no {metric!r} column (columns: {', '.join(sorted(map(str, df.columns))[:30])}); "
                       f"pick one with --metric or map yours with --map theirs={metric}")
    for c in (*NUMERIC, "act_bits", "kv_bits", "fwd_bits", "bwd_bits", metric):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    missing_base = [c for c in st.base if c not in df]
    if missing_base:
        raise FitError(f"--base: the runs have no column(s) {missing_base} (columns: "
                       f"{', '.join(sorted(map(str, df.columns))[:30])})")
    extra = {law.name: law for law in user_laws}
    names = support.laws_for(df, laws, metric, extra)  # one-line errors before any fit
    q = support.question(df)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "runs.csv", index=False)
    n_runs, desc = len(df), _describe(df, metric)
    if budget == "measured_bytes":
        desc += "; memory axis = measured bytes x 8 of packed models, not the formula"
    if budget == "inference":
        tokens = (df["kv_total_bits"] / pd.to_numeric(df["kv_bits_per_token"])).median()
        desc += (f"; memory axis = weights + KV cache of {tokens:.0f} tokens (context x batch): curves per "
                 "(weights scheme, kv_bits)")
    rep = design.replicate_column(df, st.replicate)
    df = _precision_columns(design.label(df, rep, st.base), st.reference)
    raw, joins = df, []
    if q == "bits":
        df, joins = design.attach_baselines(df, st.reference, rep, st.base)
        df = fill_scheme_gaps(df)
    keys = curve_keys(df) if q == "bits" else []
    report: dict[str, Any] = {"metric": metric, "n_runs": int(n_runs), "description": desc, "question": q,
                              "left_out": collected.skipped, "curve_keys": keys, "laws_fitted": names,
                              "settings": {**st.as_dict(), "replicate": rep}, "baselines": joins,
                              "laws": {}, "skipped_curves": [], "figures": [], "budget": budget,
                              "memory": memory.table(df)}

    def law_of(name: str) -> Law:
        return extra.get(name) or get_law(name)

    cands: list[Candidate] = []
    fits: dict[tuple, FitResult] = {}
    if "power_bits" in names:
        per_k = _fit_groups(df, law_of("power_bits"), keys, metric, "power_bits", report, st)
        fits = per_k.fits
        report["laws"]["power_bits"] = [f.summary() for f in fits.values()]
        cands.append(per_k)
    scheme_keys = [k for k in keys if k != "bits"]
    joint: dict[str, FitResult] = {}
    for name in names:
        law = law_of(name)
        if law.per_k or law.paired:
            continue
        cand = _fit_groups(df, law, scheme_keys if q == "bits" else [], metric, name, report, st)
        if law.headline and law.space == "log":
            cands.append(cand)
        for key, f in cand.fits.items():
            tag = name + ("" if not key else "[" + ",".join(map(str, key)) + "]")
            joint[tag] = f
            s = f.summary()
            if f.ctx.get("eff_ks"):
                s["efficiency"] = _efficiency_table(f)
            report["laws"][tag] = s
    _paired_laws(raw, [law_of(n) for n in names], metric, scheme_keys, rep, st, report)
    if not any(c.fits for c in cands) and not any(report["laws"].values()):
        raise FitError("no law could be fitted: " + "; ".join(s["reason"] for s in report["skipped_curves"]))
    report["replicates"] = _replicate_spread(raw, metric, rep, fits)
    if "precision_multi" in names and (compose.low_precisions(raw, st.reference) >= 2).any():
        try:  # do the precisions compose? N_eff from single-axis runs, tested on the mixed ones
            report["composition"] = compose.mixed_holdout(raw, metric, st)
        except FitError as e:
            report["composition"] = {"error": str(e)}

    # The answer, per budget, from the law that earns it.
    per_k_rows, continuous = [], {}
    if q == "bits":
        budgets = optimal.budget_grid(df, extrapolate=st.extrapolate)
        interp = optimal.interpolated_optimum(df, metric, keys, budgets)
        curves = headline.curves_of(df, keys)
        report["headline"] = headline.bits_headline(cands, curves, budgets, df["total_bits"].max(), interp,
                                                    headline.token_policy(df), st.trust_without_heldout)
        if fits:
            per_k_rows = optimal.per_k_optimum(fits, budgets, df["total_bits"].max())
            for row, irow in zip(per_k_rows, interp, strict=True):
                row["best_interpolated"] = irow["best"]
                row["law_agrees_with_data"] = (irow["best"] == row["best"]) if row["best"] in irow["interpolated"] \
                    and irow["best"] is not None else None
                row["contradicted_by"] = ["interpolated data"] if row["law_agrees_with_data"] is False else []
                row["interpolated"] = irow["interpolated"]
            report["scheme_frontiers"] = optimal.scheme_frontiers(fits, keys[1:], budgets, df["total_bits"].max(),
                                                                  interp)
        overhead = optimal.bits_overhead(df)
        for tag, f in joint.items():
            if "bits" in f.law.columns and f.law.headline and not f.law.optional:
                tokens = float(df["train_tokens"].median()) if "train_tokens" in df and df["train_tokens"].notna().any() \
                    else None
                swept = [*f.ctx["eff_ks"], st.reference] if "eff_ks" in f.ctx else None  # eff(k) at swept k only
                continuous[tag] = optimal.continuous_optimum(f, budgets, (max(1.0, float(df["bits"].min())), st.reference),
                                                             overhead, tokens, ks=swept)
        report["optimal_continuous"] = {"bits_overhead_per_param": overhead, **continuous}
    elif q == "compute":
        report["headline"] = headline.compute_headline(cands, df, st.extrapolate, st.trust_without_heldout)
    else:
        report["headline"] = headline.size_headline(cands, df, st.extrapolate, st.trust_without_heldout)
    report["optimal"] = per_k_rows

    # Accuracy from loss (scaling-ladder two-step), when accuracy was measured.
    if acc_metric in df and acc_metric != metric and df[acc_metric].notna().sum() >= 5:
        report["accuracy"] = ladder.analyse(df, cands, report["headline"], metric, acc_metric, keys, st)
    if predict:
        report["predictions"] = ladder.forecast(df, cands, report["headline"], metric, acc_metric, st, predict)

    if figures:
        report["figures"] = _figures(df, metric, keys, fits, per_k_rows, continuous, out, desc, st.extrapolate,
                                     report, cands)
    (out / "fit.json").write_text(json.dumps(_jsonable(report), indent=2))
    (out / "report.md").write_text(markdown(report))
    return report


def _efficiency_table(f: FitResult) -> list[dict[str, Any]]:
    ci = f.intervals()
    ref = float(f.ctx.get("reference", REFERENCE_BITS))
    rows = [{"k": ref, "eff": 1.0, "eff_per_bit": 1 / ref}]
    for k in f.ctx["eff_ks"]:
        name = f"log_eff_{k:g}"
        e = math.exp(f.params[name])
        row = {"k": k, "eff": e, "eff_per_bit": e / k}
        if name in ci:
            row.update(eff_ci95=tuple(math.exp(v) for v in ci[name]),
                       eff_per_bit_ci95=tuple(math.exp(v) / k for v in ci[name]))
        rows.append(row)
    return sorted(rows, key=lambda r: r["k"])


def _figures(df: pd.DataFrame, metric: str, keys: list[str], fits: dict, per_k: list, continuous: dict,
             out: Path, desc: str, extrapolate: float, report: dict[str, Any], cands: list[Candidate]) -> list[str]:
    q, h = report["question"], report["headline"]
    if q == "compute":
        fit = next(c for c in cands if c.name == h["shown"]).fits[()]
        return plot.compute_optimal(h["rows"], df, out / "compute_optimal", desc, law_label=plot.describe_law([fit]),
                                    interval_label=plot.describe_intervals([fit]))
    if q == "size":
        fit = next(c for c in cands if c.name == h["shown"]).fits[()]
        return plot.curves(df.assign(_curve="all"), metric, ["_curve"], out / "size_scaling",
                           f"{metric} vs parameters", desc, fits={("all",): fit}, extrapolate=extrapolate,
                           x="n_params")
    if not fits:
        return []
    xlabel = plot.budget_label(report.get("budget", "total_bits"))
    files = plot.curves(df, metric, keys, out / "bit_scaling", "Bit-level scaling: one curve per bit-width k",
                        desc, fits=fits, extrapolate=extrapolate, xlabel=xlabel)
    trusted = next((c for c in cands if c.name == h["trusted"]), None)
    if trusted is not None and trusted.fits and next(iter(trusted.fits.values())).law.per_k:
        source, rows = "per-k power laws (trusted)", per_k
        interval = plot.describe_intervals(fits.values(), "intervals")
    else:  # the headline's own answer: a joint law's, or the interpolated data where no law is usable
        source = f"{trusted.name} (trusted)" if trusted is not None else "interpolated data (no law usable)"
        rows = [{"budget_bits": r["budget_bits"], "best_k": np.nan if r["best_k"] is None else r["best_k"],
                 "extrapolated": r["extrapolated"], **({"best_k_ci95": r["k_ci95"]} if r.get("k_ci95") else {})}
                for r in h["rows"]]
        interval = plot.describe_intervals(trusted.fits.values(), "intervals") if trusted is not None \
            else "no intervals (measured curves interpolated)"
    # k* of a joint law only where that law is the trusted one (never a curve from a law the data reject).
    cont_tag = next((t for t in continuous if trusted is not None and t.split("[")[0] == trusted.name), None)
    files += plot.optimal_k(rows, continuous.get(cont_tag), out / "optimal_k", desc, source=source,
                            n_runs=len(df), interval_label=interval, observed_max=float(df["total_bits"].max()),
                            continuous_source=f"law {cont_tag}" if cont_tag else None, xlabel=xlabel)
    files += plot.residuals(df, metric, keys, fits, out / "residuals", desc, xlabel=xlabel)
    if report.get("scheme_frontiers"):
        files += plot.scheme_frontiers(report["scheme_frontiers"], out / "scheme_frontiers", desc,
                                       law_label=plot.describe_law(fits.values()),
                                       interval_label=plot.describe_intervals(fits.values()), xlabel=xlabel)
    if "decode_ms_b1" in df:
        files += plot.deploy_speed(df, out / "speed_vs_k", desc)
    schemes = [c for c in ("dtype", "blocksize", "method") if c in keys]
    if schemes:
        files += plot.schemes_at_fixed_k(df, metric, schemes, out / "schemes_at_fixed_k", desc)
    if "regime" in keys:
        files += plot.curves(df, metric, [k for k in keys if k != "regime"] + ["regime"], out / "ptq_vs_qat",
                             "PTQ vs QAT: per-k laws fitted per regime (line style = regime)", desc,
                             fits=fits, style_key="regime", extrapolate=extrapolate)
    if "zs_acc_mean" in df and df["zs_acc_mean"].notna().any():
        acc = df[df["zs_acc_mean"].notna()]
        files += plot.curves(acc, "zs_acc_mean", ["bits"], out / "zeroshot_accuracy",
                             "Mean zero-shot accuracy vs total model bits, one curve per k",
                             _describe(acc, "zs_acc_mean"))
    return files


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    return v


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    return str(v)


def _value(p: dict[str, Any]) -> str:
    """A parameter for people: its value and interval, or "at bound" (no claim made)."""
    v = p.get("reported_value", p["value"])
    if p.get("at_bound"):
        return f"at bound ({_fmt(v)})"
    return f"{_fmt(v)} {_fmt(p.get('reported_ci95') or p['ci95'])}"


def markdown(report: dict[str, Any]) -> str:
    """A human-readable report with the same numbers as fit.json; the answer comes first."""
    st = report["settings"]
    lines = ["# ksir scaling-law report", "", f"Measured: {report['description']}.", ""]
    if report.get("headline"):
        lines += ["## Answer", "", *headline.lines(report["headline"], report["metric"]), ""]
    lines += [f"Fitting: {st['loss']} loss (delta {st['huber_delta']}) on log residuals (accuracy laws: linear), "
              f"from a grid of starts, inside each parameter's bounds; 95% intervals from {st['n_bootstrap']} "
              "bootstrap resamples (of the runs, or of the residuals for fits with fewer than 3 runs per parameter: "
              "column CI by); held-out check: the largest model size left out of the fit and predicted. A parameter "
              "'at bound' ended on the edge of its allowed range: it is fixed there, not measured, and no claim is "
              "made about it.", ""]
    lines += memory.lines(report.get("memory") or [], report.get("budget", "total_bits"))
    lines += _composition_lines(report.get("composition"))
    if report["left_out"]:
        lines += [f"Left out {len(report['left_out'])} runs:", ""]
        lines += [f"- {s.get('run_key') or s['source']}: {s['reason']}" for s in report["left_out"]] + [""]
    if report.get("baselines"):
        lines += ["## Baselines", "", f"A run at the reference precision (bits = {st['reference']:g}) is the baseline of "
                  "every scheme built on its base model (same family, N, D, training fields, declared --base columns "
                  "and replicate), whatever its own labels:", ""]
        lines += [f"- {t.strip()}" for t in design.join_lines(report["baselines"], st["reference"])[1:]] + [""]
    if report.get("replicates"):
        rep = st.get("replicate") or "seed"
        lines += ["## Replicates", "", f"Configurations measured more than once (runs differing only in `{rep}`): "
                  "the spread between replicates next to the per-k law's mean residual there (log space; a residual "
                  "well inside the spread is noise, one far outside it is misfit). The bootstrap resamples each "
                  "configuration with all its replicates.", "",
                  "| curve | N | replicates | mean | sd | range | per-k law residual |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {r['curve']} | {_fmt(r['n_params'])} | {r['replicates']} | {r['mean']:.4g} | {r['sd']:.3g} | "
                  f"{r['range']:.3g} | {_fmt(r['fit_residual'])} |" for r in report["replicates"]] + [""]
    if report.get("paired"):
        pr = report["paired"]
        lines += [f"Degradation laws are fitted on {pr['n_pairs']} paired differences ({pr['metric']}: each "
                  "post-training-quantized run minus its base model's baseline); "
                  f"{pr['not_positive']} at or below 0 are left out of their log-space fits, "
                  f"{len(pr['unpaired'])} runs have no baseline.", ""]
    if report["laws"].get("power_bits"):
        lines += ["## Per-k power laws  L_k(B) = E + A * B^(-alpha)", "",
                  "| curve | E [95% CI] | A | alpha [95% CI] | R^2 (log) | RMSE (log) | held-out rel. error | n | CI by "
                  "| verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
        for s in report["laws"]["power_bits"]:
            p = s["params"]
            ho = s["heldout"] or {}
            v = s["verdict"]
            lines.append(f"| {_fmt(s['group'])} | {_value(p['e'])} | "
                         f"{_value(p['a']).split(' [')[0]} | {_value(p['alpha'])} | "
                         f"{_fmt(s['goodness_of_fit']['r2'])} | {_fmt(s['goodness_of_fit']['rmse'])} | "
                         f"{_fmt(ho.get('mean_abs_rel_error', 'n/a' if ho else None))} | {s['n_points']} | "
                         f"{_fmt(s['bootstrap']['method'])} | {v['status']}{': ' + '; '.join(v['reasons']) if v['reasons'] else ''} |")
    for name, s in report["laws"].items():
        if name == "power_bits":
            continue
        lines += ["", f"## {name}: {s['formula']}", "", "| parameter | value [95% CI] | se |", "|---|---|---|"]
        for pname, p in s["params"].items():
            lines.append(f"| {p.get('reported', pname)} | {_value(p)} | {_fmt(p['se'])} |")
        g = s["goodness_of_fit"]
        v = s.get("verdict") or {"status": "-", "reasons": []}
        lines.append(f"\nGoodness of fit: R^2 {_fmt(g['r2'])} ({g['space']} space), RMSE {_fmt(g['rmse'])}, "
                     f"AIC {_fmt(g['aic'])}, BIC {_fmt(g['bic'])}, n = {g['n']}; held-out: "
                     f"{_fmt((s['heldout'] or {}).get('mean_abs_rel_error'))} mean abs. rel. error. Verdict: "
                     f"{v['status']}{' (' + '; '.join(v['reasons']) + ')' if v['reasons'] else ''}.")
        if s.get("efficiency"):
            lines += ["", "| k | eff(k) [95% CI] | eff(k)/k [95% CI] |", "|---|---|---|"]
            lines += [f"| {r['k']:g} | {_fmt(r['eff'])} {_fmt(r.get('eff_ci95'))} | {_fmt(r['eff_per_bit'])} "
                      f"{_fmt(r.get('eff_per_bit_ci95'))} |" for r in s["efficiency"]]
        for w in s.get("warnings", []):
            lines.append(f"\nWarning: {w}")
    if report.get("optimal"):
        lines += ["", "## Per-k laws vs measured data, per total-bit budget", "",
                  "| budget (bits) | best (per-k laws) | k 95% CI | bootstrap frequency | best (interpolated data) | agree |",
                  "|---|---|---|---|---|---|"]
        for r in report["optimal"]:
            lines.append(f"| {r['budget_bits']:.3g}{' (extrap.)' if r['extrapolated'] else ''} | {r['best']} | "
                         f"{_fmt(r.get('best_k_ci95'))} | {_fmt(r.get('best_frequency'))} | "
                         f"{_fmt(r['best_interpolated'])} | {_fmt(r['law_agrees_with_data'])} |")
    if report.get("scheme_frontiers"):
        verdict = next((c.get("status") for c in (report.get("headline") or {}).get("candidates", [])
                        if c.get("law") == "power_bits"), None)
        lines += ["", "## Best scheme per budget (each scheme at its best k)", "",
                  "Each scheme's lower envelope over its per-k laws; intervals from the same bootstrap replicates of "
                  "every curve; the margin is the runner-up's loss minus the best's (significant: its 95% interval "
                  f"excludes 0). The per-k laws are {verdict or 'of unknown status'} here"
                  + ("; read the measured column first." if verdict not in (None, "ok") else "."), "",
                  "| budget (bits) | best scheme (laws) | at k | loss [95% CI] | runner-up | margin [95% CI] | "
                  "best scheme (measured, interpolated) |", "|---|---|---|---|---|---|---|"]
        for r in report["scheme_frontiers"]:
            ci = (r.get("loss_ci95") or {}).get(r["best_scheme"])
            lines.append(f"| {r['budget_bits']:.3g}{' (extrap.)' if r['extrapolated'] else ''} | {r['best_scheme']} | "
                         f"{r['best_k']:g} | {r['loss'][r['best_scheme']]:.4g} {_fmt(ci)} | {r['runner_up']} | "
                         f"{r['margin']:.3g} {_fmt(r.get('margin_ci95'))}{' *' if r.get('significant') else ''} | "
                         f"{_fmt(r.get('measured_best_scheme'))} |")
    for tag, rows in (report.get("optimal_continuous") or {}).items():
        if isinstance(rows, list):
            lines += ["", f"Continuous k* from {tag} (bits per parameter = k + "
                      f"{report['optimal_continuous']['bits_overhead_per_param']:.3f}):", ""]
            lines += [f"- {r['budget_bits']:.3g} bits: k* = {r['k_star']:.2f} {_fmt(r.get('k_star_ci95'))}"
                      f"{' (at the edge of the k range searched: the law puts the optimum outside it)' if r['at_range_edge'] else ''}"
                      for r in rows[::4]]
    if report.get("predictions"):
        lines += ["", *prediction_lines(report["predictions"])]
    if report.get("accuracy"):
        lines += ["", *accuracy_lines(report["accuracy"])]
    if report["skipped_curves"]:
        lines += ["", "## Not fitted", ""] + [f"- {_fmt(s.get('curve') or s.get('law'))}: {s['reason']}"
                                              for s in report["skipped_curves"]]
        if any(s.get("unidentified") for s in report["skipped_curves"]):
            lines += ["", "A law left unfitted for lack of design (unidentified) is never trusted: its candidate is "
                      "marked unidentified in the table of the answer."]
    if report["figures"]:
        lines += ["", "## Figures", ""] + [f"- {Path(f).name}" for f in report["figures"] if f.endswith(".png")]
    return "\n".join(lines) + "\n"


def prediction_lines(pred: dict[str, Any]) -> list[str]:
    """`--predict`'s answers (loss from the trusted law, accuracy from that loss when measured), or why none."""
    out = ["## Predictions (--predict)", ""]
    if pred.get("error"):
        return [*out, f"None: {pred['error']}."]
    acc = pred.get("accuracy_metric")
    out.append(f"{pred['metric']} from {pred['law']} (the trusted law)" + (f", {acc} from that loss" if acc else "")
               + "; 95% intervals from its bootstrap." + (f" Note: {pred['note']}." if pred.get("note") else ""))
    out += ["", "| parameters | k | tokens | loss [95% CI] |" + (" accuracy [95% CI] |" if acc else ""),
            "|---|---|---|---|" + ("---|" if acc else "")]
    for r in pred["rows"]:
        out.append(f"| {r['n_params']:.3g} | {_fmt(r.get('bits'))} | {_fmt(r.get('train_tokens'))} | "
                   f"{r['loss']:.4g} {_fmt(r.get('loss_ci95'))} |" +
                   (f" {r['accuracy']:.3f} {_fmt(r.get('accuracy_ci95'))} |" if acc else ""))
    return out


def accuracy_lines(acc: dict[str, Any]) -> list[str]:
    """The two-step accuracy prediction: its sigmoid, its held-out check and its predictions."""
    out = [f"## Accuracy from loss ({acc['metric']})", "", acc["method"] + "."]
    if acc.get("error"):
        return [*out, "", f"Not fitted: {acc['error']}"]
    s = acc["acc_law"]
    out += ["", "| parameter | value [95% CI] |", "|---|---|"]
    out += [f"| {p.get('reported', n)} | {_value(p)} |" for n, p in s["params"].items()]
    ho = acc.get("heldout") or {}
    if "mean_abs_error" in ho:
        out += ["", f"Held-out check: both steps refitted without the largest size ({ho['held_out_size']:.3g} "
                f"parameters) predict its {acc['metric']} with mean abs. error {ho['mean_abs_error']:.3f} "
                f"(max {ho['max_abs_error']:.3f}, n = {ho['n']})."]
    elif ho.get("error"):
        out += ["", f"Held-out check not possible: {ho['error']}"]
    if acc.get("predictions"):
        out += ["", "| parameters | k | tokens | loss [95% CI] | accuracy [95% CI] |", "|---|---|---|---|---|"]
        for r in acc["predictions"]:
            out.append(f"| {r['n_params']:.3g} | {_fmt(r.get('bits'))} | {_fmt(r.get('train_tokens'))} | "
                       f"{r['loss']:.4g} {_fmt(r.get('loss_ci95'))} | {r['accuracy']:.3f} {_fmt(r.get('accuracy_ci95'))} |")
    return out


def _composition_lines(comp: dict[str, Any] | None) -> list[str]:
    """report.md: the mixed configurations predicted from single-axis runs (analysis.compose)."""
    if not comp:
        return []
    head = ["## Do the precisions compose?", ""]
    if "error" in comp:
        return [*head, f"Not tested: {comp['error']}", ""]
    lines = [*head, f"Kumar et al.'s N_eff (`precision_multi`) fitted on {comp['fitted_on']} single-axis runs "
             "(at most one of weights, activations, KV cache below 16 bits) predicts every mixed configuration: "
             f"mean |relative error| {comp['mean_abs_rel_error']:.2%}, largest {comp['max_abs_rel_error']:.2%}.", "",
             "| N | k_w | k_act | k_kv | measured | predicted [95% CI] | error | inside |", "|---|---|---|---|---|---|---|---|"]
    for r in comp["predicted"]:
        lo, hi = r["ci95"]
        ci = f"[{lo:.4g}, {hi:.4g}]" if lo is not None else "[-]"
        lines.append(f"| {r['n_params']:.3g} | {r.get('bits', 16):g} | {r.get('act_bits', 16):g} | "
                     f"{r.get('kv_bits', 16):g} | {r['measured']:.4g} | {r['predicted']:.4g} {ci} | "
                     f"{r['rel_error']:+.2%} | {'yes' if r['inside'] else 'no'} |")
    return [*lines, ""]
