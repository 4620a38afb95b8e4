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
import tempfile
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


def memo(path: Path, compute: Callable[[], str]) -> str:
    """A small text derived from a cache (a digest), kept in the file `path` beside it: computed once, then
    read. Written by a rename, so a reader never sees half of it; a folder that refuses the file costs only
    the recomputation next time."""
    try:
        return path.read_text().strip()
    except OSError:
        pass
    value = compute()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(value + "\n")
        os.replace(tmp, path)
    except OSError:
        pass
    return value
