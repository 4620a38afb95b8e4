"""Tokenizers: the checkpoint's own (hub / local models), or a byte-level BPE that ksir trains
with the `tokenizers` library for its own family and saves next to the checkpoint.

The BPE is trained once per corpus and vocabulary and kept in the cache as its JSON (training it took 0.4 s
on 120 documents and 2 s on the whole embedded corpus, in every train job); the cached JSON is the trained
tokenizer itself, so its fingerprint, the token blocks and every result are the same either way.

With `vocab_size: 257` the BPE has no merges: every byte is a token (plus end-of-text), which
keeps the embedding of tiny models small so that most parameters sit in the quantized blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ksir.errors import ConfigError
from ksir.spec import TokenizerSpec

EOS = "<|endoftext|>"
N_BYTES = 256


def train_byte_bpe(texts: Iterable[str], vocab_size: int = N_BYTES + 1) -> PreTrainedTokenizerFast:
    if vocab_size < N_BYTES + 1:
        raise ConfigError("data.tokenizer.vocab_size", vocab_size, f">= {N_BYTES + 1} (256 bytes + end-of-text)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok)


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=None,
                                   pad_token=EOS, model_max_length=10**9)


def cached_byte_bpe(texts: Iterable[str], vocab_size: int, cache_dir: str | Path, corpus: str) -> PreTrainedTokenizerFast:
    """`train_byte_bpe(texts, vocab_size)`, trained once per corpus (`corpus`: the documents' fingerprint),
    vocabulary size and `tokenizers` version, then read from `cache_dir` (a bad vocabulary size fails in the
    training, so it is never cached)."""
    from ksir.data.cache import memo

    key = hashlib.sha256(f"{corpus}|{vocab_size}|{tokenizers.__version__}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"tokenizer-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    state = memo(path, lambda: train_byte_bpe(texts, vocab_size).backend_tokenizer.to_str())
    return _wrap(Tokenizer.from_str(state))


def load_pretrained_tokenizer(path_or_id: str | Path) -> PreTrainedTokenizerBase:
    tok = AutoTokenizer.from_pretrained(str(path_or_id))
    if tok.eos_token is None:
        raise ConfigError("model.checkpoint", str(path_or_id), why="its tokenizer has no end-of-text token")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_tokenizer(tokenizer: TokenizerSpec, texts: Iterable[str] | None = None,
                    checkpoint: str | Path | None = None, *, cache_dir: str | Path | None = None,
                    corpus: str | None = None) -> PreTrainedTokenizerBase:
    """`kind: bytes` trains ksir's byte-level BPE on `texts` (once per corpus when given `cache_dir` and the
    corpus's fingerprint); `kind: pretrained` loads the checkpoint's."""
    kind = tokenizer.kind
    if kind == "pretrained":
        if checkpoint is None:
            raise ConfigError("data.tokenizer.kind", kind, why="needs a checkpoint to load the tokenizer from")
        return load_pretrained_tokenizer(checkpoint)
    if kind == "bytes":
        if texts is None:
            raise ConfigError("data.tokenizer.kind", kind, why="needs training text")
        if cache_dir is not None and corpus:
            return cached_byte_bpe(texts, tokenizer.vocab_size, cache_dir, corpus)
        return train_byte_bpe(texts, tokenizer.vocab_size)
    raise ConfigError("data.tokenizer.kind", kind, ["bytes", "pretrained"])
