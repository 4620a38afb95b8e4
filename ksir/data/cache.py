"""Arrow caches shared by parallel jobs: built once, under a lock, and published by a rename.

`datasets.save_to_disk` writes into its target folder file by file, so a second job that starts while the
first is still writing would see `dataset_dict.json` and read half-written Arrow files (seen on SLURM:
`ArrowInvalid`). Here the first job builds into a private temp folder and renames it into place; every
other job waits on the lock, then loads the finished folder.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import datasets


def cached(path: Path, build: Callable[[], datasets.DatasetDict]) -> datasets.DatasetDict:
    """load_from_disk(path), building it with `build()` first if no complete copy exists."""
    done = path / "dataset_dict.json"
    if not done.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_name(f".{path.name}.lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not done.exists():
                tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
                shutil.rmtree(tmp, ignore_errors=True)
                build().save_to_disk(str(tmp))
                shutil.rmtree(path, ignore_errors=True)  # an incomplete folder from an older version
                os.replace(tmp, path)
    return datasets.load_from_disk(str(path))
