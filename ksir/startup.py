"""What a ksir process does before its first job imports the ML stack: three costs that are not the job's.

- transformers imports every installed quantization library it integrates with as soon as a model module
  loads: `cache_utils` imports hqq (which imports torch._inductor) and `quantizers` imports torchao, both
  installed with `ksir[deploy]`. ksir does not use those integrations (its packed backends, `ksir.deploy`,
  import the libraries themselves when a job asks for one), so transformers is told they are absent.
- `wandb.init` imports W&B's launch-input models, pydantic classes whose field docs pydantic finds by
  walking the caller's stack with `inspect.getmodule`, which scans `sys.modules` for every frame: slow
  once torch and transformers are loaded (~6,000 modules), cheap before. So they are imported first.
- the usual environment for quiet logs (no progress bars from datasets / hub / tokenizers).

Measured on the 2-core CI machine (`python benchmarks/bench_cli.py --rounds 5`, 2026-11-24): a 16-bit
quantize job of the tiny model takes 10.7 s as a process without the first two and 9.2 s with them (median
ratio of paired rounds 0.84); importing torch and a transformers model alone takes 5.4 s.

`KSIR_PLAIN_STARTUP=1` skips the first two: transformers then keeps its hqq / torchao integrations (e.g. to
load, in a ksir job, a checkpoint that one of those libraries quantized), and the benchmark has its baseline.
"""

from __future__ import annotations

import os
import sys
from typing import Any

PLAIN_ENV = "KSIR_PLAIN_STARTUP"
KEPT_LAZY = ("hqq", "torchao")
KERNEL_CHECKS = tuple(f"is_{m}_available" for m in KEPT_LAZY)  # transformers' availability check of each
WANDB_LAUNCH_MODELS = "wandb.sdk.launch.inputs.internal"


def _absent(*args: object, **kwargs: object) -> bool:
    return False


def keep_kernel_libraries_lazy() -> bool:
    """Make transformers treat hqq and torchao as not installed; True if it now does. A no-op (False) when
    the user opted out, when transformers is missing or has no such checks, or when a transformers model
    module has loaded already (too late: the libraries are imported)."""
    if os.environ.get(PLAIN_ENV) == "1" or any(m in sys.modules for m in ("transformers.modeling_utils",
                                                                            "transformers.cache_utils")):
        return False
    try:
        import transformers.utils as utils
        from transformers.utils import import_utils
    except ImportError:
        return False
    patched = False
    for name in KERNEL_CHECKS:
        for module in (import_utils, utils):  # `from .utils import is_hqq_available` reads the package's copy
            if hasattr(module, name):
                setattr(module, name, _absent)
                patched = True
    return patched


def preload_wandb(logger: Any) -> None:
    """Import W&B's launch-input models while few modules are loaded, when this job logs to W&B."""
    from ksir.tracking import resolve_mode

    if (os.environ.get(PLAIN_ENV) == "1" or not logger.enabled or resolve_mode(logger.mode) == "disabled"
            or WANDB_LAUNCH_MODELS in sys.modules):
        return
    try:
        import importlib

        importlib.import_module(WANDB_LAUNCH_MODELS)
    except Exception:  # noqa: BLE001 - a W&B without this module (or a broken one) is tracking's business
        pass


def prepare(logger: Any) -> None:
    """Everything above, once per process (each call after the first costs nothing)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from ksir import quiet

    quiet.apply()
    preload_wandb(logger)
    keep_kernel_libraries_lazy()
