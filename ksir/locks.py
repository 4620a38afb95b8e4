"""File locks shared by processes (and, on a file system with working flock, by machines): one job per
identity (`ksir.records.job_lock`), one builder per model (`ksir.checkpoints.model_lock`).

An flock is released by the kernel when its holder dies, so a killed process never blocks anyone. The lock
file holds `host:pid since <time>` of the current exclusive holder, for the waiting message; a folder that
cannot take that text (or the lock file) is a StorageError naming it, before any compute.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


class StorageError(OSError):
    """A folder that cannot take what a job must write (full, read-only, not ours): one line naming the path
    and what was needed."""

    def __str__(self) -> str:
        return str(self.strerror)  # the one line, without "[Errno 28]"


def storage_error(path: Path | str, needed: str, e: OSError) -> StorageError:
    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system"}.get(e.errno, e.strerror or str(e))
    return StorageError(e.errno, f"{path}: cannot write {needed} ({why})")


@contextlib.contextmanager
def flock(path: Path, label: str, *, shared: bool = False, what: str = "a lock file") -> Iterator[None]:
    """Hold an exclusive (or shared) flock on `path` (created if missing); say once if another holder makes us
    wait, and for how long. An exclusive holder writes `host:pid since ...` into the file: a folder that cannot
    take those few bytes (full, read-only) cannot take what the job will write either, so that is a
    StorageError naming the folder, before any compute."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise storage_error(path, what, e) from e
    try:
        mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "another process"
            print(f"[{label}] held by {holder}: waiting for it to finish", flush=True)
            t0 = time.time()
            fcntl.flock(fd, mode)
            print(f"[{label}] released after {time.time() - t0:.0f}s", flush=True)
        try:
            if not shared:
                text = f"{socket.gethostname()}:{os.getpid()} since {datetime.now(UTC).isoformat()}\n".encode()
                try:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, text, 0)
                    os.fsync(fd)
                except OSError as e:
                    raise storage_error(path.parent, what, e) from e
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
