"""Documents -> fixed-length token blocks (Arrow, cached on disk by fingerprint).

Documents are tokenized, joined with end-of-text, and cut into blocks of `seq_len` tokens
(the tail is dropped). The evaluation set is the first `eval_sequences` blocks of the
validation split: the same tokens for every bit-width and size that share a tokenizer, so that
runs are comparable.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from transformers import PreTrainedTokenizerBase

from ksir.data.cache import cached, memo
from ksir.errors import ConfigError


@dataclass
class TokenData:
    train: torch.Tensor  # LongTensor [n_blocks, seq_len]
    validation: torch.Tensor  # LongTensor [n_blocks, seq_len]
    fingerprint: str  # of the inputs (documents, tokenizer, seq_len): names the cache
    digest: str = ""  # of the token blocks themselves: equal digests, equal data, on any machine

    def eval_blocks(self, n: int) -> torch.Tensor:
        if n > len(self.validation):
            raise ConfigError("eval.sequences", n, f"<= {len(self.validation)} (validation blocks available)")
        return self.validation[:n]

    def calibration_blocks(self, n: int, seed: int = 0) -> torch.Tensor:
        """Random training blocks (never validation ones) for GPTQ-style calibration."""
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self.train), generator=g)[:n]
        return self.train[idx]


def tokenizer_fingerprint(tok: PreTrainedTokenizerBase) -> str:
    state = tok.backend_tokenizer.to_str() if hasattr(tok, "backend_tokenizer") else repr(tok.get_vocab())
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def _blocks(ds: datasets.Dataset, tok: PreTrainedTokenizerBase, seq_len: int) -> datasets.Dataset:
    eos = tok.eos_token_id

    def tokenize_and_pack(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        ids = tok(batch["text"], add_special_tokens=False)["input_ids"]
        flat = [t for doc in ids for t in (*doc, eos)]
        n = len(flat) // seq_len
        return {"input_ids": [flat[i * seq_len:(i + 1) * seq_len] for i in range(n)]}

    # Packing within map batches of 256 documents drops at most one partial block per batch.
    return ds.map(tokenize_and_pack, batched=True, batch_size=256, remove_columns=ds.column_names,
                  desc="tokenizing")


def load_token_data(docs: datasets.DatasetDict, tok: PreTrainedTokenizerBase, seq_len: int,
                    cache_dir: str | Path) -> TokenData:
    fp = hashlib.sha256(
        f"{docs['train']._fingerprint}|{docs['validation']._fingerprint}|{tokenizer_fingerprint(tok)}|{seq_len}".encode()
    ).hexdigest()[:16]
    path = Path(cache_dir) / f"blocks-{fp}"
    dd = cached(path, lambda: datasets.DatasetDict({split: _blocks(docs[split], tok, seq_len)
                                                    for split in ("train", "validation")})).with_format("torch")
    train, val = (dd[s][:]["input_ids"] if len(dd[s]) else torch.empty(0, seq_len) for s in ("train", "validation"))
    if len(train) == 0 or len(val) == 0:
        raise ConfigError("data", f"{len(train)} train / {len(val)} validation blocks",
                          why=f"too little text for seq_len={seq_len}")
    train, val = train.long(), val.long()
    digest = memo(path / "tokens.sha256", lambda: tensors_digest(train, val))
    return TokenData(train=train, validation=val, fingerprint=fp, digest=digest)


def tensors_digest(*tensors: torch.Tensor) -> str:
    """sha256 (16 hex digits) of tensors' shapes and values (int64, little-endian)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().astype("<i8", copy=False).tobytes())
    return h.hexdigest()[:16]
