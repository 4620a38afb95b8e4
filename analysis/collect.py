"""Runs from anywhere into one DataFrame schema: local result records (primary), a W&B project
(public API), or an external table (CSV/JSON/Parquet with a column mapping).

Schema: one row per run with the record's scalar fields (run_key, status, job, family, size,
method, regime, bits, dtype, blocksize, n_params, n_params_nonembedding, total_bits,
bits_per_param, train_tokens, ...), the metrics flattened to columns (val_loss, val_ppl,
val_acc, zs_acc_mean, ...), and `source`. Rows left out are reported, never dropped silently.
"""

from __future__ import annotations

import glob
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ksir.records import flat_row, from_wandb, iter_record_files, read_record

METRIC_DEFAULT = "val_loss"


@dataclass
class Collected:
    runs: pd.DataFrame
    skipped: list[dict[str, str]] = field(default_factory=list)  # {source, run_key, reason}

    def report(self) -> str:
        lines = [f"{len(self.runs)} runs used, {len(self.skipped)} left out"]
        lines += [f"  left out {s.get('run_key') or s['source']}: {s['reason']}" for s in self.skipped]
        return "\n".join(lines)


def _expand(sources: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for s in sources:
        s = str(s)
        paths = [Path(p) for p in sorted(glob.glob(s))] if any(ch in s for ch in "*?[") else [Path(s)]
        for p in paths:
            files += iter_record_files(p) if p.is_dir() else [p]
    return files


def load_records(sources: Iterable[str | Path]) -> Collected:
    """Local records from folders, files or globs. Corrupt files are reported and skipped."""
    rows, skipped = [], []
    files = _expand(sources)
    if not files:
        raise FileNotFoundError(f"no result records found in {list(map(str, sources))}")
    for f in files:
        try:
            rows.append(flat_row(read_record(f), str(f)))
        except ValueError as e:
            skipped.append({"source": str(f), "run_key": "", "reason": str(e)})
    return clean(pd.DataFrame(rows), skipped)


def clean(df: pd.DataFrame, skipped: list[dict[str, str]] | None = None, metric: str = METRIC_DEFAULT) -> Collected:
    """Resolve duplicate run identities deterministically (newest `created`, then source path) and
    leave out failed runs and runs whose metric is missing, NaN or infinite, with the reason."""
    skipped = list(skipped or [])
    if df.empty:
        return Collected(df, skipped)
    df = df.copy()
    if "status" in df:
        bad = df["status"].fillna("done") != "done"
        skipped += [{"source": r.source, "run_key": r.run_key, "reason": f"status={r.status}"}
                    for r in df[bad].itertuples()]
        df = df[~bad]
    if metric in df:
        vals = pd.to_numeric(df[metric], errors="coerce")
        bad = ~np.isfinite(vals.to_numpy(float))
        skipped += [{"source": s, "run_key": k, "reason": f"{metric} is missing/NaN/inf"}
                    for s, k in zip(df.loc[bad, "source"], df.loc[bad, "run_key"], strict=True)]
        df = df[~bad]
    if "run_key" in df:
        order = [c for c in ("created", "source") if c in df]
        df = df.sort_values(order, kind="stable") if order else df
        dup = df.duplicated("run_key", keep="last")
        skipped += [{"source": s, "run_key": k, "reason": "duplicate run identity (a newer record is used)"}
                    for s, k in zip(df.loc[dup, "source"], df.loc[dup, "run_key"], strict=True)]
        df = df[~dup]
    return Collected(df.reset_index(drop=True), skipped)


def load_table(path: str | Path, column_map: Mapping[str, str] | None = None, **defaults: Any) -> Collected:
    """Runs logged by other tools: a CSV/JSON(L)/Parquet table whose columns are renamed with
    `column_map` ({their name: ksir name}, e.g. {"params": "n_params", "loss": "val_loss"}).
    Missing `total_bits` is derived as n_params * bits; `defaults` fill constant columns."""
    path = Path(path)
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".json": pd.read_json,
               ".jsonl": lambda p: pd.read_json(p, lines=True)}
    if path.suffix not in readers:
        raise ValueError(f"{path}: unsupported table format (use {sorted(readers)})")
    df = readers[path.suffix](path).rename(columns=dict(column_map or {}))
    for k, v in defaults.items():
        if k not in df:
            df[k] = v
    if "total_bits" not in df and {"n_params", "bits"} <= set(df):
        df["total_bits"] = df["n_params"] * df["bits"]
    df["source"] = str(path)
    if "run_key" not in df:
        df["run_key"] = [f"{path.stem}-{i}" for i in range(len(df))]
    if "job" not in df:
        df["job"] = "quantize"
    if "status" not in df:
        df["status"] = "done"
    return clean(df)


def load_wandb(project: str, filters: Mapping[str, Any] | None = None, group: str | None = None,
               api: Any = None) -> Collected:
    """Runs of a W&B project ("entity/project") through the public API (online runs only).

    The run summary holds the record's scalar fields and metrics (ksir mirrors them there),
    the run config the resolved job config; `api` can be injected (tests)."""
    if api is None:
        import wandb

        api = wandb.Api(timeout=60)
    flt = dict(filters or {})
    if group:
        flt["group"] = group
    rows = []
    for run in api.runs(project, filters=flt or None):
        rec = from_wandb(run.id, dict(run.summary), dict(run.config), run.state, str(getattr(run, "created_at", "")))
        rows.append(flat_row(rec, f"wandb:{project}/{run.id}"))
    return clean(pd.DataFrame(rows))


def select(df: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    """Rows matching every {column: value or list of values} (values compared as strings)."""
    for col, want in where.items():
        if col not in df:
            raise KeyError(f"no column {col!r} to filter on (have {sorted(df.columns)})")
        wants = {str(w) for w in (want if isinstance(want, list | tuple | set) else [want])}
        df = df[df[col].map(lambda v, w=wants: _norm(v) in w)]
    return df


def _norm(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return str(int(v))
    return str(v)


def to_json_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(df.to_json(orient="records"))
