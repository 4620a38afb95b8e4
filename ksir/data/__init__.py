"""Text corpora -> tokenizer -> fixed-length token blocks, all through `datasets` (Arrow, cached)."""

from ksir.data.blocks import TokenData, load_token_data
from ksir.data.corpus import load_documents
from ksir.data.tokenizer import build_tokenizer

__all__ = ["TokenData", "build_tokenizer", "load_documents", "load_token_data"]
