"""A job's identity: same key <=> same result (up to hardware nondeterminism), and the paths named after it.

The key hashes a normalised description of what changes the result, built from a `JobSpec`:
- numbers are normalised (4 == 4.0), resolved defaults are spelled out (float exponent bits per k, the
  QAT quantizer), and fields that do not apply to the chosen method, data type, granularity, data source
  or logger are left out;
- a field equal to its dataclass default is left out, so adding a field with a default leaves every
  existing key unchanged (tests pin the defaults: changing one is a new field, not an edit);
- every 16-bit quantize job of one base model is one job (analysis attaches it to every scheme's curve);
- the weights a train job produces are named by the *model* key (family, size, data, trainer, seed, QAT),
  so a quantize job finds its base model whatever evaluation settings the train job had.

Keys of schema-1 records (`ksir.legacy`) are still found: see `legacy_*` below and `ksir.records.upgrade`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from ksir.integrity import verify_checkpoint
from ksir.quant.vocab import REFERENCE_BITS
from ksir.spec import DataSpec, EvalSpec, JobSpec


def canon(value: Any) -> Any:
    """JSON-ready value with integral floats as ints (4.0 -> 4) and mappings in key order."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else value
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return {str(k): canon(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [canon(v) for v in value]
    if dataclasses.is_dataclass(value):
        return canon(dataclasses.asdict(value))  # type: ignore[arg-type]
    return str(value)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def non_default(obj: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The fields of a dataclass that differ from their default (nested dataclasses likewise), normalised."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        if f.name in drop or not f.compare:
            continue
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            sub = non_default(v)
            if sub:
                out[f.name] = sub
            continue
        if canon(v) != canon(_default(f)):
            out[f.name] = canon(v)
    return out


def hash_identity(kind: str, ident: dict[str, Any]) -> str:
    """The key of an identity: `<kind>-` + 16 hex digits of its canonical JSON's sha256."""
    return _hash(kind, ident)


def _hash(kind: str, ident: dict[str, Any]) -> str:
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"))
    return f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


# ----------------------------------------------------------------------------- sections


def data_identity(d: DataSpec) -> dict[str, Any]:
    per_source = {"embedded": ("path", "name", "text_column", "files", "format"),
                  "hub": ("max_documents", "files", "format"),
                  "files": ("max_documents", "path", "name")}
    ident = non_default(d, drop=per_source.get(d.source, ()))
    if d.source == "files":
        ident["files"] = canon({s: str(Path(p).expanduser().absolute()) for s, p in d.file_paths()})
    if d.tokenizer.kind != "bytes":
        ident.get("tokenizer", {}).pop("vocab_size", None)
    ident["source"] = d.source  # always named: the default source must not look like "any source"
    return ident


def eval_identity(e: EvalSpec) -> dict[str, Any]:
    ident = non_default(e, drop=("batch_size", "device", "zeroshot"))
    if e.zeroshot.enabled:  # a disabled zero-shot block changes nothing; its batch size never does
        ident["zeroshot"] = canon({k: v for k, v in dataclasses.asdict(e.zeroshot).items() if k != "batch_size"})
    return ident


def trainer_identity(spec: JobSpec) -> dict[str, Any]:
    t = spec.trainer
    ident = non_default(t, drop=("checkpoint_every_n_steps", "compile", "lightning"))
    if not t.matmul_precision.startswith("fp8"):
        ident.pop("matmul_scaling", None)  # only FP8 is scaled
    lightning = {k: canon(t.lightning[k]) for k in ("precision", "gradient_clip_val", "accumulate_grad_batches")
                 if t.lightning.get(k) is not None}
    if lightning:
        ident["lightning"] = lightning
    return ident


def qat_identity(spec: JobSpec) -> dict[str, Any] | None:
    q = spec.qat
    if not q.enabled:
        return None  # plain training keeps its key (and its checkpoint)
    ident = _applicable(q)
    ident["quantizer"] = q.resolved_quantizer()
    ident["bits"] = canon(q.bits)
    return ident


def _applicable(q: Any) -> dict[str, Any]:
    """A weight format's non-default settings that apply to it (`applies()`), the float type's exponent bits
    resolved (the default per k spelled out)."""
    ident = non_default(q)
    for key, applies in q.applies().items():
        if not applies:
            ident.pop(key, None)
    if (e := q.resolved_exponent_bits()) is not None:
        ident["exponent_bits"] = e
    return ident


def quant_identity(spec: JobSpec) -> dict[str, Any]:
    q = spec.quant
    if q.unquantized:
        return {"bits": REFERENCE_BITS}  # the unquantized baseline: one per base model
    precisions = _precision_identity(q)
    if not q.weights_quantized:  # 16-bit weights, k-bit activations or cache: the weights' scheme is no part of it
        return {"bits": REFERENCE_BITS, **precisions}
    ident = {**_applicable(q), **precisions}
    if q.outlier.mode == "none":
        ident.pop("outlier", None)
    if q.lowrank.mode == "factorize":  # the factor storage follows quant.bits; whitening applies to corrections
        for key in ("bits", "whiten"):
            ident.get("lowrank", {}).pop(key, None)
    ident.update(bits=canon(q.bits), dtype=q.dtype, method=q.method)  # always named
    return ident


def _precision_identity(q: Any) -> dict[str, Any]:
    """Activations, KV cache and k-SIR attention where quantized (float exponent bits resolved), and the rotation."""
    ident: dict[str, Any] = {}
    for name in ("act", "kv"):
        sub = getattr(q, name)
        if sub.on:
            d = non_default(sub)
            d.pop("exponent_bits", None)
            if (e := sub.resolved_exponent_bits()) is not None:
                d["exponent_bits"] = e
            if name == "kv" and sub.cache == "simulated":  # what a real cache's measurement reads
                d.pop("residual", None)
                d.pop("sequences", None)
            if name == "act" and sub.scales == "static":
                d["calib_sequences"] = canon(q.calib_sequences)
            ident[name] = {**d, "bits": canon(sub.bits)}
    if q.rotate != "none":
        ident["rotate"] = q.rotate
    if q.smooth.method != "none":
        sm = {"method": q.smooth.method, "alpha": canon(q.smooth.resolved_alpha()),
              "calib_sequences": canon(q.calib_sequences)}
        if q.smooth.method == "awq" and q.smooth.alpha is None:
            sm["grid"] = canon(q.smooth.grid)
        ident["smooth"] = sm
    if q.attention.on:  # k-SIR attention: fixed scales from the calibration data, or then learned
        a = q.attention
        ident["attention"] = {"bits": canon(a.bits), "learn": a.learn, "calib_sequences": canon(q.calib_sequences),
                              **({"steps": canon(a.steps), "lr": canon(a.lr), "batch_size": canon(a.batch_size)}
                                 if a.learn else {})}
    if q.layer_bits:  # rules in order (a later rule wins), as given
        ident["layer_bits"] = [[rule, canon(k)] for rule, k in q.layer_bits.items()]
    if q.allocate.on:
        ident["allocate"] = {"candidates": sorted(canon(k) for k in q.allocate.candidates),
                             "sequences": canon(q.allocate.sequences), "calib_sequences": canon(q.calib_sequences)}
    return ident


# ----------------------------------------------------------------------------- keys


def model_identity(spec: JobSpec) -> dict[str, Any]:
    """What determines the weights of ksir's own model: family, size, parametrization, data, trainer, seed, QAT."""
    model = {"family": spec.model.family, "size": spec.model.size}
    if spec.model.parametrization != "sp":
        model["parametrization"] = spec.model.parametrization
    ident = {"model": model, "data": data_identity(spec.data),
             "trainer": trainer_identity(spec), "seed": spec.seed}
    qat = qat_identity(spec)
    if qat is not None:
        ident["qat"] = qat
    return ident


def model_key(spec: JobSpec) -> str:
    return _hash("m", model_identity(spec))


def base_identity(spec: JobSpec) -> dict[str, Any]:
    """What a quantize job starts from: ksir's own model (by its model key) or a checkpoint path / hub id."""
    if spec.uses_own_checkpoint:
        return {"model": model_key(base_train_spec(spec))}
    ckpt = spec.model.checkpoint
    if ckpt and spec.model.checkpoint_is_path:
        return {"checkpoint": str(spec.model.local_folder)}
    return {"checkpoint": ckpt or spec.family.size(spec.model.size).hub_id}


def identity(spec: JobSpec) -> dict[str, Any]:
    """The normalised description of what changes a job's result (what `run_key` hashes): its kind's."""
    return spec.kind.call("identity", spec)


def train_identity(spec: JobSpec) -> dict[str, Any]:
    """A train job: the model it builds, and how it is evaluated."""
    return {"job": "train", **model_identity(spec), "eval": eval_identity(spec.eval)}


def quantize_identity(spec: JobSpec) -> dict[str, Any]:
    """A quantize job: its base model, data, evaluation and quantization (with the seed where it draws data)."""
    ident = {"job": "quantize", "base": base_identity(spec), "data": data_identity(spec.data),
             "eval": eval_identity(spec.eval), "quant": quant_identity(spec)}
    q = spec.quant
    from ksir.quant import needs_calibration

    heals = bool(q.heal.steps) and not q.unquantized
    if needs_calibration(q) or heals:
        ident["seed"] = spec.seed  # picks the calibration sequences / the healing batches
    if heals:
        ident["trainer"] = {"lightning_precision": (spec.trainer.lightning or {}).get("precision")}
    return ident


def run_key(spec: JobSpec) -> str:
    """`t-…` (train) or `q-…` (quantize): names the record file and the W&B run."""
    return _hash(spec.kind.key_prefix, identity(spec))


# ----------------------------------------------------------------------------- paths named after identities


def base_train_spec(spec: JobSpec) -> JobSpec:
    """The full-precision train job whose model a quantize job (or a QAT fine-tune with init_from=auto) needs."""
    raw = {**spec.raw, "job": "train", "qat": {"enabled": False}}
    return spec.replace(job="train", qat=dataclasses.replace(spec.qat, enabled=False), raw=raw)


def checkpoint_dir(train: JobSpec) -> Path:
    """Where a train job writes its model (save_pretrained format), named by the model key."""
    return train.paths.checkpoints_dir / f"{train.model.family}-{train.model.size}-{model_key(train)}"


def partial_dir(train: JobSpec) -> Path:
    """Lightning checkpoints of an unfinished train job (for resume), keyed by its model identity."""
    return train.paths.checkpoints_dir / ".partial" / model_key(train)


def legacy_checkpoint_dir(train: JobSpec) -> Path | None:
    """The folder a schema-1 version of ksir wrote for the same train job (None without the raw config)."""
    if not train.raw:
        return None
    from ksir.legacy import v1_run_key

    return train.paths.checkpoints_dir / f"{train.model.family}-{train.model.size}-{v1_run_key(train.raw, 'train')}"


def find_checkpoint(train: JobSpec) -> Path | None:
    """The intact checkpoint of this train job's model, today's folder first, or None."""
    for path in (checkpoint_dir(train), legacy_checkpoint_dir(train)):
        if path is not None and (path / "config.json").is_file() and verify_checkpoint(path) is None:
            return path
    return None
