"""The local results store: one self-contained JSON file per run, written atomically. This module alone
knows the record's layout: jobs build records with its constructors, W&B gets `to_wandb_summary` (and
`from_wandb_summary` turns a finished W&B run back into a record), analysis reads `flat_row`.

Record layout (schema 2), one file ``<results_dir>/<run_key>.json``, readable by the group::

    schema: 2
    run_key: str            # ksir.identity.run_key: hash of the normalised identity below
    identity: dict          # what the key hashes (what changes the result)
    legacy_run_keys: [str]  # schema-1 keys of the files this record replaced (kept in `.v1/`)
    status: "done" | "failed"
    job: "train" | "quantize"
    family, size: str
    seed: int               # runs differing only in seed are replicates (ksir-fit resamples them together)
    checkpoint: str         # hub id or local path the job loaded / wrote
    n_params, n_params_nonembedding, n_quantized_params: int
    method: str             # "none" (16-bit), "rtn", "gptq", "qat", "qat-finetune"
    regime: str             # "fp", "ptq", "ptq+kd" (quant.heal), "qat", "qat-finetune"
    bits: float             # k (16 = unquantized baseline, one per base model)
    dtype, granularity: str | None   # "none" / None for the 16-bit baseline
    blocksize: int | None
    act_bits, kv_bits: float  # PTQ with k-bit activations / KV cache only (absent = 16); `precision` has the formats
    rotate: str             # "hadamard" where the quantized layers were rotated (absent = none)
    attention_bits: float   # k-SIR attention's k (PTQ: quant.attention; QAT: qat.attention); attention_learn: bool
    smooth: str             # "smoothquant" / "awq" (absent = none); smooth_layers: each layer's alpha (AWQ: errors)
    kv_bits_per_token: float  # quantize jobs: KV-cache bits of one token (all layers, keys and values, scales)
    kv_cache: dict          # quant.kv.cache=hqq only: loss through the real cache, its simulation and the 16-bit
                            # cache (decoded token by token), decode ms/token and the caches' bytes
    layer_bits: str         # per-layer bits only: the rule ("first=8,last=8", "allocate[2,3,4,8]"); layer_plan
                            # (layer -> k), mean_bits (mean k per quantized weight), layer_sensitivity (allocation)
    total_bits, bits_per_param: float  # weights' storage (activations and KV cache are not stored)
    train_tokens: int
    metrics: {val_loss, val_ppl, val_acc, eval_tokens, zs_*, train_*, quant_time_s, ...}
    resumed_from_step: int  # train jobs that resumed after an interruption (throughput covers the whole run)
    wall_time_s: float      # the job's compute, W&B start-up and finish excluded
    started, created: ISO-8601 UTC
    git_commit, host: str | None
    environment: dict       # ksir.environment.collect(): Python, machine, library versions, the lock, torch's
                            # kernels and threads, git state, and the job's data digests (records since 2026-12)
    error: str | None       # message and traceback of a failed run
    config: dict            # the resolved config as composed

Schema-1 records (no `identity`, keys hashed from the raw config) are upgraded when read (`upgrade`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ksir import environment
from ksir.locks import StorageError, flock, storage_error
from ksir.quant.vocab import REFERENCE_BITS, is_baseline

if TYPE_CHECKING:
    from ksir.spec import JobSpec

SCHEMA_VERSION = 2
SET_ASIDE_DIR = ".set-aside"  # records that do not belong under their file name are moved here, never deleted
STALE_TMP_S = 600  # a record is written in milliseconds: a temp file this old belongs to a killed writer
FAILED_SUFFIX = ".failed.json"  # a failed rerun of a job whose done record is kept
LEGACY_DIR = ".v1"  # schema-1 files replaced by their upgraded record are moved here, never deleted
# Record fields mirrored into the W&B summary next to the metrics (and read back by from_wandb_summary).
SCALARS = ("job", "family", "size", "checkpoint", "n_params", "n_params_nonembedding", "n_quantized_params",
           "method", "regime", "bits", "dtype", "blocksize", "granularity", "total_bits", "bits_per_param",
           "train_tokens", "git_commit", "backend", "packed_format", "measured_bytes", "lowrank_mode", "lowrank_rank",
           "act_bits", "kv_bits", "kv_bits_per_token", "attention_bits", "attention_learn", "rotate", "smooth", "layer_bits", "mean_bits", "parametrization", "matmul_precision", "matmul_scaling", "lr", "seed")


def now() -> str:
    return datetime.now(UTC).isoformat()


# ----------------------------------------------------------------------------- constructors


def new_record(spec: JobSpec, key: str, identity: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every record has, from the job description."""
    return {"schema": SCHEMA_VERSION, "run_key": key, "identity": dict(identity), "job": spec.job,
            "family": spec.model.family, "size": spec.model.size, "seed": spec.seed,
            "git_commit": environment.git_commit(),
            "host": socket.gethostname(), "config": spec.as_dict()}


def training_fields(spec: JobSpec) -> dict[str, Any]:
    """How an own-family model was trained (train jobs, and quantize jobs of ksir's own base models): the
    parametrization, the matmul precision (and its FP8 scaling), the peak learning rate."""
    t = spec.trainer
    return {"parametrization": spec.model.parametrization, "matmul_precision": t.matmul_precision,
            "matmul_scaling": t.matmul_scaling if t.matmul_precision.startswith("fp8") else None,
            "lr": float(spec.qat.lr if spec.kind.trains_with_qat and spec.qat.enabled and spec.qat.lr is not None
                        else t.lr)}


def train_fields(*, checkpoint: str, n_params: int, n_nonemb: int, train_tokens: int, metrics: Mapping[str, Any],
                 resumed_from_step: int | None, spec: JobSpec | None = None) -> dict[str, Any]:
    """A full-precision train job: 16 bits per parameter."""
    return {**(training_fields(spec) if spec is not None else {}), "checkpoint": checkpoint, "n_params": n_params,
            "n_params_nonembedding": n_nonemb,
            "train_tokens": train_tokens, "method": "none", "regime": "fp", "bits": float(REFERENCE_BITS), "dtype": "none",
            "blocksize": None, "granularity": None, "total_bits": float(REFERENCE_BITS) * n_params,
            "bits_per_param": float(REFERENCE_BITS), "n_quantized_params": 0, "metrics": dict(metrics),
            "resumed_from_step": resumed_from_step}


def qat_fields(spec: JobSpec, summary: Any, init_from: str | None, **train: Any) -> dict[str, Any]:
    """A quantization-aware train job: accounted like PTQ at qat.bits."""
    q = spec.qat
    rec = train_fields(**train, spec=spec)
    quantized = q.weights_quantized
    rec.update(method=q.regime, regime=q.regime, bits=summary.bits, dtype=q.dtype if quantized else "none",
               blocksize=q.blocksize if q.granularity == "block" and quantized else None,
               granularity=q.granularity, total_bits=summary.total_bits, bits_per_param=summary.bits_per_param,
               n_quantized_params=summary.n_quantized, quantizer=q.resolved_quantizer() if quantized else None,
               scale=q.scale, act_bits=q.act_bits, attention_bits=summary.attention_bits,
               attention_learn=q.attention.learn if q.attention.enabled else None, init_from=init_from, distill_weight=q.distill.weight, qat=summary.as_dict())
    return rec


def quantize_fields(spec: JobSpec, summary: Any, *, checkpoint: str, n_params: int, n_nonemb: int,
                    train_tokens: int | None, metrics: Mapping[str, Any],
                    deploy: Mapping[str, Any] | None = None,
                    kv_cache: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A post-training-quantized model; the 16-bit baseline is scheme-free (method/dtype "none").

    A packed model (quant.backend != simulated) adds `backend`, `measured_bytes` (the model as stored) and
    `deploy` (every measured figure, and the same figures of the 16-bit model measured in the same process)."""
    q = spec.quant
    baseline = q.unquantized
    lr = q.lowrank
    lowrank = {} if lr.mode == "none" else {
        "lowrank_mode": lr.mode, "lowrank_rank": float(lr.rank),
        **({"lowrank_bits": lr.bits, "lowrank_whiten": lr.whiten} if lr.mode == "correct" else {})}
    packed = {} if deploy is None else {"backend": deploy["backend"], "packed_format": deploy["format"],
                                        "measured_bytes": deploy["bytes"], "deploy": dict(deploy)}
    regime = "ptq+kd" if q.heal.steps and not baseline else "ptq"
    precisions = {f"{name}_bits": float(sub.bits) for name, sub in (("act", q.act), ("kv", q.kv)) if sub.on}
    if precisions:  # the formats in full beside the bit-widths (scales, groups, resolved float exponent bits)
        precisions["precision"] = {name: {**dataclasses.asdict(sub), "exponent_bits": sub.resolved_exponent_bits()}
                                   for name, sub in (("act", q.act), ("kv", q.kv)) if sub.on}
    if q.rotate != "none":
        precisions["rotate"] = q.rotate
    if summary.plan is not None:  # per-layer bits: the rule, each layer's k, their mean per quantized weight
        precisions.update(layer_bits=q.layer_rule(), layer_plan=dict(summary.plan),
                          mean_bits=summary.mean_bits)
        if summary.sensitivity is not None:
            precisions["layer_sensitivity"] = {n: {f"{k:g}": v for k, v in d.items()}
                                               for n, d in summary.sensitivity.items()}
    if q.attention.on:  # k-SIR attention as PTQ: its bits, and whether its scales were learned or fixed
        precisions.update(attention_bits=float(q.attention.bits), attention_learn=bool(q.attention.learn))
    if q.smooth.method != "none":  # SmoothQuant / AWQ: the method and each layer's alpha (AWQ: and its errors)
        precisions.update(smooth=q.smooth.method, smooth_layers=summary.smooth)
    if kv_cache is not None:  # quant.kv.cache: the real quantized cache next to its simulation (ksir.deploy.kvcache)
        precisions["kv_cache"] = dict(kv_cache)
    weights16 = not q.weights_quantized  # scheme-free weights: the baseline's, or k-bit activations/cache alone
    trained = training_fields(spec) if spec.uses_own_checkpoint else {}  # how ksir trained the base model
    return {**trained, **packed, **lowrank, **precisions, "checkpoint": checkpoint, "regime": regime,
            "n_params": n_params, "n_params_nonembedding": n_nonemb,
            "n_quantized_params": summary.n_quantized, "method": "none" if weights16 else q.method,
            "bits": float(q.bits), "dtype": "none" if weights16 else q.dtype,
            "blocksize": q.blocksize if q.granularity == "block" and not weights16 else None,
            "granularity": None if weights16 else q.granularity, "total_bits": summary.total_bits,
            "bits_per_param": summary.bits_per_param, "train_tokens": train_tokens, "quant": summary.as_dict(),
            "metrics": dict(metrics)}


def finish(base: Mapping[str, Any], fields: Mapping[str, Any]) -> dict[str, Any]:
    """The finished record: the job's description (`new_record`), its kind's fields, status done. The job's own
    environment (with the digests of the data it read) when its fields give one, else the process's."""
    return {**base, "environment": environment.collect(), **fields, "status": "done", "error": None, "created": now()}


def failed(base: Mapping[str, Any], error: BaseException) -> dict[str, Any]:
    """The record of a job that raised: the error's message and traceback."""
    import traceback

    return {**base, "environment": environment.collect(), "status": "failed",
            "error": f"{type(error).__name__}: {error}\n{traceback.format_exc()}", "created": now()}


# ----------------------------------------------------------------------------- W&B mirror


def to_wandb_summary(rec: Mapping[str, Any]) -> dict[str, Any]:
    """Scalars and metrics; a packed job's measured figures as the same flat columns ksir-fit reads."""
    deploy = deploy_columns(rec["deploy"]) if rec.get("deploy") else {}
    return {**{k: rec[k] for k in SCALARS if rec.get(k) is not None}, **(rec.get("metrics") or {}), **deploy}


# Where a W&B run's config holds a record field its summary lacks (runs logged by other versions or tools).
CONFIG_FALLBACK = {"family": ("model", "family"), "size": ("model", "size"), "bits": ("quant", "bits"),
                   "dtype": ("quant", "dtype"), "blocksize": ("quant", "blocksize"), "job": ("job",)}


def from_wandb(key: str, summary: Mapping[str, Any], config: Mapping[str, Any], state: str = "finished",
               created: str | None = None) -> dict[str, Any]:
    """A record from a W&B run: its summary mirrors the record's scalars and metrics (`to_wandb_summary`)."""
    rec: dict[str, Any] = {k: summary[k] for k in SCALARS if k in summary}
    for k, path in CONFIG_FALLBACK.items():
        node: Any = config
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if k not in rec and node is not None:
            rec[k] = node
    rec.update(schema=SCHEMA_VERSION, run_key=key, status="done" if state == "finished" else str(state),
               error=None, config=dict(config), source="wandb", created=created or now(),
               metrics={k: v for k, v in summary.items() if k not in SCALARS and not k.startswith("_")})
    return rec


def from_wandb_summary(key: str, summary: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The record of a finished W&B run, or None if it holds no result."""
    return from_wandb(key, summary, config) if "val_loss" in summary else None


# ----------------------------------------------------------------------------- analysis


def flat_row(rec: Mapping[str, Any], source: str) -> dict[str, Any]:
    """One row for analysis: the record's scalars and its metrics as columns, plus `source`."""
    row = {k: v for k, v in rec.items() if not isinstance(v, dict | list) and k != "error"}
    row.update({k: v for k, v in (rec.get("metrics") or {}).items() if not isinstance(v, dict | list)})
    if rec.get("deploy"):
        row.update(deploy_columns(rec["deploy"]))
    if row.get("job") == "quantize":
        row["regime"] = row.get("regime") or "ptq"
    row["backend"] = row.get("backend") or "simulated"  # train jobs (QAT included) simulate their quantization
    # Records from before these fields: every model was trained in the standard parametrization, and ksir's own
    # at fp32 matmuls (how a hub model was trained is not ksir's to say).
    row["parametrization"] = row.get("parametrization") or "sp"
    if not row.get("matmul_precision") and _own_family(row.get("family")):
        row["matmul_precision"] = "fp32"
    if isinstance(rec.get("identity"), Mapping):
        row["config_key"] = config_key(rec["identity"])
    if row.get("seed") is None and isinstance(rec.get("config"), Mapping) and "seed" in rec["config"]:
        row["seed"] = rec["config"]["seed"]  # records before `seed` was a field: the composed config has it
    row["source"] = source
    return row


def config_key(identity: Mapping[str, Any]) -> str:
    """The run's configuration: its identity without any seed, so that runs differing only in seed (of the job,
    or of the base model it quantizes) share one key and analysis treats them as replicates."""
    def strip(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {k: strip(x) for k, x in v.items() if k != "seed"}
        return [strip(x) for x in v] if isinstance(v, list) else v

    blob = json.dumps(strip(identity), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _own_family(name: Any) -> bool:
    from ksir.families import FAMILIES

    return name in FAMILIES and FAMILIES[name].kind == "own"


def deploy_columns(deploy: Mapping[str, Any]) -> dict[str, Any]:
    """A packed job's measured figures as flat columns: `prefill_tokens_per_s`, `decode_ms_b1`, ..., and the
    16-bit reference's as `ref_bytes`, `ref_decode_ms_b1`, ... (same process, same settings)."""
    def flat(d: Mapping[str, Any], prefix: str) -> dict[str, Any]:
        out = {f"{prefix}{k}": v for k, v in d.items() if isinstance(v, int | float | str | bool) or v is None}
        out.update({f"{prefix}decode_ms_b{b}": v for b, v in (d.get("decode_ms_per_token") or {}).items()})
        return out

    cols = flat({k: v for k, v in deploy.items() if k not in ("backend", "format", "bytes")}, "")
    cols.update(flat(deploy.get("reference") or {}, "ref_"))
    for b, ms in (deploy.get("decode_ms_per_token") or {}).items():  # > 1: the packed model decodes faster
        ref = cols.get(f"ref_decode_ms_b{b}")
        cols[f"decode_speedup_b{b}"] = ref / ms if ref and ms else None
    if cols.get("prefill_tokens_per_s") and cols.get("ref_prefill_tokens_per_s"):
        cols["prefill_speedup"] = cols["prefill_tokens_per_s"] / cols["ref_prefill_tokens_per_s"]
    return cols


def is_done(rec: Mapping[str, Any] | None) -> bool:
    """A finished result: status done and a finite validation loss (a NaN result is rerun)."""
    if not rec or rec.get("status") != "done":
        return False
    loss = _num((rec.get("metrics") or {}).get("val_loss"))
    return loss is not None and math.isfinite(loss)


def _num(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


# ----------------------------------------------------------------------------- schema upgrades


def upgrade(rec: dict[str, Any]) -> dict[str, Any]:
    """A record of any schema as schema 2: the key re-derived from its config (so that 4 and 4.0, or two
    16-bit baselines of one model, are one run), 16-bit baselines made scheme-free. Pure: writes nothing."""
    if rec.get("schema", 1) >= SCHEMA_VERSION:
        return rec
    rec = dict(rec)
    rec["schema"] = SCHEMA_VERSION
    try:
        from ksir.identity import identity, run_key
        from ksir.spec import JobSpec

        spec = JobSpec.from_config(rec["config"])
        rec.update(legacy_run_keys=[rec["run_key"]], run_key=run_key(spec), identity=identity(spec))
    except Exception as e:  # noqa: BLE001 - an old config that no longer parses keeps its old key
        rec["upgrade_note"] = f"kept the schema-1 key: {type(e).__name__}: {e}"
    if rec.get("job") == "quantize" and is_baseline(_num(rec.get("bits"))):  # schema-1 baselines had a scheme
        rec.update(method="none", dtype="none", blocksize=None, granularity=None)
    return rec


# ----------------------------------------------------------------------------- files


def _json_safe(value: Any) -> Any:
    """NaN/inf are not valid JSON; store them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def umask() -> int:
    """This process's umask (read without changing it where Linux says it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """Write via a temp file in the same folder + os.replace, so readers never see half a file. The file gets
    the mode any new file of the user gets (0666 under the umask; a group-writable umask shares a cluster
    folder), not mkstemp's private 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_tmp(folder: str | Path, older_than_s: float = STALE_TMP_S) -> list[Path]:
    """Temp files of record writers that were killed mid-write (`.<record>.<random>.tmp`, older than a record
    could take to write): removed. Returns what was removed."""
    gone = []
    now_s = time.time()
    for p in Path(folder).glob(".*.tmp"):
        try:
            if now_s - p.stat().st_mtime > older_than_s:
                p.unlink()
                gone.append(p)
        except OSError:
            continue
    return gone


def record_path(results_dir: str | Path, run_key: str) -> Path:
    return Path(results_dir) / f"{run_key}.json"


def write_record(results_dir: str | Path, record: dict[str, Any]) -> Path:
    """Write a record under its key. A failed record never replaces a done one: it goes beside it."""
    record = {"schema": SCHEMA_VERSION, **record}
    path = record_path(results_dir, record["run_key"])
    if path.exists():
        try:
            if record.get("status") != "done" and is_done(read_record(path)):
                path = Path(results_dir) / f"{record['run_key']}{FAILED_SUFFIX}"
        except NewerRecord:
            raise  # never written over
        except ValueError:
            pass  # a corrupt file is no result to keep
    write_atomic(path, _serialise(record))
    return path


def _serialise(record: dict[str, Any]) -> str:
    return json.dumps(_json_safe({"schema": SCHEMA_VERSION, **record}), indent=2, sort_keys=True, default=str)


def save_or_rescue(results_dir: str | Path, record: dict[str, Any]) -> Path:
    """write_record; if the results folder refuses the file, the record goes into a private folder made for this
    run (mkdtemp: mode 0700, a fresh name nobody can plant) that the error names; if even that fails, the
    record is printed to stderr. A finished result is never lost to a permission or disk problem."""
    try:
        return write_record(results_dir, record)
    except OSError as e:
        why = storage_error(results_dir, f"the record {record['run_key']}.json", e)
        text = _serialise(record)
        try:
            rescue = Path(tempfile.mkdtemp(prefix="ksir-unsaved-")) / f"{record['run_key']}.json"
            with open(rescue, "x") as f:
                f.write(text)
        except OSError:
            print(text, file=sys.stderr, flush=True)
            raise StorageError(e.errno, f"{why}; the record is printed above (stderr): save it as "
                                        f"{record_path(results_dir, record['run_key'])}") from e
        raise StorageError(e.errno, f"{why}; it was saved to {rescue}: move it there once the folder can take "
                                    "it") from e


class NewerRecord(ValueError):
    """A record written by a newer ksir (a schema this version does not know): not read, never rerun over."""


def read_record(path: str | Path) -> dict[str, Any]:
    """Read one record, upgraded to the current schema; ValueError (with the path) for a corrupt or foreign file,
    NewerRecord for one a newer ksir wrote."""
    path = Path(path)
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: unreadable result record ({e})") from e
    if not isinstance(rec, dict) or "run_key" not in rec or "schema" not in rec:
        raise ValueError(f"{path}: not a ksir result record (no schema/run_key)")
    if not isinstance(rec["schema"], int) or rec["schema"] > SCHEMA_VERSION:
        raise NewerRecord(f"{path}: written by a newer ksir (schema {rec['schema']}; this one reads up to "
                          f"{SCHEMA_VERSION}): not read, not rerun over; upgrade ksir to use it")
    return upgrade(rec)


def misplaced(rec: Mapping[str, Any], path: Path) -> str | None:
    """Why a record does not belong under its file name (None: it does): its own run key is another, or its
    stored identity hashes to another key (a record copied under another job's name)."""
    key = path.name.removesuffix(FAILED_SUFFIX).removesuffix(".json")
    if rec.get("run_key") != key:
        return f"it is the record of {rec.get('run_key')!r}"
    ident = rec.get("identity")
    if isinstance(ident, Mapping) and "-" in key and "legacy_run_keys" not in rec and "upgrade_note" not in rec:
        from ksir.identity import hash_identity

        if hash_identity(key.split("-", 1)[0], dict(ident)) != key:
            return "its stored identity hashes to another key"
    return None


def set_aside(results_dir: str | Path, path: Path, why: str) -> Path:
    """Move a record that does not belong where it is into `.set-aside/` (kept, never deleted); one line."""
    dest = Path(results_dir) / SET_ASIDE_DIR / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    print(f"  warning: {path} set aside ({why}; moved to {dest}): the job runs", flush=True)
    return dest


def iter_record_files(results_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(results_dir).glob("*.json") if not p.name.startswith("."))


_SCHEMA1_SEEN: dict[Path, tuple[int, str | None]] = {}  # file -> (mtime_ns, today's key if schema 1)


def schema1_index(results_dir: str | Path) -> dict[str, list[Path]]:
    """{today's key: the schema-1 files of that job} for a folder. Old keys hashed the raw config, so one job
    can have several old files (bits 4 and 4.0, one 16-bit baseline per scheme): all map to one key here.
    Each file is read once per process (and again only if it changes): a lookup costs a directory listing."""
    index: dict[str, list[Path]] = {}
    for f in iter_record_files(results_dir):
        try:
            mtime = f.stat().st_mtime_ns
        except OSError:
            continue
        seen = _SCHEMA1_SEEN.get(f)
        if seen is None or seen[0] != mtime:
            try:
                raw = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            old = isinstance(raw, dict) and "run_key" in raw and raw.get("schema", 1) < SCHEMA_VERSION
            seen = _SCHEMA1_SEEN[f] = (mtime, upgrade(raw)["run_key"] if old else None)
        if seen[1] is not None:
            index.setdefault(seen[1], []).append(f)
    return index


def _best(files: list[Path]) -> dict[str, Any]:
    """The record that stands for several schema-1 files of one job: a done one first, then the newest."""
    return max((read_record(f) for f in files), key=lambda r: (is_done(r), str(r.get("created", ""))))


def adopt(results_dir: str | Path, key: str, files: list[Path]) -> dict[str, Any]:
    """Replace schema-1 files of one job by one schema-2 record under `key` (`_best` of them); the old files
    move into `.v1/`, never deleted. Returns the adopted record."""
    best = {**_best(files), "run_key": key, "legacy_run_keys": sorted(f.stem for f in files)}
    legacy = Path(results_dir) / LEGACY_DIR
    legacy.mkdir(exist_ok=True)
    for f in files:
        os.replace(f, legacy / f.name)
    write_record(results_dir, best)
    return best


def find_record(results_dir: str | Path, key: str, adopt_old: bool = True) -> tuple[dict[str, Any] | None, Path]:
    """(record or None, its path) for a key. Schema-1 records of the same job are adopted on the way
    (`adopt`; `adopt_old=False` only reads them), so a folder written by an earlier version never reruns a
    finished job."""
    path = record_path(results_dir, key)
    if path.exists():
        rec = read_record(path)
        why = misplaced(rec, path)
        if why is None:
            return rec, path
        if not adopt_old:  # a read-only look (the sweep's plan): the job itself sets it aside
            return None, path
        set_aside(results_dir, path, why)
        return None, path
    if not Path(results_dir).is_dir():
        return None, path
    files = schema1_index(results_dir).get(key)
    if not files:
        return None, path
    return (adopt(results_dir, key, files) if adopt_old else _best(files)), path


def migrate(results_dir: str | Path) -> dict[str, list[str]]:
    """Upgrade every schema-1 record of a folder in place (old files kept in `.v1/`): {new key: old keys}."""
    merged = {}
    for key, files in schema1_index(results_dir).items():
        adopt(results_dir, key, files)
        merged[key] = [f.stem for f in files]
    return merged


# ----------------------------------------------------------------------------- one job at a time


def job_lock(results_dir: str | Path, key: str) -> contextlib.AbstractContextManager[None]:
    """Hold the lock of one identity while its job runs: a second process with the same job waits, then finds
    the record (`ksir.locks.flock`: released by the kernel when its holder dies)."""
    return flock(Path(results_dir) / ".locks" / f"{key}.lock", key, what="the job's lock file")
