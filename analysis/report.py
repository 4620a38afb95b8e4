"""Runs -> fits -> optimal k -> report (JSON + Markdown) and figures: what `ksir-fit` does."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import headline, ladder, memory, optimal, plot, support
from analysis.collect import Collected
from analysis.fit import FitError, FitResult, fit_laws
from analysis.headline import Candidate
from analysis.laws import get_law
from ksir.records import is_baseline

BASE_COLS = ("parametrization", "matmul_precision")  # how ksir trained the base model: a baseline serves its own only
SCHEME_COLS = ("dtype", "blocksize", "method", "regime", "backend", "packed_format", "lowrank_mode", "lowrank_rank",
               *BASE_COLS)


def attach_baselines(df: pd.DataFrame) -> pd.DataFrame:
    """Copies of each unquantized PTQ baseline (one job per base model, scheme-free in its record) for every
    quantization scheme in the data, so that every scheme's curves and joint fits include their 16-bit point."""
    is_base = df.apply(is_baseline, axis=1).astype(bool) if len(df) else pd.Series(False, index=df.index)
    cols = [c for c in SCHEME_COLS if c in df]
    quant = df[~is_base]
    combos = quant[cols].drop_duplicates() if cols and not quant.empty else pd.DataFrame()
    if not is_base.any() or combos.empty:
        return df
    parts = [quant]
    for _, combo in combos.iterrows():
        if combo.get("lowrank_mode") == "factorize":  # its 16-bit curve is fp16 factors, not the unquantized model
            continue
        b = df[is_base]
        for c in (c for c in BASE_COLS if c in cols):
            b = b[b[c].astype(str) == str(combo[c])]
        b = b.copy()
        for c in cols:
            b[c] = combo[c]
        parts.append(b)
    return pd.concat(parts, ignore_index=True)


def curve_keys(df: pd.DataFrame) -> list[str]:
    """k, plus every scheme column that varies in the data (so each curve is one scheme at one k)."""
    return ["bits"] + [c for c in SCHEME_COLS if c in df and df[c].astype(str).nunique() > 1]


NOT_SET = "-"  # a scheme field a run does not have (blocksize of a per-channel run, lowrank of a plain one)


def fill_scheme_gaps(df: pd.DataFrame) -> pd.DataFrame:
    """Missing scheme fields as NOT_SET, so that grouping by the curve keys keeps those runs (pandas drops
    NaN groups): a per-channel run (no block size) is a curve of its own, not silently left out."""
    df = df.copy()
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


def _fit_groups(df: pd.DataFrame, law: str, keys: list[str], metric: str, cand_name: str, report: dict[str, Any],
                **kw: Any) -> Candidate:
    """One fit of `law` per group of `keys` (all runs when keys is empty), solved together, as a candidate."""
    groups = {_key(k): g for k, g in df.groupby(keys, sort=True)} if keys else {(): df}
    labels = {k: dict(zip(keys, map(_plain, k), strict=True)) for k in groups}
    cand = Candidate(cand_name, {})
    for key, res in fit_laws(groups, law, metric, labels=labels, **kw).items():
        if isinstance(res, FitError):
            tag = ",".join(map(str, key))
            cand.skipped.append(f"{tag}: {res}" if tag else str(res))
            report["skipped_curves"].append({"curve" if law == "power_bits" else "law": labels[key] or cand_name,
                                             "reason": str(res)})
        else:
            cand.fits[key] = res
    return cand


def analyse(collected: Collected, out_dir: str | Path, *, metric: str = "val_loss", laws: tuple[str, ...] = (),
            n_boot: int = 200, delta: float = 1e-3, loss: str = "huber", holdout: int = 1, seed: int = 0,
            figures: bool = True, extrapolate: float = 10.0, engine: str = "batched",
            acc_metric: str = "zs_acc_mean", predict: tuple[dict[str, float], ...] = (),
            budget: str = "total_bits") -> dict[str, Any]:
    """Everything `ksir-fit` does: choose and fit the laws the columns support, compare them, answer the
    question the table asks (headline first), fit accuracy from loss, write fit.json, report.md, figures."""
    df = collected.runs.copy()
    if df.empty:
        raise FitError("no runs left to fit (all were left out or none matched the filters)")
    if metric not in df:
        raise FitError(f"runs have no {metric!r} column (columns: {', '.join(sorted(map(str, df.columns))[:30])}); "
                       f"pick one with --metric or map yours with --map theirs={metric}")
    for c in (*NUMERIC, metric):
        if c in df:
            df[c] = pd.to_numeric(df[c], errors="coerce")
    names = support.laws_for(df, laws, metric)  # one-line errors before any fit
    q = support.question(df)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "runs.csv", index=False)
    n_runs, desc = len(df), _describe(df, metric)
    if budget == "measured_bytes":
        desc += "; memory axis = measured bytes x 8 of packed models, not the formula"
    if q == "bits":
        df = fill_scheme_gaps(attach_baselines(df))
    keys = curve_keys(df) if q == "bits" else []
    report: dict[str, Any] = {"metric": metric, "n_runs": int(n_runs), "description": desc, "question": q,
                              "left_out": collected.skipped, "curve_keys": keys, "laws_fitted": names,
                              "settings": {"loss": loss, "huber_delta": delta, "n_bootstrap": n_boot,
                                           "heldout_largest_sizes": holdout, "seed": seed, "engine": engine},
                              "laws": {}, "skipped_curves": [], "figures": [], "budget": budget,
                              "memory": memory.table(df)}
    kw = {"delta": delta, "loss": loss, "n_boot": n_boot, "seed": seed, "holdout": holdout, "engine": engine}

    cands: list[Candidate] = []
    fits: dict[tuple, FitResult] = {}
    if "power_bits" in names:
        per_k = _fit_groups(df, "power_bits", keys, metric, "power_bits", report, **kw)
        fits = per_k.fits
        report["laws"]["power_bits"] = [f.summary() for f in fits.values()]
        cands.append(per_k)
    scheme_keys = [k for k in keys if k != "bits"]
    joint: dict[str, FitResult] = {}
    for name in names:
        law = get_law(name)
        if law.per_k or law.space != "log":
            continue
        cand = _fit_groups(df, name, scheme_keys, metric, name, report, **kw)
        cands.append(cand)
        for key, f in cand.fits.items():
            tag = name + ("" if not scheme_keys else "[" + ",".join(map(str, key)) + "]")
            joint[tag] = f
            s = f.summary()
            if f.ctx.get("eff_ks"):
                s["efficiency"] = _efficiency_table(f)
            report["laws"][tag] = s
    if not any(c.fits for c in cands):
        raise FitError("no law could be fitted: " + "; ".join(s["reason"] for s in report["skipped_curves"]))

    # The answer, per budget, from the law that earns it.
    per_k_rows, continuous = [], {}
    if q == "bits":
        budgets = optimal.budget_grid(df, extrapolate=extrapolate)
        interp = optimal.interpolated_optimum(df, metric, keys, budgets)
        curves = headline.curves_of(df, keys)
        report["headline"] = headline.bits_headline(cands, curves, budgets, df["total_bits"].max(), interp,
                                                    headline.token_policy(df))
        if fits:
            per_k_rows = optimal.per_k_optimum(fits, budgets, df["total_bits"].max())
            for row, irow in zip(per_k_rows, interp, strict=True):
                row["best_interpolated"] = irow["best"]
                row["law_agrees_with_data"] = (irow["best"] == row["best"]) if row["best"] in irow["interpolated"] \
                    and irow["best"] is not None else None
                row["interpolated"] = irow["interpolated"]
            report["scheme_frontiers"] = optimal.scheme_frontiers(fits, keys[1:], budgets, df["total_bits"].max(),
                                                                  interp)
        overhead = optimal.bits_overhead(df)
        for tag, f in joint.items():
            if "bits" in f.law.columns:
                tokens = float(df["train_tokens"].median()) if "train_tokens" in df and df["train_tokens"].notna().any() \
                    else None
                swept = [*f.ctx["eff_ks"], 16.0] if "eff_ks" in f.ctx else None  # eff(k) exists at swept k only
                continuous[tag] = optimal.continuous_optimum(f, budgets, (max(1.0, float(df["bits"].min())), 16.0),
                                                             overhead, tokens, ks=swept)
        report["optimal_continuous"] = {"bits_overhead_per_param": overhead, **continuous}
    elif q == "compute":
        report["headline"] = headline.compute_headline(next(c for c in cands if c.name == "chinchilla"), df,
                                                       extrapolate)
    else:
        report["headline"] = headline.size_headline(cands[0], df, extrapolate)
    report["optimal"] = per_k_rows

    # Accuracy from loss (scaling-ladder two-step), when accuracy was measured.
    if acc_metric in df and acc_metric != metric and df[acc_metric].notna().sum() >= 5:
        report["accuracy"] = ladder.analyse(df, cands, report["headline"], metric, acc_metric, keys, n_boot=n_boot,
                                            seed=seed, engine=engine, points=predict)

    if figures:
        report["figures"] = _figures(df, metric, keys, fits, per_k_rows, continuous, out, desc, extrapolate,
                                     report, cands)
    (out / "fit.json").write_text(json.dumps(_jsonable(report), indent=2))
    (out / "report.md").write_text(markdown(report))
    return report


def _efficiency_table(f: FitResult) -> list[dict[str, Any]]:
    ci = f.intervals()
    rows = [{"k": 16.0, "eff": 1.0, "eff_per_bit": 1 / 16}]
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
        fit = next(c for c in cands if c.name == "chinchilla").fits[()]
        return plot.compute_optimal(h["rows"], df, out / "compute_optimal", desc, law_label=plot.describe_law([fit]),
                                    interval_label=plot.describe_intervals([fit]))
    if q == "size":
        fit = cands[0].fits[()]
        return plot.curves(df.assign(_curve="all"), metric, ["_curve"], out / "size_scaling",
                           f"{metric} vs parameters", desc, fits={("all",): fit}, extrapolate=extrapolate,
                           x="n_params")
    if not fits:
        return []
    files = plot.curves(df, metric, keys, out / "bit_scaling", "Bit-level scaling: one curve per bit-width k",
                        desc, fits=fits, extrapolate=extrapolate)
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
                            continuous_source=f"law {cont_tag}" if cont_tag else None)
    files += plot.residuals(df, metric, keys, fits, out / "residuals", desc)
    if report.get("scheme_frontiers"):
        files += plot.scheme_frontiers(report["scheme_frontiers"], out / "scheme_frontiers", desc,
                                       law_label=plot.describe_law(fits.values()),
                                       interval_label=plot.describe_intervals(fits.values()))
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
    if report["left_out"]:
        lines += [f"Left out {len(report['left_out'])} runs:", ""]
        lines += [f"- {s.get('run_key') or s['source']}: {s['reason']}" for s in report["left_out"]] + [""]
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
    if report.get("accuracy"):
        lines += ["", *accuracy_lines(report["accuracy"])]
    if report["skipped_curves"]:
        lines += ["", "## Not fitted", ""] + [f"- {_fmt(s.get('curve') or s.get('law'))}: {s['reason']}"
                                              for s in report["skipped_curves"]]
    if report["figures"]:
        lines += ["", "## Figures", ""] + [f"- {Path(f).name}" for f in report["figures"] if f.endswith(".png")]
    return "\n".join(lines) + "\n"


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
