"""Zero-shot task accuracy through EleutherAI's lm-evaluation-harness, on the model in memory.

The paper's metric is the mean zero-shot accuracy on LAMBADA (OpenAI), PIQA, HellaSwag and
WinoGrande. We do not re-implement any task: the harness's own task definitions score the
quantized (or QAT) model object directly (`HFLM(pretrained=<model>)`), so there is no
save/reload round trip and the fake-quantized weights are exactly what is evaluated.

Data: `data_dir: null` uses the harness tasks unchanged (hub datasets, needs network or a warm HF
cache). `data_dir: <folder>` (or `shipped`, ksir's own tiny files) renders the YAML templates in
`ksir/tasks/templates/`, which `include` the harness's task YAML and only swap the data source
for local JSON-lines files in the hub datasets' format; those tasks are named `ksir_<task>`.
Metric names do not depend on the data source: `zs_<task>_acc`, ... (see `zeroshot_metrics`).
"""

from __future__ import annotations

import math
import random
import string
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ksir.dataconfig import from_mapping
from ksir.spec import (
    SHIPPED_TASK_DIR,
    ZEROSHOT_LOCAL_PREFIX,
    ZEROSHOT_SHIPPED,
    ZEROSHOT_SPLITS,
    ZeroShotSpec,
)

TASK_SPLITS = ZEROSHOT_SPLITS
PAPER_TASKS: tuple[str, ...] = ("lambada_openai", "piqa", "hellaswag", "winogrande")
LOCAL_PREFIX = ZEROSHOT_LOCAL_PREFIX
SHIPPED = ZEROSHOT_SHIPPED
TASKS_DIR = Path(__file__).resolve().parent / "tasks"
SHIPPED_DATA_DIR = SHIPPED_TASK_DIR
TEMPLATE_DIR = TASKS_DIR / "templates"
# Harness metrics copied into the record (`<metric>,none` in the harness's results).
METRICS = ("acc", "acc_norm", "perplexity")


# ----------------------------------------------------------------------------- config


def _zeroshot_section(cfg: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """Accept the `eval.zeroshot` mapping itself, the `eval` section or a whole job config."""
    if cfg is not None and "eval" in cfg and "enabled" not in cfg:
        cfg = cfg["eval"]
    if cfg is not None and "zeroshot" in cfg and "enabled" not in cfg:
        cfg = cfg["zeroshot"]
    if cfg is not None and "sequences" in cfg:  # an eval section without a zeroshot block
        return None
    return cfg


def resolve_data_dir(data_dir: str | Path | None) -> Path | None:
    return ZeroShotSpec(data_dir=None if data_dir is None else str(data_dir)).resolved_data_dir


def validate_zeroshot_config(cfg: Mapping[str, Any] | None) -> ZeroShotSpec | None:
    """Check `eval.zeroshot` (or a job config / eval section holding it) before any compute: reads no data,
    loads no model. The checks are `ksir.spec.ZeroShotSpec`'s; raises ConfigError naming the key."""
    zs = _zeroshot_section(cfg)
    if zs is None:
        return None
    spec = from_mapping(ZeroShotSpec, zs, "eval.zeroshot")
    spec.check()
    spec.check_files()
    return spec


# ----------------------------------------------------------------------------- tasks


def render_task_yamls(data_dir: str | Path, out_dir: str | Path, tasks: Sequence[str] = PAPER_TASKS) -> Path:
    """Write runnable `ksir_<task>.yaml` files into `out_dir` for `TaskManager(include_path=out_dir)`
    (or `lm_eval --include_path out_dir`): the templates with absolute paths filled in."""
    import lm_eval.tasks

    harness = Path(lm_eval.tasks.__file__).resolve().parent
    root = resolve_data_dir(data_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for t in tasks:
        tmpl = string.Template((TEMPLATE_DIR / f"{LOCAL_PREFIX}{t}.yaml").read_text())
        # Paths go inside double-quoted YAML strings: escape them as JSON strings do.
        text = tmpl.substitute(lm_eval_tasks=_yaml_quoted(harness), data_dir=_yaml_quoted(root))
        (out / f"{LOCAL_PREFIX}{t}.yaml").write_text(text)
    return out


def _yaml_quoted(p: Path) -> str:
    return str(p).replace("\\", "\\\\").replace('"', '\\"')


@contextmanager
def task_setup(zs: ZeroShotSpec) -> Iterator[tuple[Any, list[str]]]:
    """(TaskManager, harness task names to run) for a zero-shot spec; local YAMLs live in a temp folder."""
    from lm_eval.tasks import TaskManager

    tasks = list(zs.tasks)
    if zs.data_dir is None:
        yield TaskManager(), tasks  # indexes the harness's ~15k task YAMLs (~10 s)
        return
    with tempfile.TemporaryDirectory(prefix="ksir-tasks-") as tmp:
        render_task_yamls(zs.data_dir, tmp, tasks)
        yield TaskManager(include_path=tmp, include_defaults=False), [LOCAL_PREFIX + t for t in tasks]


# ----------------------------------------------------------------------------- evaluation


@contextmanager
def _preserved_state(model: torch.nn.Module) -> Iterator[None]:
    """simple_evaluate reseeds python/numpy/torch and HFLM puts the model in eval mode: undo both,
    so that a QAT job that evaluates mid-training continues exactly as it would have."""
    py, np_state, cpu = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    training = model.training
    try:
        yield
    finally:
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        model.train(training)


def harness_lm(model: torch.nn.Module, tokenizer: Any, batch_size: int | str = 32, **kwargs: Any) -> Any:
    """The harness's HF wrapper around the model object as it is in memory (weights, device, dtype).

    Log-softmax runs in float32 so that bf16/fp16 models are scored as precisely as fp32 ones."""
    from lm_eval.models.huggingface import HFLM

    kwargs.setdefault("softmax_dtype", torch.float32)
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, **kwargs)


def run_harness(model: torch.nn.Module, tokenizer: Any, zs: ZeroShotSpec,
                device: str | torch.device | None = None, log_samples: bool = False) -> dict[str, Any]:
    """`lm_eval.simple_evaluate` on the in-memory model; returns the harness's own results dict. The spec was
    checked when it was built; its task files are checked here, before the harness reads them."""
    import lm_eval

    zs.check_files()
    model_device = next(model.parameters()).device
    if device is not None and torch.device(device) != model_device:
        model.to(device)
    try:
        with _preserved_state(model), task_setup(zs) as (tm, names):
            lm = harness_lm(model, tokenizer, zs.batch_size)
            out = lm_eval.simple_evaluate(model=lm, tasks=names, num_fewshot=zs.num_fewshot, limit=zs.limit,
                                          task_manager=tm, bootstrap_iters=0, log_samples=True)
    finally:
        if next(model.parameters()).device != model_device:
            model.to(model_device)
    if not log_samples:
        out = {**out, "samples": {t: [{"acc": s["acc"]} for s in v if "acc" in s] for t, v in out["samples"].items()}}
    return out


def zeroshot_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """Flat record metrics from a harness results dict (local `ksir_` task names map to the harness name).

    zs_<task>_acc / _acc_norm / _perplexity (as the harness reports them), zs_<task>_acc_stderr
    (standard error of the mean over examples), zs_n_<task> (examples scored) and zs_acc_mean,
    the unweighted mean of the per-task accuracies: the paper's y-axis."""
    from lm_eval.api.metrics import mean_stderr

    out: dict[str, float] = {}
    accs = []
    for name, res in results["results"].items():
        task = name.removeprefix(LOCAL_PREFIX)
        for m in METRICS:
            v = res.get(f"{m},none")
            if isinstance(v, (int, float)):
                out[f"zs_{task}_{m}"] = float(v)
        per_example = [float(s["acc"]) for s in results.get("samples", {}).get(name, []) if "acc" in s]
        if len(per_example) > 1:
            out[f"zs_{task}_acc_stderr"] = float(mean_stderr(per_example))
        out[f"zs_n_{task}"] = float(results["n-samples"][name]["effective"])
        if f"zs_{task}_acc" in out:
            accs.append(out[f"zs_{task}_acc"])
    out["zs_acc_mean"] = float(np.mean(accs)) if accs else math.nan
    return out


def evaluate_zeroshot(model: torch.nn.Module, tokenizer: Any, zs: ZeroShotSpec,
                      device: str | torch.device | None = None) -> dict[str, float]:
    """Per-task zero-shot accuracy and their mean for the model as it is in memory (see module doc).

    `zs` is the job's `eval.zeroshot`; device None keeps the model where it is. Returns flat `zs_*` metrics
    (see `zeroshot_metrics`)."""
    t0 = time.time()
    out = zeroshot_metrics(run_harness(model, tokenizer, zs, device))
    out["zs_eval_seconds"] = time.time() - t0
    return out


def rolling_loglikelihoods(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], *,
                           prefix_token_id: int | None = None, max_length: int | None = None,
                           batch_size: int = 32) -> list[tuple[float, int]]:
    """(log-likelihood, tokens scored) per text from the harness's `loglikelihood_rolling` (the
    request perplexity tasks such as wikitext use): every token is predicted, the first one from
    `prefix_token_id` (default: the harness's choice, BOS or EOS), in windows of `max_length`."""
    from lm_eval.api.instance import Instance

    lm = harness_lm(model, tokenizer, batch_size, prefix_token_id=prefix_token_id, max_length=max_length)
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i) for i, t in enumerate(texts)]
    with _preserved_state(model):
        lls = lm.loglikelihood_rolling(reqs, disable_tqdm=True)
    return [(float(ll), len(lm.tok_encode(t))) for ll, t in zip(lls, texts, strict=True)]


def rolling_perplexity(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], **kwargs: Any) -> float:
    """Token-level perplexity of `texts` by the harness's rolling log-likelihood: exp(-sum ll / tokens)."""
    res = rolling_loglikelihoods(model, tokenizer, texts, **kwargs)
    return math.exp(-sum(ll for ll, _ in res) / sum(n for _, n in res))
