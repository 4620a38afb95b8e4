"""Byte-compile the modules ksir's jobs and tests import, once, at setup (`make setup` runs this).

Packages are installed without byte-compiling (pip compiles every file it installs, about a minute for torch,
transformers and the rest, most of which no job imports). Instead, two processes import what jobs, fits and the
tests use, with bytecode writing on, so the .pyc files of exactly those modules land in the venv's __pycache__
folders: a later process reads them even where PYTHONDONTWRITEBYTECODE is set (as on ksir's CI machines), and
`make test` / `make demo` let Python cache whatever else is imported on first use.

Best effort: a module that does not import here (an optional backend) is skipped; its own import says why.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Two groups that import little of each other, compiled side by side (one per core of a 2-core machine).
GROUPS = (
    ["torch", "transformers", "transformers.models.llama.modeling_llama", "transformers.models.gpt_neox.modeling_gpt_neox",
     "transformers.models.qwen2.modeling_qwen2", "transformers.models.gpt2.modeling_gpt2", "pytorch_lightning",
     "torchao", "unit_scaling", "hqq", "bitsandbytes", "lm_eval", "ksir.train", "ksir.checkpoints", "ksir.jobs"],
    ["wandb", "wandb.sdk", "datasets", "pandas", "scipy.optimize", "scipy.stats", "scipy.signal", "matplotlib.pyplot",
     "hydra", "hydra._internal.utils", "omegaconf", "submitit", "joblib", "tokenizers", "hypothesis", "pytest",
     "analysis.cli", "analysis.report"],
)


def _child(names: list[str]) -> int:
    import contextlib
    import importlib
    import warnings

    warnings.simplefilter("ignore")
    for name in names:
        with contextlib.suppress(Exception):  # an optional package that does not import is not setup's failure
            importlib.import_module(name)
    return 0


def main() -> int:
    if len(sys.argv) > 1:
        return _child(sys.argv[1:])
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    procs = [subprocess.Popen([sys.executable, __file__, *g], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for g in GROUPS]
    for p in procs:
        p.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
