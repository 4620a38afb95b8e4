"""The typed job description: a Hydra config in, a validated `JobSpec` out. Validation is construction.

    spec = JobSpec.from_config(cfg)   # ConfigError (one line: key, value, what is allowed) or a valid job
    preflight.check(spec)             # ... and one this machine can run (ksir.preflight)

Everything downstream (identity, jobs, training, quantization, evaluation, records) takes a `JobSpec`,
never the raw config. This module imports no torch, transformers, datasets or lm-eval, so `--help`, a
config error and a sweep's pre-flight check cost only Hydra's own start-up (a test checks the imports).

Two kinds of checks, both before any compute:
- values (`from_config`, here): types, ranges, names, combinations; pure, so records written long ago can be
  re-described without their files;
- the environment (`ksir.preflight.check`): files and folders exist and are usable, checkpoints are intact,
  the results folder is writable, a CUDA device exists where one is asked for.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ksir.dataconfig import coerce, from_mapping
from ksir.errors import ConfigError
from ksir.families import Family, get_family, linear_row_sizes
from ksir.kinds import JobKind, kind
from ksir.qat.config import QATConfig, validate_qat_config
from ksir.quant.config import QuantConfig
from ksir.quant.validate import validate_quant_config

# The top-level keys of a composed config (conf/config.yaml): anything else is a typo, refused by name.
TOP_LEVEL = frozenset({"job", "seed", "force", "dry_run", "out_dir", "paths", "model", "data", "quant", "qat",
                       "trainer", "eval", "logger", "plan"})
DATA_SOURCES = ("embedded", "hub", "files")
FILE_FORMATS = {".txt": "text", ".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
LOGGER_MODES = ("auto", "offline", "online", "disabled")
PARAM_COUNTS = ("total", "nonembedding")
TOKENIZER_KINDS = ("bytes", "pretrained")
# Names of the registries in ksir.parametrization / ksir.precision (torch-free here; a test keeps them equal).
PARAMETRIZATIONS = ("sp", "mup", "umup")
MATMUL_PRECISIONS = ("fp32", "bf16", "fp8_e4m3", "fp8_e5m2")
MATMUL_SCALINGS = ("tensor", "none")
# Tasks ksir can run from local files: harness task -> the split the harness evaluates.
ZEROSHOT_SPLITS: dict[str, str] = {"lambada_openai": "test", "piqa": "validation", "hellaswag": "validation",
                                   "winogrande": "validation"}
ZEROSHOT_SHIPPED = "shipped"  # eval.zeroshot.data_dir value for the task files that ship with ksir
ZEROSHOT_LOCAL_PREFIX = "ksir_"
SHIPPED_TASK_DIR = Path(__file__).resolve().parent / "tasks" / "data"


def _fail(key: str, value: Any, allowed: Any = None, why: str = "") -> None:
    raise ConfigError(key, value, allowed, why)


@dataclass(frozen=True)
class ModelSpec:
    family: str = "llama"
    size: str = "xs"
    checkpoint: str | None = None  # a local folder (or a folder of per-size folders) or hub id; null = own / hub
    train_if_missing: bool = True  # quantize jobs of the own family: run the base train job first if needed
    cache_base: bool = True  # PTQ sweeps: keep the fp weights in memory and restore them between jobs
    parametrization: str = "sp"  # own-family training: sp | mup | umup (ksir.parametrization)

    def check(self) -> Family:
        family = get_family(self.family)
        family.size(self.size)
        if self.parametrization not in PARAMETRIZATIONS:
            _fail("model.parametrization", self.parametrization, PARAMETRIZATIONS)
        return family

    @property
    def checkpoint_is_path(self) -> bool:
        s = self.checkpoint or ""
        return s.startswith(("/", ".", "~")) or s.count("/") > 1 or Path(s).expanduser().exists()

    @property
    def local_folder(self) -> Path | None:
        """The model folder a local checkpoint names: the folder itself, or, for a local mirror of a family
        (one folder per size, e.g. pythia/70m, pythia/160m), the subfolder of this size. Lets one sweep over
        sizes point at one mirror: model.checkpoint=/models/pythia model.size=70m,160m."""
        if not (self.checkpoint and self.checkpoint_is_path):
            return None
        folder = Path(self.checkpoint).expanduser().absolute()
        if not (folder / "config.json").is_file() and (folder / self.size / "config.json").is_file():
            return folder / self.size
        return folder


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str = "bytes"  # bytes: ksir's byte-level BPE, trained and saved with the checkpoint | pretrained
    vocab_size: int = 257


@dataclass(frozen=True)
class DataSpec:
    source: str = "embedded"
    seq_len: int = 128
    validation_fraction: float = 0.05
    tokenizer: TokenizerSpec = field(default_factory=TokenizerSpec)
    max_documents: int | None = None  # embedded only
    path: str | None = None  # hub only
    name: str | None = None  # hub only
    text_column: str = "text"  # hub and files
    files: dict[str, Any] | None = None  # files only: {train: path | [paths], validation: ...}
    format: str | None = None  # files only: text | json | parquet | csv (null = from the extension)

    def check(self) -> None:
        if self.source not in DATA_SOURCES:
            _fail("data.source", self.source, DATA_SOURCES)
        if not 0 < self.validation_fraction < 1:
            _fail("data.validation_fraction", self.validation_fraction, "a number in (0, 1)")
        if self.seq_len < 2:
            _fail("data.seq_len", self.seq_len, "an integer >= 2")
        if self.tokenizer.kind not in TOKENIZER_KINDS:
            _fail("data.tokenizer.kind", self.tokenizer.kind, TOKENIZER_KINDS)
        if self.max_documents is not None and self.max_documents < 1:
            _fail("data.max_documents", self.max_documents, "null (all) or an integer >= 1")
        if self.source == "hub" and not self.path:
            _fail("data.path", self.path, why="hub datasets need a dataset path, e.g. wikitext")
        if self.source == "files":
            if not self.files or "train" not in self.files:
                _fail("data.files", self.files, why="needs at least a 'train' entry (and optionally 'validation')")
            if not self.format and Path(self.file_paths()[0][1]).suffix not in FILE_FORMATS:
                _fail("data.format", self.format, sorted(set(FILE_FORMATS.values())),
                      f"cannot infer it from {Path(self.file_paths()[0][1]).suffix!r}")
            if self.format and self.format not in set(FILE_FORMATS.values()):
                _fail("data.format", self.format, sorted(set(FILE_FORMATS.values())))

    def file_paths(self) -> list[tuple[str, str]]:
        """(split, path) for every local file, in config order."""
        return [(split, str(p)) for split, ps in (self.files or {}).items()
                for p in (ps if isinstance(ps, list | tuple) else [ps])]

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainerSpec:
    tokens_per_param: float = 20.0  # token budget D = tokens_per_param * N
    param_count: str = "total"  # N for the budget: total | nonembedding
    batch_size: int = 32
    lr: float = 3.0e-3
    weight_decay: float = 0.1
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_fraction: float = 0.05
    min_steps: int = 10
    max_steps: int | None = None  # null = no cap
    checkpoint_every_n_steps: int = 100  # 0 = no resume checkpoints
    compile: bool = False
    matmul_precision: str = "fp32"  # the blocks' training matmuls: fp32 | bf16 | fp8_e4m3 | fp8_e5m2 (ksir.precision)
    matmul_scaling: str = "tensor"  # fp8 only: tensor (per-tensor scale) | none (plain cast)
    lightning: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        if self.matmul_precision not in MATMUL_PRECISIONS:
            _fail("trainer.matmul_precision", self.matmul_precision, MATMUL_PRECISIONS)
        if self.matmul_scaling not in MATMUL_SCALINGS:
            _fail("trainer.matmul_scaling", self.matmul_scaling, MATMUL_SCALINGS)
        for key in ("tokens_per_param", "batch_size", "lr", "min_steps"):
            if not getattr(self, key) > 0:
                _fail(f"trainer.{key}", getattr(self, key), "> 0")
        if self.weight_decay < 0:
            _fail("trainer.weight_decay", self.weight_decay, ">= 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            _fail("trainer.betas", self.betas, "two numbers in [0, 1)")
        if self.param_count not in PARAM_COUNTS:
            _fail("trainer.param_count", self.param_count, PARAM_COUNTS)
        if not 0 <= self.warmup_fraction < 1:
            _fail("trainer.warmup_fraction", self.warmup_fraction, "[0, 1)")
        if self.max_steps is not None and self.max_steps < 1:
            _fail("trainer.max_steps", self.max_steps, "null (no cap) or an integer >= 1")
        if self.checkpoint_every_n_steps < 0:
            _fail("trainer.checkpoint_every_n_steps", self.checkpoint_every_n_steps, "0 (off) or an integer >= 1")

    @property
    def accelerator(self) -> str:
        return str(self.lightning.get("accelerator", "auto"))


@dataclass(frozen=True)
class ZeroShotSpec:
    enabled: bool = False
    tasks: list[str] = field(default_factory=lambda: list(ZEROSHOT_SPLITS))
    limit: int | None = field(default=None, metadata={"allowed": "null (all examples) or an integer >= 1"})
    batch_size: int | str = 32  # harness batch size, or 'auto'
    data_dir: str | None = None  # null = hub datasets | shipped | <dir>/<task>/<split>.jsonl
    num_fewshot: int = 0

    def check(self) -> None:
        k = "eval.zeroshot"
        if not self.tasks:
            _fail(f"{k}.tasks", self.tasks, sorted(ZEROSHOT_SPLITS), "a non-empty list of task names")
        for t in self.tasks:
            if t in ZEROSHOT_SPLITS or (self.data_dir is None and t in harness_task_names()):
                continue  # local files exist for the paper's tasks; with hub data any harness task runs
            why = ("give the harness task name, without the local prefix" if t.startswith(ZEROSHOT_LOCAL_PREFIX)
                   else "unknown zero-shot task" if self.data_dir is None else "no local task files for it")
            allowed = (sorted(ZEROSHOT_SPLITS) if self.data_dir is not None
                       else f"{', '.join(sorted(ZEROSHOT_SPLITS))} or any lm-evaluation-harness task (with data_dir: null)")
            _fail(f"{k}.tasks", t, allowed, why)
        if len(set(self.tasks)) != len(self.tasks):
            _fail(f"{k}.tasks", list(self.tasks), why="a task is listed twice")
        if self.limit is not None and self.limit < 1:
            _fail(f"{k}.limit", self.limit, "null (all examples) or an integer >= 1", "number of examples per task")
        if not ((isinstance(self.batch_size, int) and self.batch_size >= 1) or self.batch_size == "auto"):
            _fail(f"{k}.batch_size", self.batch_size, "an integer >= 1 or 'auto'")
        if self.num_fewshot < 0:
            _fail(f"{k}.num_fewshot", self.num_fewshot, "an integer >= 0")
        if self.data_dir is not None and self.num_fewshot:
            _fail(f"{k}.num_fewshot", self.num_fewshot, [0], "local task files hold only the evaluated split; "
                  "few-shot examples need the hub datasets (data_dir: null)")

    def check_files(self) -> None:
        if not self.enabled or self.data_dir is None:
            return
        root = self.resolved_data_dir
        for t in self.tasks:
            f = root / t / f"{ZEROSHOT_SPLITS[t]}.jsonl"
            if not f.is_file():
                _fail("eval.zeroshot.data_dir", self.data_dir, why=f"missing {f} (layout: <data_dir>/<task>/<split>.jsonl)")

    @property
    def resolved_data_dir(self) -> Path | None:
        if self.data_dir is None:
            return None
        return SHIPPED_TASK_DIR if self.data_dir == ZEROSHOT_SHIPPED else Path(self.data_dir).expanduser().resolve()

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.lru_cache(maxsize=1)
def harness_task_names() -> frozenset[str]:
    """Task, group and tag names of the installed harness, read off its YAML files without importing it."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    root = Path(next(iter(spec.submodule_search_locations))) / "tasks"
    pattern = re.compile(r"^(?:task|group|tag):\s*['\"]?([\w\-.]+)", re.M)
    return frozenset(n for p in root.rglob("*.yaml") for n in pattern.findall(p.read_text(errors="ignore")))


@dataclass(frozen=True)
class EvalSpec:
    sequences: int = 256  # the first `sequences` validation blocks
    batch_size: int = 32
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    zeroshot: ZeroShotSpec = field(default_factory=ZeroShotSpec)

    def check(self) -> None:
        if self.sequences < 1:
            _fail("eval.sequences", self.sequences, "an integer >= 1")
        if self.batch_size < 1:
            _fail("eval.batch_size", self.batch_size, "an integer >= 1")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            _fail("eval.device", self.device, ["auto", "cpu", "cuda", "cuda:N"])
        self.zeroshot.check()


@dataclass(frozen=True)
class LoggerSpec:
    enabled: bool = True
    mode: str = "auto"  # auto | offline | online | disabled
    project: str = "ksir"
    entity: str | None = None
    group: str | None = None

    def check(self) -> None:
        if self.mode not in LOGGER_MODES:
            _fail("logger.mode", self.mode, LOGGER_MODES)


@dataclass(frozen=True)
class PathsSpec:
    results: str = "outputs/results"
    checkpoints: str = "outputs/checkpoints"
    wandb: str = "outputs"
    cache: str = "~/.cache/ksir"

    @property
    def results_dir(self) -> Path:
        return Path(self.results).expanduser()

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.checkpoints).expanduser().absolute()

    @property
    def cache_dir(self) -> Path:
        return Path(self.cache).expanduser()


@dataclass(frozen=True)
class JobSpec:
    """One job, typed and validated. `raw` is the config as composed, kept only to find what schema-1 ksir wrote
    (its keys hashed the raw config); records and W&B get `as_dict()`."""

    job: str
    model: ModelSpec
    data: DataSpec
    trainer: TrainerSpec
    eval: EvalSpec
    logger: LoggerSpec
    paths: PathsSpec
    quant: QuantConfig
    qat: QATConfig
    seed: int = 0
    force: bool = False
    dry_run: bool = False  # validate and print the plan, run nothing
    out_dir: str = "outputs"
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def family(self) -> Family:
        return get_family(self.model.family)

    @property
    def uses_own_checkpoint(self) -> bool:
        """A quantize job of the own family without an explicit checkpoint quantizes ksir's own train job's model."""
        return self.family.kind == "own" and not self.model.checkpoint

    @property
    def kind(self) -> JobKind:
        """This job's entry in the registry of job kinds (everything kind-specific: ksir.kinds)."""
        return kind(self.job)

    @property
    def trains(self) -> bool:
        """Needs the trainer section: a job that trains (its kind's), or one whose base model is ksir's own."""
        return self.kind.trains_with_qat or self.uses_own_checkpoint

    def as_dict(self) -> dict[str, Any]:
        """The normalised job (every section with its defaults filled in and values typed): what records and
        W&B keep as the job's config. The raw composed config is kept only to find schema-1 results."""
        return {f.name: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
                for f in dataclasses.fields(self) if f.name != "raw" for v in [getattr(self, f.name)]}

    def replace(self, **changes: Any) -> JobSpec:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, cfg: Any) -> JobSpec:
        """Parse and validate a composed config (DictConfig or plain mapping, with or without `hydra`): the values
        only; what the job needs from this machine is `ksir.preflight.check`."""
        raw = {k: v for k, v in plain_config(cfg).items() if k != "hydra"}
        unknown = sorted(set(raw) - TOP_LEVEL)
        if unknown:  # `+sed=3` would otherwise run silently with seed 0
            import difflib

            near = difflib.get_close_matches(unknown[0], sorted(TOP_LEVEL), n=1)
            _fail(unknown[0], raw[unknown[0]], why="unknown key" + (f" (did you mean {near[0]!r}?)" if near else ""),
                  allowed=sorted(TOP_LEVEL))
        job = kind(raw.get("job")).name
        spec = cls(
            job=job,
            model=from_mapping(ModelSpec, raw.get("model"), "model"),
            data=from_mapping(DataSpec, raw.get("data"), "data"),
            trainer=from_mapping(TrainerSpec, raw.get("trainer"), "trainer"),
            eval=from_mapping(EvalSpec, raw.get("eval"), "eval"),
            logger=from_mapping(LoggerSpec, raw.get("logger"), "logger"),
            paths=from_mapping(PathsSpec, raw.get("paths"), "paths"),
            quant=QuantConfig.from_mapping(raw.get("quant")),
            qat=QATConfig.from_mapping(raw.get("qat")),
            seed=coerce(int, raw.get("seed", 0), "seed"),
            force=coerce(bool, raw.get("force", False), "force"),
            dry_run=coerce(bool, raw.get("dry_run", False), "dry_run"),
            out_dir=coerce(str, raw.get("out_dir", "outputs"), "out_dir"),
            raw=raw,
        )
        spec.check()
        return spec

    def check(self) -> None:
        family = self.model.check()
        self.data.check()
        self.eval.check()
        self.logger.check()
        if self.model.parametrization != "sp" and family.kind != "own":
            _fail("model.parametrization", self.model.parametrization, ["sp"],
                  why=f"family {family.name!r} is a hub family: its weights were trained as they are")
        if self.trains:
            if self.data.tokenizer.kind != "bytes":
                _fail("data.tokenizer.kind", self.data.tokenizer.kind, ["bytes"],
                      why="own-family training trains its own tokenizer")
            self.trainer.check()
        self.kind.call("check", self)

    def row_sizes(self) -> list[int] | None:
        """in_features of the linear layers to quantize, from the architecture alone (no weights, no torch)."""
        family = self.family
        if family.kind == "own" and not (self.model.checkpoint and self.model.checkpoint_is_path):
            arch = {**family.base_arch, **family.size(self.model.size).arch}
            return linear_row_sizes(_Namespace(arch))
        local = Path(self.model.checkpoint).expanduser() if self.model.checkpoint else None
        if local is not None and (local / "config.json").is_file():
            try:
                return linear_row_sizes(_Namespace(json.loads((local / "config.json").read_text())))
            except (OSError, ValueError):
                return None  # reported by ksir.preflight
        return None  # a hub model: its row sizes are checked once its config is loaded


def check_train(spec: JobSpec) -> None:
    """What a train job's values must be (its kind's check: ksir.kinds)."""
    family = spec.family
    if family.kind != "own":
        _fail("job", "train", why=f"family {family.name!r} is a hub family; train jobs build ksir's own "
              "families (quantize a hub checkpoint instead)")
    if spec.qat.enabled:
        if spec.model.parametrization != "sp":
            _fail("model.parametrization", spec.model.parametrization, ["sp"], why="QAT trains the standard "
                  "parametrization (train under mup/umup first, then quantize)")
        if spec.trainer.matmul_precision != "fp32":
            _fail("trainer.matmul_precision", spec.trainer.matmul_precision, ["fp32"],
                  why="QAT runs its own fake-quantized matmuls")
    validate_qat_config(spec.qat, spec.row_sizes())


def check_quantize(spec: JobSpec) -> None:
    """What a quantize job's values must be (its kind's check: ksir.kinds)."""
    if spec.quant.heal.steps and not spec.trains:
        spec.trainer.check()  # healing trains through the trainer's Lightning settings
    validate_quant_config(spec.quant, spec.row_sizes())


class _Namespace:
    """Attribute access to a config mapping (what `linear_row_sizes` reads off a transformers config)."""

    def __init__(self, d: Mapping[str, Any]):
        self.__dict__.update(d)

    def __getattr__(self, name: str) -> Any:
        return None


def plain_config(cfg: Any) -> dict[str, Any]:
    """A composed config as a resolved plain dict, without `hydra`; a required value left at ??? is one line."""
    if isinstance(cfg, Mapping) and not hasattr(cfg, "_metadata"):
        return dict(cfg)
    from omegaconf import OmegaConf

    masked = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg
    missing = sorted(OmegaConf.missing_keys(masked))
    if missing:
        _fail(missing[0], "???", why="a required value is missing; set it on the command line")
    return OmegaConf.to_container(masked, resolve=True)  # type: ignore[return-value]
