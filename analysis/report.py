"""Runs -> fits -> optimal k -> report (JSON + Markdown) and figures: what `ksir-fit` does."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis import optimal, plot
from analysis.collect import Collected
from analysis.fit import FitError, FitResult, fit_law
from analysis.laws import get_law
from ksir.records import is_baseline

SCHEME_COLS = ("dtype", "blocksize", "method", "regime")
JOINT_DEFAULT = ("precision",)


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
        b = df[is_base].copy()
        for c in cols:
            b[c] = combo[c]
        parts.append(b)
    return pd.concat(parts, ignore_index=True)


def curve_keys(df: pd.DataFrame) -> list[str]:
    """k, plus every scheme column that varies in the data (so each curve is one scheme at one k)."""
    return ["bits"] + [c for c in SCHEME_COLS if c in df and df[c].astype(str).nunique() > 1]


def _key(v: Any) -> tuple:
    return v if isinstance(v, tuple) else (v,)


def _describe(df: pd.DataFrame, metric: str) -> str:
    fams = ",".join(sorted(df["family"].astype(str).unique())) if "family" in df else "?"
    sizes = df["n_params"].nunique() if "n_params" in df else "?"
    return f"{metric} of {len(df)} runs: family {fams}, {sizes} model sizes, k in " \
           f"{{{', '.join(f'{k:g}' for k in sorted(df['bits'].unique()))}}}"


def analyse(collected: Collected, out_dir: str | Path, *, metric: str = "val_loss", laws: tuple[str, ...] = (),
            n_boot: int = 200, delta: float = 1e-3, loss: str = "huber", holdout: int = 1, seed: int = 0,
            n_jobs: int | None = None, figures: bool = True, extrapolate: float = 10.0) -> dict[str, Any]:
    df = collected.runs.copy()
    if df.empty:
        raise FitError("no runs left to fit (all were left out or none matched the filters)")
    for c in ("bits", "total_bits", "n_params", metric):
        if c not in df:
            raise FitError(f"runs have no {c!r} column")
        df[c] = pd.to_numeric(df[c], errors="coerce")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "runs.csv", index=False)
    n_runs, desc = len(df), _describe(df, metric)
    df = attach_baselines(df)
    keys = curve_keys(df)
    report: dict[str, Any] = {"metric": metric, "n_runs": int(n_runs), "description": desc,
                              "left_out": collected.skipped, "curve_keys": keys,
                              "settings": {"loss": loss, "huber_delta": delta, "n_bootstrap": n_boot,
                                           "heldout_largest_sizes": holdout, "seed": seed},
                              "laws": {}, "skipped_curves": [], "figures": []}

    # 1. Per-k power laws in total bits (one per curve).
    fits: dict[tuple, FitResult] = {}
    for key, g in df.groupby(keys, sort=True):
        key = _key(key)
        try:
            fits[key] = fit_law(g, "power_bits", metric, group=dict(zip(keys, map(_plain, key), strict=True)),
                                delta=delta, loss=loss, n_boot=n_boot, seed=seed, holdout=holdout, n_jobs=n_jobs)
        except FitError as e:
            report["skipped_curves"].append({"curve": dict(zip(keys, map(_plain, key), strict=True)), "reason": str(e)})
    if not fits:
        raise FitError("no curve could be fitted: " + "; ".join(s["reason"] for s in report["skipped_curves"]))
    report["laws"]["power_bits"] = [f.summary() for f in fits.values()]

    # 2. Optimal k per budget: per-k laws, model-free interpolation, continuous k from a joint law.
    budgets = optimal.budget_grid(df, extrapolate=extrapolate)
    per_k = optimal.per_k_optimum(fits, budgets, df["total_bits"].max())
    interp = optimal.interpolated_optimum(df, metric, keys, budgets)
    for row, irow in zip(per_k, interp, strict=True):
        row["best_interpolated"] = irow["best"]
        # Only where the law's choice was itself measured at this budget can the data confirm or refute it.
        row["law_agrees_with_data"] = (irow["best"] == row["best"]) if row["best"] in irow["interpolated"] \
            and irow["best"] is not None else None
        row["interpolated"] = irow["interpolated"]
    report["optimal"] = per_k

    joint: dict[str, FitResult] = {}
    scheme_keys = [k for k in keys if k != "bits"]
    for name in dict.fromkeys((*JOINT_DEFAULT, *laws)):
        law = get_law(name)
        if law.per_k or law.space != "log" and metric != "zs_acc_mean":
            continue
        for skey, g in (df.groupby(scheme_keys) if scheme_keys else [((), df)]):
            tag = name + ("" if not scheme_keys else "[" + ",".join(map(str, _key(skey))) + "]")
            try:
                joint[tag] = fit_law(g, law, metric, group=dict(zip(scheme_keys, map(_plain, _key(skey)), strict=True)),
                                     delta=delta, loss=loss, n_boot=n_boot, seed=seed, holdout=holdout, n_jobs=n_jobs)
            except FitError as e:
                report["skipped_curves"].append({"law": tag, "reason": str(e)})
    for tag, f in joint.items():
        s = f.summary()
        if f.ctx.get("eff_ks"):
            s["efficiency"] = _efficiency_table(f)
        report["laws"][tag] = s
    continuous = {}
    overhead = optimal.bits_overhead(df)
    for tag, f in joint.items():
        if set(f.law.columns) <= {"n_params", "bits", "train_tokens"} and "bits" in f.law.columns:
            k_range = (max(1.0, float(df["bits"].min())), 16.0)
            tokens = float(df["train_tokens"].median()) if "train_tokens" in df and df["train_tokens"].notna().any() else None
            swept = [*f.ctx["eff_ks"], 16.0] if "eff_ks" in f.ctx else None  # eff(k) exists at swept k only
            continuous[tag] = optimal.continuous_optimum(f, budgets, k_range, overhead, tokens, ks=swept)
    report["optimal_continuous"] = {"bits_overhead_per_param": overhead, **continuous}

    # 3. Accuracy laws, when zero-shot accuracy was measured.
    if "zs_acc_mean" in df and df["zs_acc_mean"].notna().sum() > 4 and metric != "zs_acc_mean":
        acc = df[df["zs_acc_mean"].notna()]
        for name in ("sigmoid_bits", "sigmoid_loss"):
            try:
                report["laws"][f"accuracy:{name}"] = fit_law(acc, name, "zs_acc_mean", n_boot=min(n_boot, 100),
                                                             seed=seed, holdout=0, n_jobs=n_jobs, delta=0.05).summary()
            except FitError as e:
                report["skipped_curves"].append({"law": f"accuracy:{name}", "reason": str(e)})

    if figures:
        report["figures"] = _figures(df, metric, keys, fits, per_k, continuous, out, desc, extrapolate)
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
             out: Path, desc: str, extrapolate: float) -> list[str]:
    files = plot.curves(df, metric, keys, out / "bit_scaling", "Bit-level scaling: one curve per bit-width k",
                        desc + "; lines: per-k power law, bands: 95% bootstrap", fits=fits)
    files += plot.optimal_k(per_k, next(iter(continuous.values()), None), out / "optimal_k", desc)
    files += plot.residuals(df, metric, keys, fits, out / "residuals", desc)
    schemes = [c for c in ("dtype", "blocksize", "method") if c in keys]
    if schemes:
        files += plot.schemes_at_fixed_k(df, metric, schemes, out / "schemes_at_fixed_k", desc)
    if "regime" in keys:
        files += plot.curves(df, metric, [k for k in keys if k != "regime"] + ["regime"], out / "ptq_vs_qat",
                             "PTQ vs QAT: per-k laws fitted per regime (line style = regime)", desc,
                             fits=fits, style_key="regime")
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


def markdown(report: dict[str, Any]) -> str:
    """A human-readable report with the same numbers as fit.json."""
    lines = ["# ksir scaling-law report", "", f"Measured: {report['description']}.", "",
             f"Fitting: {report['settings']['loss']} loss (delta {report['settings']['huber_delta']}) on log "
             f"residuals, L-BFGS from a grid; 95% intervals from {report['settings']['n_bootstrap']} bootstrap "
             "resamples (of the runs, or of the residuals for fits with fewer than 3 runs per parameter: column CI by); "
             "held-out check: the largest model size left out of the fit and predicted.", ""]
    if report["left_out"]:
        lines += [f"Left out {len(report['left_out'])} runs:", ""]
        lines += [f"- {s.get('run_key') or s['source']}: {s['reason']}" for s in report["left_out"]] + [""]
    lines += ["## Per-k power laws  L_k(B) = E + A * B^(-alpha)", "",
              "| curve | E [95% CI] | A | alpha [95% CI] | R^2 (log) | RMSE (log) | held-out rel. error | n | CI by |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in report["laws"]["power_bits"]:
        p = s["params"]
        ho = s["heldout"] or {}
        lines.append(f"| {_fmt(s['group'])} | {_fmt(p['e']['reported_value'])} {_fmt(p['e'].get('reported_ci95'))} | "
                     f"{_fmt(p['a']['reported_value'])} | {_fmt(p['alpha']['value'])} {_fmt(p['alpha']['ci95'])} | "
                     f"{_fmt(s['goodness_of_fit']['r2'])} | {_fmt(s['goodness_of_fit']['rmse'])} | "
                     f"{_fmt(ho.get('mean_abs_rel_error', 'n/a' if ho else None))} | {s['n_points']} | "
                     f"{_fmt(s['bootstrap']['method'])} |")
    for name, s in report["laws"].items():
        if name == "power_bits":
            continue
        lines += ["", f"## {name}: {s['formula']}", "", "| parameter | value | 95% CI | se |", "|---|---|---|---|"]
        for pname, p in s["params"].items():
            label = p.get("reported", pname)
            value = p.get("reported_value", p["value"])
            lines.append(f"| {label} | {_fmt(value)} | {_fmt(p.get('reported_ci95') or p['ci95'])} | {_fmt(p['se'])} |")
        g = s["goodness_of_fit"]
        lines.append(f"\nGoodness of fit: R^2 {_fmt(g['r2'])} ({g['space']} space), RMSE {_fmt(g['rmse'])}, "
                     f"AIC {_fmt(g['aic'])}, BIC {_fmt(g['bic'])}, n = {g['n']}; held-out: {_fmt((s['heldout'] or {}).get('mean_abs_rel_error'))} mean abs. rel. error.")
        if s.get("efficiency"):
            lines += ["", "| k | eff(k) [95% CI] | eff(k)/k [95% CI] |", "|---|---|---|"]
            lines += [f"| {r['k']:g} | {_fmt(r['eff'])} {_fmt(r.get('eff_ci95'))} | {_fmt(r['eff_per_bit'])} "
                      f"{_fmt(r.get('eff_per_bit_ci95'))} |" for r in s["efficiency"]]
        for w in s.get("warnings", []):
            lines.append(f"\nWarning: {w}")
    lines += ["", "## Optimal k per total-bit budget", "",
              "| budget (bits) | best (per-k laws) | k 95% CI | bootstrap frequency | best (interpolated data) | agree |",
              "|---|---|---|---|---|---|"]
    for r in report["optimal"]:
        lines.append(f"| {r['budget_bits']:.3g}{' (extrap.)' if r['extrapolated'] else ''} | {r['best']} | "
                     f"{_fmt(r.get('best_k_ci95'))} | {_fmt(r.get('best_frequency'))} | {_fmt(r['best_interpolated'])} | "
                     f"{_fmt(r['law_agrees_with_data'])} |")
    for tag, rows in report["optimal_continuous"].items():
        if isinstance(rows, list):
            lines += ["", f"Continuous k* from {tag} (bits per parameter = k + "
                      f"{report['optimal_continuous']['bits_overhead_per_param']:.3f}):", ""]
            lines += [f"- {r['budget_bits']:.3g} bits: k* = {r['k_star']:.2f} {_fmt(r.get('k_star_ci95'))}"
                      f"{' (at the edge of the k range searched: the law puts the optimum outside it)' if r['at_range_edge'] else ''}"
                      for r in rows[::4]]
    if report["skipped_curves"]:
        lines += ["", "## Not fitted", ""] + [f"- {_fmt(s.get('curve') or s.get('law'))}: {s['reason']}"
                                              for s in report["skipped_curves"]]
    if report["figures"]:
        lines += ["", "## Figures", ""] + [f"- {Path(f).name}" for f in report["figures"] if f.endswith(".png")]
    return "\n".join(lines) + "\n"
