"""The embedded corpus's documents and their train/validation split, without reading or tokenizing them
(no `datasets` import): shared by the corpus builder and the pre-flight check of `eval.sequences`."""

from __future__ import annotations

import functools
import hashlib
import sysconfig
from pathlib import Path

EXCLUDE_DIRS = ("test", "tests", "idlelib", "site-packages")


def stable_fraction(key: str) -> float:
    """A document's position in [0, 1) from a hash of its name: the split never depends on order."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 2**32


@functools.lru_cache(maxsize=4)
def embedded_files(exclude_dirs: tuple[str, ...] = EXCLUDE_DIRS) -> tuple[Path, list[Path]]:
    """(stdlib root, its source files in sorted order); scanned once per process (~0.4 s)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if not set(p.relative_to(root).parts) & set(exclude_dirs))
    return root, files


@functools.lru_cache(maxsize=64)
def validation_block_bound(max_documents: int | None, validation_fraction: float, seq_len: int) -> int:
    """An upper bound on the validation blocks of the embedded corpus under any byte-level tokenizer: such a
    tokenizer emits at most one token per byte, plus one end-of-text per document (the files are UTF-8)."""
    root, files = embedded_files()
    files = files[:max_documents] if max_documents else files
    tokens = sum(f.stat().st_size + 1 for f in files if stable_fraction(str(f.relative_to(root))) < validation_fraction)
    return tokens // seq_len
