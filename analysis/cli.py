"""`ksir-fit`: runs -> scaling-law fits, optimal k, report and figures.

    ksir-fit outputs/demo/results --out outputs/demo
    ksir-fit 'outputs/*/results' --family llama --dtype int --law precision efficiency --bootstrap 1000
    ksir-fit --table released_runs.csv --map params=n_params,loss=val_loss,bits=bits --out refit
    ksir-fit --wandb me/ksir --wandb-filter '{"config.quant.dtype": "nf"}' --out from_wandb
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from analysis.collect import Collected, clean, load_records, load_table, load_wandb, select
from analysis.fit import FitError
from analysis.laws import LAWS
from analysis.report import analyse

FILTERS = ("family", "method", "dtype", "blocksize", "regime", "job", "size", "granularity")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ksir-fit", description="Fit k-bit scaling laws to logged runs.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("sources", nargs="*", help="result folders, record files or globs (local records)")
    p.add_argument("--out", required=True, help="folder for runs.csv, fit.json, report.md and the figures")
    p.add_argument("--table", action="append", default=[], help="an external run table (CSV/JSON/Parquet)")
    p.add_argument("--map", default="", help="column mapping for --table: theirs=ours,... (ours: n_params, "
                   "train_tokens, bits, total_bits, val_loss, ...)")
    p.add_argument("--wandb", help="a W&B project entity/project (online runs, public API)")
    p.add_argument("--wandb-filter", default=None, help="W&B API filters as JSON (MongoDB-style)")
    p.add_argument("--wandb-group", default=None, help="only runs of this W&B group")
    p.add_argument("--metric", default="val_loss", help="metric column to fit (val_loss, val_ppl, zs_acc_mean, ...)")
    p.add_argument("--law", nargs="*", default=[], choices=sorted(LAWS),
                   help="joint laws fitted besides the per-k power laws (default: precision)")
    for f in FILTERS:
        p.add_argument(f"--{f}", action="append", help=f"keep runs with this {f} (repeatable)")
    p.add_argument("--all-jobs", action="store_true",
                   help="also use full-precision train records (default: PTQ quantize jobs and QAT train jobs)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fit (0 = none)")
    p.add_argument("--delta", type=float, default=1e-3, help="Huber delta on log residuals (Chinchilla: 1e-3)")
    p.add_argument("--loss", choices=["huber", "ols"], default="huber", help="huber (L-BFGS) or ols (curve_fit)")
    p.add_argument("--holdout", type=int, default=1, help="largest model sizes held out for the extrapolation check")
    p.add_argument("--extrapolate", type=float, default=10.0, help="budgets up to this factor beyond the largest run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=None, help="processes for the bootstrap (default: all cores)")
    p.add_argument("--no-figures", action="store_true")
    return p


def collect(args: argparse.Namespace) -> Collected:
    parts: list[Collected] = []
    if args.sources:
        parts.append(load_records(args.sources))
    mapping = dict(kv.split("=", 1) for kv in args.map.split(",") if kv)
    parts += [load_table(t, mapping) for t in args.table]
    if args.wandb:
        parts.append(load_wandb(args.wandb, json.loads(args.wandb_filter) if args.wandb_filter else None,
                                args.wandb_group))
    if not parts:
        raise FitError("no source given: pass result folders, --table or --wandb")
    df = pd.concat([p.runs for p in parts], ignore_index=True)
    merged = clean(df, [s for p in parts for s in p.skipped], metric=args.metric)
    where = {f: getattr(args, f) for f in FILTERS if getattr(args, f)}
    runs = merged.runs
    if not args.all_jobs and "job" not in where and "job" in runs:
        # Quantized models only: PTQ (quantize jobs) and QAT (train jobs with a qat regime); plain
        # full-precision train records duplicate the 16-bit PTQ baselines.
        regime = runs["regime"].astype(str) if "regime" in runs else pd.Series("", index=runs.index)
        runs = runs[(runs["job"] == "quantize") | regime.isin(["qat", "qat-finetune"])]
    merged.runs = select(runs, where) if where else runs
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        runs = collect(args)
        print(runs.report())
        report = analyse(runs, args.out, metric=args.metric, laws=tuple(args.law), n_boot=args.bootstrap,
                         delta=args.delta, loss=args.loss, holdout=args.holdout, seed=args.seed, n_jobs=args.jobs,
                         figures=not args.no_figures, extrapolate=args.extrapolate)
    except (FitError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"ksir-fit: error: {e}", file=sys.stderr)
        return 2
    print(summary_table(report))
    print(f"wrote {Path(args.out) / 'fit.json'}, report.md, runs.csv and {len(report['figures'])} figure files")
    return 0


def summary_table(report: dict) -> str:
    lines = [f"{'curve':28} {'E':>8} {'A':>10} {'alpha':>7} {'alpha 95% CI':>17} {'R2(log)':>8} {'heldout':>8}"]
    for s in report["laws"]["power_bits"]:
        p, g = s["params"], s["goodness_of_fit"]
        ci = p["alpha"]["ci95"]
        ho = (s["heldout"] or {}).get("mean_abs_rel_error")
        lines.append(f"{','.join(f'{k}={v}' for k, v in s['group'].items()):28} {p['e']['reported_value']:8.4g} "
                     f"{p['a']['reported_value']:10.4g} {p['alpha']['value']:7.3f} "
                     f"{'-' if ci is None else f'[{ci[0]:.3f}, {ci[1]:.3f}]':>17} {g['r2']:8.3f} "
                     f"{'-' if ho is None else f'{ho:.2%}':>8}")
    lines.append("optimal k per budget (per-k laws | interpolated data):")
    for r in report["optimal"][:: max(1, len(report["optimal"]) // 6)]:
        lines.append(f"  {r['budget_bits']:10.3g} bits{' (extrap.)' if r['extrapolated'] else '':10} -> "
                     f"{r['best']:>10} | {r['best_interpolated'] or '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
