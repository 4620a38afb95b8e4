"""What a job needs from this machine, checked before any compute and without writing anything: data files
exist, are not empty and are text (or Parquet), zero-shot task files exist, the corpus has the validation
blocks asked for, a CUDA device exists where one is asked for, a packed backend's library is installed and
runs on the evaluation device, the model to quantize is an intact local folder or a cached hub id, and the
output folders can be created (tried: a probe folder made and removed). Each failure is one ConfigError
naming its key. `ksir.spec` checks the values; this module checks the environment they point at."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from ksir.errors import ConfigError
from ksir.spec import FILE_FORMATS, JobSpec


def _fail(key: str, value: object, allowed: object = None, why: str = "") -> None:
    raise ConfigError(key, value, allowed, why)


def check(spec: JobSpec) -> JobSpec:
    """Raise ConfigError for anything this machine lacks for the job; returns the spec (for chaining)."""
    if spec.data.source == "files":
        for split, p in spec.data.file_paths():
            check_data_file(f"data.files.{split}", Path(p).expanduser(), spec.data.format)
    spec.eval.zeroshot.check_files()
    if spec.data.source == "embedded" and spec.data.tokenizer.kind == "bytes":
        from ksir.data.embedded import validation_block_bound

        bound = validation_block_bound(spec.data.max_documents, spec.data.validation_fraction, spec.data.seq_len)
        if spec.eval.sequences > bound:
            _fail("eval.sequences", spec.eval.sequences, f"<= {bound} (the validation blocks of data.seq_len="
                  f"{spec.data.seq_len} tokens that the corpus can give, at most)")
    if spec.trains and spec.trainer.accelerator in ("gpu", "cuda") or spec.eval.device.startswith("cuda"):
        import torch  # only GPU configs pay for this import

        if not torch.cuda.is_available():
            key = "eval.device" if spec.eval.device.startswith("cuda") else "trainer.lightning.accelerator"
            _fail(key, spec.eval.device if key == "eval.device" else spec.trainer.accelerator, ["cpu", "auto"],
                  why="no CUDA device on this machine (use trainer=cpu)")
    spec.kind.call("preflight", spec)
    for key, folder in (("out_dir", Path(spec.out_dir)), ("paths.results", Path(spec.paths.results)),
                        ("paths.checkpoints", Path(spec.paths.checkpoints))):
        _check_creatable(key, folder.expanduser().absolute())
    return spec


def check_train(spec: JobSpec) -> None:
    """A train job builds its model from data already checked: nothing more of the machine."""


def check_quantize(spec: JobSpec) -> None:
    """A quantize job: a packed backend that can run here, and a model it can load."""
    _check_backend(spec)
    _check_quantize_source(spec)
    if spec.quant.layer_bits:
        _check_layer_rules(spec)


def _check_creatable(key: str, folder: Path) -> None:
    """The folder exists and is writable, or the nearest existing ancestor is a writable folder. Tried, not
    asked: os.access says yes to root on a read-only mount or in /proc, where a folder still cannot be made."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        _fail(key, str(folder), why=f"cannot create the folder: {probe} is not a folder")
    problem = _write_probe(str(probe))
    if problem:
        _fail(key, str(folder), why=f"{probe} is not writable ({problem})")


@functools.lru_cache(maxsize=64)
def _write_probe(folder: str) -> str | None:
    """Why a folder cannot take a new entry (a folder made and removed at once; checked once per process)."""
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".ksir-probe-", dir=folder))
    except OSError as e:
        return e.strerror or str(e)
    return None


def check_data_file(key: str, path: Path, fmt: str | None) -> None:
    """A local data file exists, is not empty, and (for text formats) is text, not binary."""
    if not path.is_file():
        _fail(key, str(path), why="file not found")
    if path.stat().st_size == 0:
        _fail(key, str(path), why="the file is empty")
    fmt = fmt or FILE_FORMATS.get(path.suffix)
    head = path.open("rb").read(65536)
    if fmt == "parquet":
        if not head.startswith(b"PAR1"):
            _fail(key, str(path), why="not a Parquet file (no PAR1 header)")
    elif b"\x00" in head:
        _fail(key, str(path), why=f"a binary file, but data.format is {fmt!r} (text)")
    else:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as e:
            if e.start < len(head) - 4:  # not just a character cut at the 64 KiB boundary
                _fail(key, str(path), why=f"not UTF-8 text (byte {e.start})")


def _check_backend(spec: JobSpec) -> None:
    """A packed backend's library is installed and its kernels run on the evaluation device."""
    from ksir.quant.backends import check_installed, format_for

    if spec.quant.kv.cache != "simulated":
        import importlib.util

        if importlib.util.find_spec(spec.quant.kv.cache) is None:
            _fail("quant.kv.cache", spec.quant.kv.cache, ["simulated"], f"the {spec.quant.kv.cache} package is not "
                  "installed here (pip install 'ksir[deploy]')")
    fmt = format_for(spec.quant)
    if fmt is None:
        return
    check_installed(spec.quant)
    if "cpu" not in fmt.devices:
        dev = spec.eval.device
        if dev == "cpu" or (dev == "auto" and not _cuda_available()):
            _fail("quant.backend", spec.quant.backend, why=f"{fmt.name} runs on {'/'.join(fmt.devices)} only and the "
                  f"evaluation device is {'cpu' if dev == 'cpu' else 'cpu (no CUDA device here)'}; use "
                  "quant.backend=simulated or another format")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _check_layer_rules(spec: JobSpec) -> None:
    """Each per-layer rule names a quantized layer of the architecture (built on the meta device, no weights;
    a hub model's rules are checked once it is loaded, before quantization)."""
    from ksir.quant.layers import rule_plan

    if spec.model.checkpoint and spec.model.checkpoint_is_path:
        where = ("path", str(spec.model.local_folder))
    elif spec.family.kind == "own":
        where = ("own", spec.family.name, spec.model.size)
    else:
        return
    rule_plan(_linear_names(where, tuple(spec.quant.include), tuple(spec.quant.exclude)), spec.quant)


@functools.lru_cache(maxsize=16)
def _linear_names(where: tuple[str, ...], include: tuple[str, ...], exclude: tuple[str, ...]) -> list[str]:
    """The quantized linear layers' names of an architecture, built once per process on the meta device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from ksir.families import get_family, own_config
    from ksir.quant.config import QuantConfig
    from ksir.quant.select import quantized_linear_names

    if where[0] == "path":
        config = AutoConfig.from_pretrained(where[1])
    else:  # names do not depend on the vocabulary
        config = own_config(get_family(where[1]), where[2], vocab_size=256)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return quantized_linear_names(model, QuantConfig(include=list(include), exclude=list(exclude)))


def _check_quantize_source(spec: JobSpec) -> None:
    """The model a quantize job loads: an intact local folder, or a hub id that can be had (own-family base
    models are dependencies: `ksir.jobs.check_dependencies`)."""
    from ksir.integrity import verify_checkpoint

    ckpt = spec.model.checkpoint
    if ckpt and spec.model.checkpoint_is_path:
        folder = spec.model.local_folder
        if not (folder / "config.json").is_file():
            _fail("model.checkpoint", ckpt, why=f"no Hugging Face model folder (config.json) there, nor in "
                  f"its subfolder {spec.model.size}/")
        problem = verify_checkpoint(folder)
        if problem:
            _fail("model.checkpoint", ckpt, why=f"corrupt checkpoint: {problem}")
        return
    family = spec.family
    if family.kind == "hub":
        hub_id = ckpt or family.size(spec.model.size).hub_id
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(str(hub_id), "config.json"), str):
                _fail("model.checkpoint", hub_id, why="not in the local Hugging Face cache and HF_HUB_OFFLINE is "
                      "set; point model.checkpoint at a local copy")
