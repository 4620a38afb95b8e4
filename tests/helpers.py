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
