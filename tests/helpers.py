"""Run the installed console scripts as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BIN = Path(sys.executable).parent
# Settings that make a train job take seconds (tests only).
TINY = ["data.max_documents=120", "data.seq_len=64", "trainer.tokens_per_param=1", "trainer.batch_size=16",
        "trainer.min_steps=20", "trainer.max_steps=60", "eval.sequences=32"]


def run_cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


ENTRY_POINTS = {"ksir-run": "ksir.cli:main", "ksir-fit": "analysis.cli:main", "ksir-plan": "analysis.plan_cli:main",
                "ksir-repro": "ksir.repro:main", "ksir-migrate": "ksir.cli:migrate_main"}


def run_here(*args: str, cwd: Path, timeout: int | None = None) -> subprocess.CompletedProcess:
    """A console script's entry point called in this process, as `run_cli` runs it in its own: the same argv,
    working folder, exit status and output, without paying torch's import again. For tests whose subject is
    not the process boundary (each entry point keeps at least one real subprocess test). `timeout` is
    accepted for the same call shape and not enforced (pytest-timeout guards the test)."""
    import contextlib
    import importlib
    import io

    module, fn = ENTRY_POINTS[args[0]].split(":")
    entry = getattr(importlib.import_module(module), fn)
    out, err, saved_argv, saved_cwd = io.StringIO(), io.StringIO(), sys.argv, os.getcwd()
    sys.argv = list(args)
    code = 0
    try:
        os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                ret = entry() if args[0] == "ksir-run" else entry(list(args[1:]))
                code = ret if isinstance(ret, int) else 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())
