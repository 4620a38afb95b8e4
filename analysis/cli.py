"""`ksir-fit`: runs -> scaling-law fits, optimal k, report and figures.

    ksir-fit outputs/demo/results --out outputs/demo/fit
    ksir-fit 'outputs/*/results' --family llama --dtype int --law precision efficiency --bootstrap 1000 --out fit
    ksir-fit --table released_runs.csv --map params=n_params,loss=val_loss,bits=bits --out refit
    ksir-fit --table experiments/chinchilla_epoch/data/svg_extracted_data.csv --map "Model Size=n_params,Training FLOP=train_flops,loss=val_loss" --out chin
    ksir-fit outputs/demo/results --out fit --predict n_params=1e8,bits=4 --predict n_params=1e8,bits=3

Laws are chosen from the columns when --law is not given: parameters + tokens + loss -> chinchilla;
parameters + bits + loss -> per-k power laws, precision and efficiency (with a data term when tokens
vary); parameters + loss -> a size law. The answer comes from the law that predicts held-out runs
best among those the data identify, and says so.
    ksir-fit --wandb me/ksir --wandb-filter '{"config.quant.dtype": "nf"}' --out from_wandb
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import pandas as pd

from analysis import design, headline
from analysis.collect import Collected, clean, load_records, load_table, load_wandb, parse_map, select
from analysis.fit import FitError
from analysis.laws import LAWS, load_law_file
from analysis.memory import BUDGETS, use_inference, use_measured
from analysis.report import analyse
from analysis.settings import ENGINES, FitSettings

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
                   help="laws to fit (default: chosen from the columns present); per-k power laws are added "
                        "whenever k varies")
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
    p.add_argument("--engine", choices=ENGINES, default="batched",
                   help="batched (all starts / resamples solved together) or scipy (one L-BFGS fit at a time: "
                        "the reference)")
    p.add_argument("--acc-metric", default="zs_acc_mean",
                   help="accuracy column for the two-step accuracy-from-loss prediction")
    p.add_argument("--predict", action="append", default=[], metavar="COL=V,...",
                   help="predict loss and accuracy at an unseen model, e.g. n_params=1e9,bits=4[,train_tokens=2e10]")
    p.add_argument("--budget", choices=BUDGETS, default="total_bits",
                   help="memory axis: total_bits (ksir's formula), measured_bytes (bytes a packed model stores, "
                        "x 8; runs without a measurement are left out) or inference (weights + the KV cache at "
                        "--context tokens x --batch sequences: the best (k_w, k_kv))")
    p.add_argument("--context", type=int, default=None, help="--budget inference: tokens per sequence (e.g. 4096)")
    p.add_argument("--batch", type=int, default=None, help="--budget inference: sequences held at once (default 1)")
    p.add_argument("--reference", default="bits=16", metavar="bits=K",
                   help="the baseline precision: runs at bits=K of a base model are the baseline of every scheme, "
                        "method and regime built on it (default bits=16)")
    p.add_argument("--base", action="append", default=[], metavar="COLUMN",
                   help="a table column that, with N and D, names a base model (repeatable); runs sharing them share "
                        "a baseline")
    p.add_argument("--replicate", default="seed", metavar="COLUMN",
                   help="runs that differ only in this column are replicates of one configuration: fitted together, "
                        "resampled together by the bootstrap (default: seed)")
    p.add_argument("--trust-without-heldout", action="store_true",
                   help="let a law that no held-out check can test answer on BIC alone (recorded in fit.json)")
    p.add_argument("--law-file", action="append", default=[], metavar="PY",
                   help="a Python file defining a law of your own (NAME, COLUMNS, PARAMS, law(p, x); see "
                        "docs/analysis.md), fitted and judged like the built-in ones")
    p.add_argument("--no-figures", action="store_true")
    return p


def reference_bits(text: str) -> float:
    """--reference bits=16 -> 16.0; anything else is a one-line FitError."""
    col, eq, value = text.partition("=")
    try:
        k = float(value)
    except ValueError:
        k = math.nan
    if col.strip() != "bits" or not eq or not math.isfinite(k) or k <= 0:
        raise FitError(f"--reference {text!r}: expected bits=K with K > 0 (e.g. bits=16)")
    return k


def settings(args: argparse.Namespace) -> FitSettings:
    """ksir-fit's fitting options as one FitSettings (ksir-repro builds its studies' the same way)."""
    return FitSettings(loss=args.loss, delta=args.delta, n_boot=args.bootstrap, seed=args.seed, holdout=args.holdout,
                       engine=args.engine, reference=reference_bits(args.reference), base=tuple(args.base),
                       replicate=args.replicate or None, trust_without_heldout=args.trust_without_heldout,
                       extrapolate=args.extrapolate)


def collect(args: argparse.Namespace) -> Collected:
    parts: list[Collected] = []
    if args.sources:
        parts.append(load_records(args.sources, metric=args.metric))
    mapping = parse_map(args.map)
    if mapping and not args.table:
        raise FitError("--map applies to --table files; none given")
    parts += [load_table(t, mapping, metric=args.metric) for t in args.table]
    if args.wandb:
        parts.append(load_wandb(args.wandb, json.loads(args.wandb_filter) if args.wandb_filter else None,
                                args.wandb_group, metric=args.metric))
    if not parts:
        raise FitError("no source given: pass result folders, --table or --wandb")
    df = pd.concat([p.runs for p in parts], ignore_index=True)
    merged = clean(df, [s for p in parts for s in p.skipped], metric=args.metric)
    where = {f: getattr(args, f) for f in FILTERS if getattr(args, f)}
    runs = merged.runs
    if not args.all_jobs and "job" not in where:
        runs = quantized_only(runs)
    merged.runs = select(runs, where) if where else runs
    if args.budget == "inference":
        return use_inference(merged, args.context, args.batch or 1)
    return use_measured(merged) if args.budget == "measured_bytes" else merged


def _check_inference(args: argparse.Namespace) -> None:
    """--context and --batch go with --budget inference, as positive integers (one line before any work)."""
    if args.budget != "inference":
        if args.context is not None or args.batch is not None:
            raise FitError("--context/--batch: only with --budget inference (the KV cache's tokens and sequences)")
        return
    if args.context is None or args.context < 1:
        raise FitError(f"--budget inference needs --context N >= 1 (tokens per sequence), got {args.context}")
    if args.batch is not None and args.batch < 1:
        raise FitError(f"--batch: sequences held at once, an integer >= 1, got {args.batch}")


def quantized_only(runs: pd.DataFrame) -> pd.DataFrame:
    """PTQ (quantize jobs) and QAT (train jobs with a qat regime): plain full-precision train records
    duplicate the 16-bit PTQ baselines, so they are not curves."""
    if "job" not in runs:
        return runs
    regime = runs["regime"].astype(str) if "regime" in runs else pd.Series("", index=runs.index)
    return runs[(runs["job"] == "quantize") | regime.isin(["qat", "qat-finetune"])].reset_index(drop=True)


def points(specs: list[str]) -> tuple[dict[str, float], ...]:
    """--predict n_params=1e9,bits=4 -> ({"n_params": 1e9, "bits": 4.0},); a malformed one is a one-line error."""
    out = []
    for spec in specs:
        pt = {}
        for kv in spec.split(","):
            k, _, v = kv.partition("=")
            try:
                pt[k.strip()] = float(v)
            except ValueError:
                raise FitError(f"--predict: {kv!r} is not column=number (e.g. n_params=1e9,bits=4)") from None
        if "n_params" not in pt:
            raise FitError(f"--predict {spec!r}: needs n_params=...")
        out.append(pt)
    return tuple(out)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        _check_inference(args)
        want = points(args.predict)
        st = settings(args)
        user = tuple(load_law_file(f) for f in args.law_file)
        runs = collect(args)
        print(runs.report())
        report = analyse(runs, args.out, metric=args.metric, laws=tuple(args.law), settings=st,
                         figures=not args.no_figures, acc_metric=args.acc_metric, predict=want, budget=args.budget,
                         user_laws=user)
    except (FitError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"ksir-fit: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        return 2
    print(summary(report))
    print(f"wrote {Path(args.out) / 'fit.json'}, report.md, runs.csv and {len(report['figures'])} figure files")
    pred = report.get("predictions") or {}
    if pred.get("error"):
        print(f"ksir-fit: error: {pred['error']}", file=sys.stderr)
        return 2
    return 0


def summary(report: dict) -> str:
    """The terminal summary: the answer first (with its source and why), then the predictions asked for and
    the accuracy predictions."""
    lines = design.join_lines(report.get("baselines") or [], report["settings"]["reference"])
    lines += ["", headline.terminal(report["headline"], report["metric"])]
    pred = report.get("predictions") or {}
    if pred.get("rows"):
        am = pred.get("accuracy_metric")
        lines += ["", f"predicted (--predict; {pred['metric']} from {pred['law']}" + (f", {am} from that loss" if am
                                                                                   else "") + "; 95% CI):"]
        lines += ["  " + _prediction(r, am) for r in pred["rows"]]
        if pred.get("note"):
            lines.append(f"  ({pred['note']})")
    acc = report.get("accuracy") or {}
    if acc.get("predictions"):
        lines += ["", f"{acc['metric']} from loss (two steps, loss from {acc['loss_law']}; 95% CI):"]
        lines += ["  " + _prediction(r, acc["metric"]) for r in acc["predictions"]]
        ho = acc.get("heldout") or {}
        if "mean_abs_error" in ho:
            lines.append(f"  held-out check (largest size predicted from the others): mean abs. error "
                         f"{ho['mean_abs_error']:.3f}")
    if report["skipped_curves"]:
        lines += ["", f"not fitted: {len(report['skipped_curves'])} (see report.md)"]
    return "\n".join(lines)


def _prediction(r: dict, acc_metric: str | None) -> str:
    def ci(key: str, fmt: str) -> str:
        v = r.get(key)
        return f" [{v[0]:{fmt}}, {v[1]:{fmt}}]" if v else ""
    text = f"N={r['n_params']:.3g}" + (f" k={r['bits']:g}" if "bits" in r else "") + \
        (f" D={r['train_tokens']:.3g}" if "train_tokens" in r else "") + f": loss {r['loss']:.4g}{ci('loss_ci95', '.4g')}"
    if acc_metric and "accuracy" in r:
        text += f", {acc_metric} {r['accuracy']:.3f}{ci('accuracy_ci95', '.3f')}"
    return text


if __name__ == "__main__":
    raise SystemExit(main())
