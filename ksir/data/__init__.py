"""Text corpora -> tokenizer -> fixed-length token blocks, all through `datasets` (Arrow, cached).

Names load on first use (PEP 562), so `ksir.data.embedded` (the corpus's files, for pre-flight checks)
imports no datasets, torch or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TokenData", "build_tokenizer", "load_documents", "load_token_data"]
_LAZY = {"TokenData": "ksir.data.blocks", "load_token_data": "ksir.data.blocks",
         "load_documents": "ksir.data.corpus", "build_tokenizer": "ksir.data.tokenizer"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
