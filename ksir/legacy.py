"""Run keys as ksir wrote them in schema-1 records (before typed identities), frozen.

Used only to find what an earlier version wrote: a schema-1 record or own-family checkpoint of the same
job is adopted instead of being recomputed (`ksir.jobs`, `ksir.records.upgrade`). It hashes the resolved
config sections as they were composed then; do not change it. Config keys added after schema 1 must be
listed in `ADDED_AFTER_V1` so that they do not change these keys.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from ksir.families import get_family

KEY_SECTIONS = {"train": ("model", "data", "trainer", "eval", "seed", "qat"),
                "quantize": ("model", "data", "quant", "eval", "seed")}
NON_RESULT_KEYS = {"model": ("train_if_missing", "cache_base"), "eval": ("batch_size", "device"),
                   "trainer": ("lightning", "checkpoint_every_n_steps", "compile")}
ADDED_AFTER_V1: dict[str, tuple[str, ...]] = {"quant": ("backend", "measure", "lowrank", "heal", "act", "kv",
                                                        "rotate", "layer_bits", "allocate",
                                                        "smooth", "attention"),
                                              "model": ("parametrization",),
                                              "trainer": ("matmul_precision", "matmul_scaling")}  # keys v1 never saw


def v1_run_key(raw: dict[str, Any], job: str | None = None) -> str:
    """The schema-1 `run_key` of a resolved config (a plain dict, without `hydra`)."""
    job = job or raw["job"]
    c = copy.deepcopy(raw)
    ident: dict[str, Any] = {"job": job}
    for sec in KEY_SECTIONS[job]:
        val = c.get(sec)
        if isinstance(val, dict):
            val = {k: v for k, v in val.items()
                   if k not in NON_RESULT_KEYS.get(sec, ()) and k not in ADDED_AFTER_V1.get(sec, ())}
        ident[sec] = val
    for sec in ("quant", "qat"):
        q = ident.get(sec)
        if isinstance(q, dict) and q.get("dtype") != "int_asym":
            q.pop("zero_point", None)
    zs = ident["eval"].pop("zeroshot", None) or {}
    if zs.get("enabled"):
        ident["eval"]["zeroshot"] = {k: v for k, v in zs.items() if k != "batch_size"}
    if not (ident.get("qat") or {}).get("enabled"):
        ident.pop("qat", None)
    if job == "train":
        ident["model"] = {k: ident["model"][k] for k in ("family", "size")}
        ident["trainer"]["lightning_precision"] = c["trainer"]["lightning"].get("precision")
    elif not c["model"].get("checkpoint") and get_family(c["model"]["family"]).kind == "own":
        ident["base_model"] = v1_run_key(raw, "train")
    blob = json.dumps(ident, sort_keys=True, default=str)
    return f"{job[0]}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"
