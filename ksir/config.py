"""Everything checked about a job's config before any compute, and the job's identity.

`validate` raises `ConfigError` (one line: key, bad value, allowed values) for anything that
cannot run, reading at most a config.json; `run_key` hashes the parts of the resolved config
that change the result (not paths, logging or launcher options), so that reruns are idempotent.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ksir.data.corpus import validate_data_config
from ksir.errors import ConfigError
from ksir.families import Family, get_family, linear_row_sizes, own_config
from ksir.zeroshot import validate_zeroshot_config

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
JOBS = ("train", "quantize")
# Config sections that change a job's result, per job kind.
KEY_SECTIONS = {"train": ("model", "data", "trainer", "eval", "seed", "qat"),
                "quantize": ("model", "data", "quant", "eval", "seed")}
# Keys inside those sections that do not change the result.
NON_RESULT_KEYS = {"model": ("train_if_missing", "cache_base"), "eval": ("batch_size", "device"),
                   "trainer": ("lightning", "checkpoint_every_n_steps", "compile")}


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    """A job's config exactly as `ksir-run` builds it, for notebooks and tests (real Hydra composition)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides or []))


def _plain(cfg: Any) -> Any:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg


def run_key(cfg: DictConfig, job: str | None = None) -> str:
    """Deterministic identity of a job: same key <=> same result (up to hardware nondeterminism)."""
    job = job or cfg.job
    c = _plain(cfg)
    ident: dict[str, Any] = {"job": job}
    for sec in KEY_SECTIONS[job]:
        val = c.get(sec)
        if isinstance(val, dict):
            val = {k: v for k, v in val.items() if k not in NON_RESULT_KEYS.get(sec, ())}
        ident[sec] = val
    for sec in ("quant", "qat"):  # the zero-point convention only exists for int_asym: other keys stay as they were
        q = ident.get(sec)
        if isinstance(q, dict) and q.get("dtype") != "int_asym":
            q.pop("zero_point", None)
    zs = ident["eval"].pop("zeroshot", None) or {}
    if zs.get("enabled"):  # a disabled zero-shot block changes nothing; its batch size never does
        ident["eval"]["zeroshot"] = {k: v for k, v in zs.items() if k != "batch_size"}
    if not (ident.get("qat") or {}).get("enabled"):  # plain training keeps its key (and its checkpoint)
        ident.pop("qat", None)
    if job == "train":  # a train job's identity does not depend on how it is later used
        ident["model"] = {k: ident["model"][k] for k in ("family", "size")}
        ident["trainer"]["lightning_precision"] = c["trainer"]["lightning"].get("precision")
    elif not c["model"].get("checkpoint") and get_family(c["model"]["family"]).kind == "own":
        ident["base_model"] = run_key(cfg, "train")  # the own checkpoint is part of what was quantized
    blob = json.dumps(ident, sort_keys=True, default=str)
    return f"{job[0]}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def looks_like_path(s: str) -> bool:
    return s.startswith(("/", ".", "~")) or s.count("/") > 1 or Path(s).exists()


def _row_sizes(cfg: DictConfig, family: Family) -> list[int] | None:
    if family.kind == "own":
        return linear_row_sizes(own_config(family, cfg.model.size, vocab_size=int(cfg.data.tokenizer.get("vocab_size", 257))))
    ckpt = cfg.model.checkpoint or family.size(cfg.model.size).hub_id
    cfg_json = Path(str(ckpt)).expanduser() / "config.json"
    if cfg_json.exists():
        from transformers import AutoConfig

        return linear_row_sizes(AutoConfig.from_pretrained(str(cfg_json.parent)))
    return None  # a hub model: its row sizes are checked once its config is loaded


def validate(cfg: DictConfig) -> None:
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not k.startswith("hydra"))
    if missing:
        raise ConfigError(missing[0], "???", why="a required value is missing; set it on the command line")
    if cfg.job not in JOBS:
        raise ConfigError("job", cfg.job, JOBS)
    family = get_family(cfg.model.family)
    family.size(cfg.model.size)
    validate_data_config(cfg.data)
    ev = cfg.eval
    if int(ev.sequences) < 1:
        raise ConfigError("eval.sequences", ev.sequences, ">= 1")
    if int(ev.batch_size) < 1:
        raise ConfigError("eval.batch_size", ev.batch_size, ">= 1")
    if ev.device not in ("auto", "cpu", "cuda") and not str(ev.device).startswith("cuda:"):
        raise ConfigError("eval.device", ev.device, ["auto", "cpu", "cuda", "cuda:N"])
    validate_zeroshot_config(cfg.eval.get("zeroshot"))
    if cfg.logger.mode not in ("auto", "offline", "online", "disabled"):
        raise ConfigError("logger.mode", cfg.logger.mode, ["auto", "offline", "online", "disabled"])
    if cfg.job == "train" or (family.kind == "own" and not cfg.model.checkpoint):
        validate_trainer(cfg, family)
    if cfg.job == "train":
        from ksir.qat.config import validate_qat_config

        validate_qat_config(cfg.get("qat"), _row_sizes(cfg, family))
    if cfg.job == "quantize":
        from ksir.quant import QuantConfig, validate_quant_config

        ckpt = cfg.model.checkpoint
        if ckpt and looks_like_path(str(ckpt)) and not (Path(str(ckpt)).expanduser() / "config.json").exists():
            raise ConfigError("model.checkpoint", str(ckpt), why="no Hugging Face model folder (config.json) there")
        hub_id = None if ckpt and looks_like_path(str(ckpt)) else (ckpt or family.size(cfg.model.size).hub_id)
        if family.kind == "hub" and hub_id and os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(str(hub_id), "config.json"), str):
                raise ConfigError("model.checkpoint", str(hub_id), why="not in the local Hugging Face cache and "
                                  "HF_HUB_OFFLINE is set; point model.checkpoint at a local copy")
        if family.kind == "own" and not ckpt and not cfg.model.train_if_missing:
            from ksir.checkpoints import own_checkpoint_dir

            if not own_checkpoint_dir(cfg).exists():
                raise ConfigError("model.checkpoint", None, why=f"no trained checkpoint at {own_checkpoint_dir(cfg)} "
                                  "and model.train_if_missing=false; run job=train first")
        validate_quant_config(QuantConfig.from_mapping(_plain(cfg.quant)), _row_sizes(cfg, family))


def validate_trainer(cfg: DictConfig, family: Family) -> None:
    if family.kind != "own":
        raise ConfigError("job", "train", why=f"family {family.name!r} is a hub family; train jobs build ksir's own "
                          "families (quantize a hub checkpoint instead)")
    if cfg.data.tokenizer.kind != "bytes":
        raise ConfigError("data.tokenizer.kind", cfg.data.tokenizer.kind, ["bytes"], why="own-family training trains its own tokenizer")
    t = cfg.trainer
    for key in ("tokens_per_param", "batch_size", "lr", "min_steps"):
        if not float(t[key]) > 0:
            raise ConfigError(f"trainer.{key}", t[key], "> 0")
    if t.param_count not in ("total", "nonembedding"):
        raise ConfigError("trainer.param_count", t.param_count, ["total", "nonembedding"])
    if not 0 <= float(t.warmup_fraction) < 1:
        raise ConfigError("trainer.warmup_fraction", t.warmup_fraction, "[0, 1)")
    if t.lightning.accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.lightning.accelerator", t.lightning.accelerator, ["cpu", "auto"],
                              why="no CUDA device on this machine (use trainer=cpu)")
