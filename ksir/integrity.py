"""Is a checkpoint intact? Cheap, torch-free checks that catch truncated or garbled files before a job
loads them (a copy cut short by a full disk, a job killed while a non-atomic writer was busy).

- safetensors: the 8-byte header length, the JSON header, and the file size the header implies;
- torch's zip format (`pytorch_model.bin`, Lightning `.ckpt`): the zip central directory at the end;
- a Hugging Face model folder: its config.json parses and every weight file passes the above.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")


def verify_safetensors(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path}: truncated (no header)"
            (n,) = struct.unpack("<Q", head)
            header = json.loads(f.read(n))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, struct.error) as e:
        return f"{path}: unreadable safetensors header ({type(e).__name__})"
    size = path.stat().st_size
    if size != 8 + n + end:
        return f"{path}: {size} bytes, the header says {8 + n + end} (truncated or padded)"
    return None


def verify_torch_file(path: Path) -> str | None:
    """torch.save's zip container (Lightning checkpoints, pytorch_model.bin)."""
    try:
        with zipfile.ZipFile(path) as z:
            if not z.namelist():
                return f"{path}: empty archive"
    except (OSError, zipfile.BadZipFile) as e:
        return f"{path}: not a complete torch file ({e})"
    return None


def verify_checkpoint(folder: Path) -> str | None:
    """None if a Hugging Face model folder looks intact, else one line naming the bad file."""
    folder = Path(folder)
    cfg = folder / "config.json"
    try:
        json.loads(cfg.read_text())
    except (OSError, ValueError) as e:
        return f"{cfg}: unreadable ({type(e).__name__})"
    weights = [p for pat in WEIGHT_PATTERNS for p in sorted(folder.glob(pat))]
    if not weights:
        return f"{folder}: no weight files (*.safetensors, pytorch_model*.bin)"
    for w in weights:
        problem = verify_safetensors(w) if w.suffix == ".safetensors" else verify_torch_file(w)
        if problem:
            return problem
    return None
