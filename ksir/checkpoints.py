"""Where checkpoints live and how they are loaded / saved (Hugging Face `save_pretrained` format).

An own-family checkpoint's folder name carries the model key of the train job that made it
(`ksir.identity.checkpoint_dir`), so a quantize job finds exactly the model its config describes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from ksir.identity import base_train_spec, checkpoint_dir, find_checkpoint, model_key
from ksir.locks import flock
from ksir.spec import JobSpec

META_FILE = "ksir_train.json"


def base_checkpoint(spec: JobSpec) -> str:
    """The intact own-family full-precision model a job builds on (today's or a schema-1 folder)."""
    base = base_train_spec(spec)
    found = find_checkpoint(base)
    if found is None:
        raise FileNotFoundError(f"no intact base model at {checkpoint_dir(base)}: its train job has not finished")
    return str(found)


def resolve_checkpoint(spec: JobSpec) -> str:
    """An explicit model.checkpoint, else the own-family model, else the family's hub id."""
    if spec.model.checkpoint:
        folder = spec.model.local_folder
        return str(folder) if folder is not None and folder.exists() else spec.model.checkpoint
    if spec.family.kind == "own":
        return base_checkpoint(spec)
    return spec.family.size(spec.model.size).hub_id


def model_lock(train: JobSpec, shared: bool = False) -> contextlib.AbstractContextManager[None]:
    """The lock of one model (its model key), whichever jobs need it: exclusive while a train job resumes,
    trains and saves it (one builder, nobody resumes from a checkpoint another live job writes), shared while
    a job loads it (never half-replaced under a reader)."""
    key = model_key(train)
    return flock(train.paths.checkpoints_dir / ".locks" / f"{key}.lock", f"model {key}", shared=shared,
                 what="the model's lock file")


def save_checkpoint(model: PreTrainedModel, tokenizer: Any, path: Path, meta: dict[str, Any]) -> None:
    """Write to a temp folder, then rename: a killed job never leaves a half checkpoint. A folder being
    replaced is renamed away first, so the name always points to a whole model (callers hold model_lock)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2, default=str))
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)


class CheckpointUnusable(RuntimeError):
    """A checkpoint that looked intact but cannot be loaded; it has been set aside (renamed)."""


def set_aside(path: Path, problem: str) -> Path:
    """Rename an unusable checkpoint out of the way (kept for inspection, never deleted) and say so in one line."""
    dest = path.with_name(f"{path.name}.unusable-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, dest)
    print(f"  warning: unusable checkpoint set aside: {problem} (moved to {dest})", flush=True)
    return dest


def read_meta(checkpoint: str | Path) -> dict[str, Any]:
    p = Path(checkpoint) / META_FILE
    return json.loads(p.read_text()) if p.exists() else {}


def load_model(checkpoint: str, device: torch.device) -> PreTrainedModel:
    """fp32 weights: quantization is simulated in fp32, so 16-bit means 'unquantized'. A QAT export
    comes back with its learned scales (and activation / k-SIR attention quantization)."""
    from ksir.qat import is_qat_checkpoint, load_qat_model

    if is_qat_checkpoint(checkpoint):
        return load_qat_model(checkpoint, device).eval()
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    return model.to(device).eval()


# PTQ sweeps run many jobs (k, data type, block size) over one checkpoint in one process: keep
# the last base model and a CPU copy of its full-precision weights, and restore them between
# jobs instead of reading and building the model again. One entry only, to bound memory.
_BASE: dict[tuple[str, str, float], tuple[PreTrainedModel, dict[str, torch.Tensor]]] = {}


def _stamp(checkpoint: str) -> float:
    cfg = Path(checkpoint) / "config.json"
    return cfg.stat().st_mtime if cfg.exists() else 0.0  # a retrained local checkpoint invalidates


def load_base_model(checkpoint: str, device: torch.device, cache: bool = True) -> PreTrainedModel:
    """The full-precision model of `checkpoint`, loaded once per process and restored afterwards: its weights, and
    everything a job adds besides them (hooks, `ksir_*` attributes and submodules, the attention implementation).
    A model whose modules a job replaced is read again."""
    key = (str(checkpoint), str(device), _stamp(checkpoint))
    if cache and key in _BASE:
        model, state, shape = _BASE[key]
        if _restore(model, shape):
            model.load_state_dict(state, strict=True)
            return model.eval()
    _BASE.clear()
    model = load_model(checkpoint, device)
    if cache:
        _BASE[key] = (model, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
                      _shape(model))
    return model


def _shape(model: torch.nn.Module) -> dict[str, Any]:
    """What a job may change besides the weights: module types, their hooks, the attention implementation."""
    return {"modules": [(n, type(m)) for n, m in model.named_modules()],
            "hooks": {n: (set(m._forward_hooks), set(m._forward_pre_hooks)) for n, m in model.named_modules()},
            "attn": getattr(model.config, "_attn_implementation", None)}


def _restore(model: torch.nn.Module, shape: dict[str, Any]) -> bool:
    """Undo what jobs add (hooks, ksir_* attributes, the attention implementation); False if modules were replaced."""
    for m in model.modules():
        for name in [a for a in (*m._modules, *vars(m)) if a.startswith("ksir_")]:
            delattr(m, name)
    if [(n, type(m)) for n, m in model.named_modules()] != shape["modules"]:
        return False
    for n, m in model.named_modules():
        fwd, pre = shape["hooks"][n]
        for hooks, keep in ((m._forward_hooks, fwd), (m._forward_pre_hooks, pre)):
            for h in [h for h in hooks if h not in keep]:
                hooks.pop(h)
                m._forward_hooks_with_kwargs.pop(h, None)
                m._forward_hooks_always_called.pop(h, None)
                m._forward_pre_hooks_with_kwargs.pop(h, None)
    if shape["attn"] is not None and getattr(model.config, "_attn_implementation", None) != shape["attn"]:
        model.set_attn_implementation(shape["attn"])
    return True
