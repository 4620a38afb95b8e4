"""The local results store: one self-contained JSON file per run, written atomically.

This is the hand-off point of the one-way data flow (config -> run -> record -> analysis):
jobs write records, `analysis` reads them. W&B offline runs cannot be read back through
W&B's public API, so the local store is the primary source for analysis.

Record layout (schema 1), one file ``<results_dir>/<run_key>.json``::

    schema: 1
    run_key: str            # deterministic hash of the result-affecting config
    status: "done" | "failed"
    job: "train" | "quantize"
    family, size: str       # model family and size name
    checkpoint: str         # hub id or local path the job loaded / wrote
    n_params: int           # all parameters (embeddings included)
    n_params_nonembedding: int
    n_quantized_params: int # parameters stored at k bits (0 for a 16-bit baseline)
    method: str             # "none" (train), "rtn", "gptq", ...
    bits: float             # k (16 = unquantized baseline)
    dtype: str              # quantization data type ("int", "nf", ...)
    blocksize: int | None
    total_bits: float       # whole model, quantization constants and 16-bit parts included
    bits_per_param: float   # total_bits / n_params
    train_tokens: int       # tokens the (base) model was trained on, when known
    metrics: {val_loss, val_ppl, val_acc, eval_tokens, ...}
    wall_time_s: float
    git_commit: str | None
    created: ISO-8601 UTC
    error: str | None       # message and traceback of a failed run
    config: dict            # the fully resolved Hydra config
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


def _json_safe(value: Any) -> Any:
    """NaN/inf are not valid JSON; store them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_atomic(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + os.replace, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def record_path(results_dir: str | Path, run_key: str) -> Path:
    return Path(results_dir) / f"{run_key}.json"


def write_record(results_dir: str | Path, record: dict[str, Any]) -> Path:
    record = {"schema": SCHEMA_VERSION, **record}
    path = record_path(results_dir, record["run_key"])
    write_atomic(path, json.dumps(_json_safe(record), indent=2, sort_keys=True, default=str))
    return path


def read_record(path: str | Path) -> dict[str, Any]:
    """Read one record; raises ValueError (with the path) for a corrupt or foreign file."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable result record ({e})") from e
    if not isinstance(rec, dict) or "run_key" not in rec or "schema" not in rec:
        raise ValueError(f"{path}: not a ksir result record (no schema/run_key)")
    return rec


def iter_record_files(results_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(results_dir).glob("*.json") if not p.name.startswith("."))
