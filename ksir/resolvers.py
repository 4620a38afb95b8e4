"""OmegaConf resolvers ksir's configs use (registered on import; `ksir.cli` and `ksir.config` import this).

- `${ksir_path:X}`: a path as a user types it, `~` expanded (`out_dir=~/runs` is the home folder's runs, not a
  folder named `~`);
- `${ksir_dirname:X}`: a sweep job's folder name, cut with a hash of the whole when too long for a file system.
"""

from __future__ import annotations

import hashlib
import os

from omegaconf import OmegaConf

MAX_DIRNAME = 200  # file systems refuse names over 255 bytes; the job number is prefixed


def short_dirname(name: str) -> str:
    """A sweep job's folder name (its overrides), cut with a hash of the whole when too long for a file name."""
    if len(name.encode()) <= MAX_DIRNAME:
        return name
    return name.encode()[: MAX_DIRNAME - 17].decode(errors="ignore") + "~" + hashlib.sha256(name.encode()).hexdigest()[:16]


def user_path(path: str) -> str:
    return os.path.expanduser(str(path))


OmegaConf.register_new_resolver("ksir_dirname", short_dirname, replace=True)
OmegaConf.register_new_resolver("ksir_path", user_path, replace=True)
