"""Runs from anywhere into one DataFrame schema: local result records (primary), a W&B project
(public API), or an external table (CSV/JSON/Parquet with a column mapping).

Schema: one row per run with the record's scalar fields (run_key, status, job, family, size,
method, regime, bits, dtype, blocksize, n_params, n_params_nonembedding, total_bits,
bits_per_param, train_tokens, ...), the metrics flattened to columns (val_loss, val_ppl,
val_acc, zs_acc_mean, ...), and `source`. Rows left out are reported, never dropped silently.

External tables are checked strictly because they come from anyone: a bad `--map`, an unreadable
file or a non-numeric cell is a one-line FitError naming the file, row and column, not a traceback.
"""

from __future__ import annotations

import glob
import io
import json
import math
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.fit import FitError
from ksir.records import flat_row, from_wandb, iter_record_files, read_record

METRIC_DEFAULT = "val_loss"
FORMAT_NAMES = {".csv": "CSV", ".json": "JSON", ".jsonl": "JSONL", ".parquet": "Parquet", ".tsv": "TSV"}
TABLE_FORMATS = tuple(FORMAT_NAMES)
# Columns a table must give as numbers (after --map); the metric and val_*/zs_acc*/test_* too.
NUMERIC_COLUMNS = ("n_params", "n_params_nonembedding", "train_tokens", "train_flops", "bits", "total_bits",
                   "bits_per_param")
NUMERIC_PREFIXES = ("val_", "zs_acc", "test_")
# Run sizes that must be positive; a missing train_tokens is allowed (PTQ of a hub model may not know it,
# and a law that needs it says so).
POSITIVE_COLUMNS = ("n_params", "train_tokens", "bits", "total_bits")
MISSING_OK = ("train_tokens",)
MAP_EXAMPLE = "params=n_params,loss=val_loss"
MAX_LISTED = 30
COUNTS_ABOVE = 10  # the report adds a count per reason when more rows than this are left out


@dataclass
class Collected:
    runs: pd.DataFrame
    skipped: list[dict[str, str]] = field(default_factory=list)  # {source, run_key, reason}

    def report(self) -> str:
        """Every left-out row with its reason; a count per kind of reason first when the list is long."""
        lines = [f"{len(self.runs)} runs used, {len(self.skipped)} left out"]
        if len(self.skipped) > COUNTS_ABOVE:
            counts = Counter(_kind(s["reason"]) for s in self.skipped)
            lines.append(f"left out {len(self.skipped)}: " + ", ".join(f"{n} {k}" for k, n in counts.most_common()))
        lines += [f"  left out {s.get('run_key') or s['source']}: {s['reason']}" for s in self.skipped]
        return "\n".join(lines)


_KINDS = ((re.compile(r"^exact duplicate"), "exact duplicate"),
          (re.compile(r"^(\S+) = \S+ <= 0"), "non-positive {}"),
          (re.compile(r"^(\S+) = \S+ \(not finite\)"), "non-finite {}"),
          (re.compile(r"^(\S+) is missing"), "missing {}"))


def _kind(reason: str) -> str:
    """The reason without its row-specific values, so that left-out rows can be counted by kind."""
    for pattern, kind in _KINDS:
        m = pattern.match(reason)
        if m:
            return kind.format(*m.groups())
    return re.split(r"[:(]", reason, maxsplit=1)[0].strip()[:60] or reason


def _expand(sources: Iterable[str | Path]) -> list[Path]:
    """Folders, files and globs as a user types them: `~` expanded; a path that exists is taken literally (a
    folder named `runs[1]` is that folder, not a glob); otherwise a pattern is globbed; anything else that does
    not exist is a FileNotFoundError naming it."""
    files: list[Path] = []
    for s in sources:
        s = str(Path(str(s)).expanduser())
        if Path(s).exists():
            paths = [Path(s)]
        elif any(ch in s for ch in "*?["):
            paths = [Path(p) for p in sorted(glob.glob(s))]
        else:
            raise FileNotFoundError(f"{s}: no such results folder or record file")
        for p in paths:
            files += iter_record_files(p) if p.is_dir() else [p]
    return files


def load_records(sources: Iterable[str | Path], metric: str = METRIC_DEFAULT) -> Collected:
    """Local records from folders, files or globs. Corrupt files are reported and skipped; runs without
    a usable `metric` are left out with the reason."""
    rows, skipped = [], []
    files = _expand(sources)
    if not files:
        raise FileNotFoundError(f"no result records found in {list(map(str, sources))}")
    for f in files:
        try:
            rows.append(flat_row(read_record(f), str(f)))
        except ValueError as e:
            skipped.append({"source": str(f), "run_key": "", "reason": str(e)})
    return clean(pd.DataFrame(rows), skipped, metric=metric)


def clean(df: pd.DataFrame, skipped: list[dict[str, str]] | None = None, metric: str = METRIC_DEFAULT,
          positive: bool | None = None) -> Collected:
    """Leave out, one row at a time and with the reason, failed runs, a missing/NaN/inf metric, a
    metric <= 0 (`positive`; by default for every metric but an accuracy, since log-space laws need
    it), run sizes (n_params, train_tokens, bits, total_bits) that are missing (train_tokens may be),
    inf or <= 0, and older copies of one run identity (newest `created`, then source path, wins)."""
    skipped = list(skipped or [])
    if df.empty:
        return Collected(df, skipped)
    df = df.copy()
    if "status" in df:
        status = df["status"].fillna("done")
        df = _leave_out(df, status.where(status != "done").map(lambda s: f"status={s}", na_action="ignore"),
                        skipped)
    if positive is None:
        positive = "acc" not in metric
    if metric in df:
        df = _leave_out(df, _reasons(df[metric], lambda v: _metric_reason(metric, v, positive)), skipped)
    for col in POSITIVE_COLUMNS:
        if col in df:
            df = _leave_out(df, _reasons(df[col], lambda v, c=col: _size_reason(c, v)), skipped)
    if "run_key" in df:
        order = [c for c in ("created", "source") if c in df]
        df = df.sort_values(order, kind="stable") if order else df
        dup = df.duplicated("run_key", keep="last")
        why = pd.Series(np.where(dup, "duplicate run identity (a newer record is used)", None), index=df.index)
        df = _leave_out(df, why, skipped)
    return Collected(df.reset_index(drop=True), skipped)


def _reasons(col: pd.Series, reason: Any) -> pd.Series:
    """reason(value) per row of a column read as numbers (None: the row stays)."""
    return pd.Series([reason(v) for v in pd.to_numeric(col, errors="coerce").astype(float)], index=col.index,
                     dtype=object)


def _metric_reason(metric: str, v: float, positive: bool) -> str | None:
    if math.isnan(v):
        return f"{metric} is missing/NaN"
    if math.isinf(v):
        return f"{metric} = {v:g} (not finite)"
    if positive and v <= 0:
        return f"{metric} = {v:g} <= 0 ({'a loss' if 'loss' in metric else 'the metric'} must be positive)"
    return None


def _size_reason(col: str, v: float) -> str | None:
    if math.isnan(v):
        return None if col in MISSING_OK else f"{col} is missing"
    if math.isinf(v):
        return f"{col} = {v:g} (not finite)"
    return f"{col} = {v:g} <= 0 (must be positive)" if v <= 0 else None


def _leave_out(df: pd.DataFrame, reasons: pd.Series, skipped: list[dict[str, str]]) -> pd.DataFrame:
    """The rows without a reason; every row with one goes to `skipped` (never dropped silently)."""
    bad = reasons.notna().to_numpy()
    sources = df["source"] if "source" in df else pd.Series("", index=df.index)
    keys = df["run_key"] if "run_key" in df else pd.Series("", index=df.index)
    skipped += [{"source": str(s), "run_key": str(k), "reason": r}
                for s, k, r in zip(sources[bad], keys[bad], reasons[bad], strict=True)]
    return df[~bad]


# ----------------------------------------------------------------------------- external tables


def parse_map(text: str) -> dict[str, str]:
    """`theirs=ours,theirs2=ours2` as {theirs: ours}. A malformed entry is a one-line FitError rather than
    a dict() traceback, and two columns mapped to one name would silently shadow each other."""
    mapping: dict[str, str] = {}
    for entry in (e.strip() for e in text.split(",")):
        if not entry:
            continue
        theirs, eq, ours = (s.strip() for s in entry.partition("="))
        if not (eq and theirs and ours) or "=" in ours:
            raise FitError(f"--map: {entry!r} is not theirs=ours (e.g. {MAP_EXAMPLE})")
        if theirs in mapping:
            raise FitError(f"--map: {theirs!r} is mapped twice ({theirs}={mapping[theirs]} and {entry})")
        mapping[theirs] = ours
    _check_targets(mapping)
    return mapping


def _check_targets(mapping: Mapping[str, str]) -> None:
    seen: dict[str, str] = {}
    for theirs, ours in mapping.items():
        if ours in seen:
            raise FitError(f"--map: {seen[ours]!r} and {theirs!r} both map to {ours!r}")
        seen[ours] = theirs


def load_table(path: str | Path, column_map: Mapping[str, str] | None = None, *, metric: str = METRIC_DEFAULT,
               **defaults: Any) -> Collected:
    """Runs logged by other tools: a CSV/TSV/JSON(L)/Parquet table whose columns are renamed with
    `column_map` ({their name: ksir name}, e.g. {"params": "n_params", "loss": "val_loss"}; nested JSON
    keys are joined with "."). Exact duplicate rows are collapsed, known numeric columns must hold
    numbers, `total_bits` is derived as n_params * bits and `train_tokens` as train_flops / (6 n_params)
    when missing, `defaults` fill constant columns.
    Row numbers (in messages and run keys `<stem>-<row>`) count data rows from 1, as a user sees them."""
    path = Path(path)
    mapping = dict(column_map or {})
    _check_targets(mapping)
    df = _read_table(path)
    _check_map(mapping, df.columns, path)
    df, skipped = _collapse_duplicates(df, path)
    df = _to_numbers(df.rename(columns=mapping), path, {v: k for k, v in mapping.items()}, metric)
    for k, v in defaults.items():
        if k not in df:
            df[k] = v
    if "total_bits" not in df and {"n_params", "bits"} <= set(df):
        df["total_bits"] = df["n_params"] * df["bits"]
    if "train_tokens" not in df and {"n_params", "train_flops"} <= set(df):  # tables that give compute, C = 6ND
        df["train_tokens"] = df["train_flops"] / (6 * df["n_params"])
    df["source"] = str(path)
    if "run_key" not in df:
        df["run_key"] = [f"{path.stem}-{i + 1}" for i in df.index]
    if "job" not in df:
        df["job"] = "quantize"
    if "status" not in df:
        df["status"] = "done"
    return clean(df, skipped, metric=metric)


def _read_table(path: Path) -> pd.DataFrame:
    """The file as a flat DataFrame (nested dicts as "a.b" columns) with row i at index i - 1."""
    suffix = path.suffix.lower()
    if suffix not in TABLE_FORMATS:
        raise FitError(f"{path}: unsupported table format {path.suffix or '(no extension)'!r}; "
                       f"supported: {', '.join(TABLE_FORMATS)}")
    if not path.is_file():
        raise FitError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise FitError(f"{path}: the file is empty")
    try:
        df = _READERS[suffix](path)
    except FitError:
        raise
    except (ValueError, OSError, ImportError) as e:  # parser errors (pandas, json, pyarrow) are ValueErrors
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise FitError(f"{path}: cannot read as {FORMAT_NAMES[suffix]}: {first}") from e
    if df.empty:
        raise FitError(f"{path}: the table has no runs")
    return _flatten(df).reset_index(drop=True)


def _read_csv(path: Path, sep: str = ",") -> pd.DataFrame:
    df = pd.read_csv(path, sep=sep)
    return df.rename(columns=lambda c: c.strip() if isinstance(c, str) else c)  # "a, b" headers


def _read_json(path: Path) -> pd.DataFrame:
    """A list of (nested) run dicts, or a dict in one of the orientations pd.read_json reads."""
    data = json.loads(path.read_text())
    if isinstance(data, list):
        return _runs_frame(data, path, "run")
    if not isinstance(data, dict):
        raise FitError(f"{path}: expected a list of runs or a dict of columns, not a JSON {type(data).__name__}")
    orient = "split" if {"columns", "data"} <= set(data) else "table" if {"schema", "data"} <= set(data) else None
    return pd.read_json(io.StringIO(json.dumps(data)), orient=orient)


def _read_jsonl(path: Path) -> pd.DataFrame:
    runs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                runs.append(json.loads(line))
            except ValueError as e:
                raise FitError(f"{path}: cannot read as JSONL: line {n}: {e}") from e
    return _runs_frame(runs, path, "line")


def _runs_frame(runs: list[Any], path: Path, what: str) -> pd.DataFrame:
    for i, run in enumerate(runs, 1):
        if not isinstance(run, dict):
            raise FitError(f"{path}: {what} {i} is not a JSON object (a run), but {run!r:.40}")
    return pd.json_normalize(runs, sep=".")


_READERS = {".csv": _read_csv, ".tsv": lambda p: _read_csv(p, "\t"), ".json": _read_json, ".jsonl": _read_jsonl,
            ".parquet": pd.read_parquet}


def _flatten(df: pd.DataFrame) -> pd.DataFrame:
    """Dict cells (JSON dict orientations, Parquet structs) as "a.b" columns, like nested JSON runs."""
    has_dicts = any(df[c].dtype == object and df[c].map(lambda v: isinstance(v, dict)).any() for c in df)
    return pd.json_normalize(df.to_dict("records"), sep=".") if has_dicts else df


def _check_map(mapping: Mapping[str, str], columns: Iterable[Any], path: Path) -> None:
    """Every --map key names a column, and no target collides with a column that is kept."""
    have = [str(c) for c in columns]
    missing = [k for k in mapping if k not in have]
    if missing:
        names = sorted(have)
        listed = ", ".join(names[:MAX_LISTED]) + (f", ... ({len(names) - MAX_LISTED} more)"
                                                   if len(names) > MAX_LISTED else "")
        what = "column" if len(missing) == 1 else "columns"
        raise FitError(f"--map: no {what} {', '.join(map(repr, missing))} in {path}; columns are: {listed}")
    for theirs, ours in mapping.items():
        if ours in have and ours not in mapping:
            raise FitError(f"--map: {theirs}={ours} collides with the column {ours!r} that {path} already has")


def _collapse_duplicates(df: pd.DataFrame, path: Path) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Rows identical in every column are one run logged twice: keep the first, report the others."""
    hashable = df.apply(lambda col: col.map(_hashable) if col.dtype == object else col)
    groups = hashable.groupby(list(hashable.columns), dropna=False, sort=False).ngroup().to_numpy()
    first: dict[int, int] = {}
    dup = np.zeros(len(df), bool)
    skipped = []
    for i, g in enumerate(groups):
        if g in first:
            dup[i] = True
            key = df["run_key"].iloc[i] if "run_key" in df else f"{path.stem}-{i + 1}"
            skipped.append({"source": str(path), "run_key": str(key),
                            "reason": f"exact duplicate of row {first[g] + 1} (collapsed)"})
        else:
            first[g] = i
    return df[~dup], skipped


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True, default=str) if isinstance(v, list | dict | np.ndarray) else v


def _to_numbers(df: pd.DataFrame, path: Path, theirs: Mapping[str, str], metric: str) -> pd.DataFrame:
    """Known numeric columns as floats; empty cells become NaN (left out later, with a reason), anything
    else that is not a number names the file, row, column and value."""
    for col in df.columns:
        if not (col in NUMERIC_COLUMNS or col == metric or str(col).startswith(NUMERIC_PREFIXES)):
            continue
        if pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col]):
            df[col] = df[col].astype(float)
            continue
        values = []
        for i, v in df[col].items():
            try:
                values.append(_number(v))
            except (TypeError, ValueError):
                name = theirs.get(col, col)
                label = repr(name) if name == col else f"{name!r} ({col})"
                shown = str(v) if isinstance(v, str) else v
                raise FitError(f"{path} row {i + 1}, column {label}: {shown!r} is not a number") from None
        df[col] = pd.Series(values, index=df.index, dtype=float)
    return df


def _number(v: Any) -> float:
    """A cell as a float: numbers and numeric strings ("1e9", " 3.5 "); empty cells are NaN."""
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return math.nan
    if isinstance(v, bool | np.bool_):
        raise ValueError(v)
    if isinstance(v, int | float | np.integer | np.floating):
        return float(v)
    if isinstance(v, str):
        return float(v.strip()) if v.strip() else math.nan
    raise TypeError(v)


def load_wandb(project: str, filters: Mapping[str, Any] | None = None, group: str | None = None,
               api: Any = None, metric: str = METRIC_DEFAULT) -> Collected:
    """Runs of a W&B project ("entity/project") through the public API (online runs only).

    The run summary holds the record's scalar fields and metrics (ksir mirrors them there),
    the run config the resolved job config; `api` can be injected (tests)."""
    if "/" not in project.strip("/"):
        raise FitError(f"--wandb {project!r}: expected entity/project (e.g. me/ksir)")
    if api is None:
        api = _wandb_api(project)
    flt = dict(filters or {})
    if group:
        flt["group"] = group
    rows = []
    try:
        for run in api.runs(project, filters=flt or None):
            rec = from_wandb(run.id, dict(run.summary), dict(run.config), run.state,
                             str(getattr(run, "created_at", "")))
            rows.append(flat_row(rec, f"wandb:{project}/{run.id}"))
    except FitError:
        raise
    except Exception as e:  # noqa: BLE001 - the API raises many types (HTTP, auth, value); the user needs one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise FitError(f"--wandb {project}: the W&B API refused or failed ({first})") from None
    if not rows:
        raise FitError(f"--wandb {project}: no runs" + (" match the filter" if flt else ""))
    return clean(pd.DataFrame(rows), metric=metric)


WANDB_TIMEOUT_S = 20  # per API request; the reachability probe below fails in 5 s without network


def _wandb_api(project: str) -> Any:
    """A W&B public API client, or a one-line FitError when the user is not logged in or the server cannot
    be reached (W&B's client would retry for a minute, then print a traceback)."""
    import socket
    from urllib.parse import urlparse

    from ksir.tracking import has_credentials

    if not has_credentials():
        raise FitError(f"--wandb {project}: not logged in to W&B (run `wandb login` or set WANDB_API_KEY); "
                       "local result folders and --table need no login")
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host, port = url.hostname or "api.wandb.ai", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as e:
        raise FitError(f"--wandb {project}: W&B server {host}:{port} unreachable ({e.strerror or e}); "
                       "fit local result folders instead, or retry when online") from None
    import wandb

    return wandb.Api(timeout=WANDB_TIMEOUT_S)


def select(df: pd.DataFrame, where: Mapping[str, Any]) -> pd.DataFrame:
    """Rows matching every {column: value or list of values} (values compared as strings)."""
    for col, want in where.items():
        if col not in df:
            raise KeyError(f"no column {col!r} to filter on (have {sorted(df.columns)})")
        wants = {str(w) for w in (want if isinstance(want, list | tuple | set) else [want])}
        df = df.loc[df[col].map(lambda v, w=wants: _norm(v) in w).astype(bool)]
    return df


def _norm(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v) and v.is_integer():
        return str(int(v))
    return str(v)


def to_json_rows(df: pd.DataFrame) -> list[dict[str, Any]]:
    return json.loads(df.to_json(orient="records"))
