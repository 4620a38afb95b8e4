"""Model families as data: a family is a named, ordered list of sizes (litgpt-style).

Two kinds of family:
- `own`: small models built from a standard Hugging Face architecture config (Llama), trained
  by ksir itself. Sizes are architecture hyper-parameters; weights come from `train` jobs.
- hub families: the public models the k-bit scaling-law literature used, by Hugging Face hub
  id. They are loaded with `from_pretrained`, which also accepts a local path (the only thing
  that works offline).

Adding a family or a size is adding one entry below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ksir.errors import ConfigError


@dataclass(frozen=True)
class Size:
    name: str
    hub_id: str | None = None  # hub families
    arch: dict[str, Any] = field(default_factory=dict)  # own families: HF config overrides


@dataclass(frozen=True)
class Family:
    name: str
    kind: str  # "own" | "hub"
    sizes: tuple[Size, ...]
    architecture: str = ""  # HF config class name for own families
    base_arch: dict[str, Any] = field(default_factory=dict)
    train_tokens: int | None = None  # D of published hub families (from their papers / model cards)

    def size(self, name: str) -> Size:
        for s in self.sizes:
            if s.name == name:
                return s
        raise ConfigError("model.size", name, [s.name for s in self.sizes], why=f"unknown size of family {self.name!r}")

    @property
    def size_names(self) -> list[str]:
        return [s.name for s in self.sizes]


def _own(name: str, dims: list[tuple[str, int, int, int]], **base: Any) -> Family:
    """dims: (size name, hidden, layers, heads). MLP width is Llama's 8/3 * hidden rounded up to a
    multiple of 64, so that every row length is divisible by the default quantization block (64)."""
    sizes = tuple(
        Size(n, arch={"hidden_size": d, "num_hidden_layers": nl, "num_attention_heads": h,
                      "num_key_value_heads": h, "intermediate_size": 64 * math.ceil(8 * d / 3 / 64)})
        for n, d, nl, h in dims
    )
    return Family(name, "own", sizes, architecture="LlamaConfig", base_arch=base)


def _hub(name: str, ids: list[tuple[str, str]], train_tokens: int | None = None) -> Family:
    return Family(name, "hub", tuple(Size(n, hub_id=i) for n, i in ids), train_tokens=train_tokens)


FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        # Own family: non-embedding parameters span ~53k .. ~25M (about 470x), 1.3-2x apart at the
        # small end so that a CPU study gets 6 sizes in minutes (xs..xl; "ms" sits between s and m). m, xl and
        # w256 are hidden 64, 128 and 256 at one depth (4 layers): the widths of a learning-rate transfer study.
        # Hidden sizes are multiples of 64 so that block-64 quantization fits every row. The
        # vocabulary comes from the data's tokenizer (256 byte tokens + specials by default).
        _own(
            "llama",
            [("xs", 64, 1, 4), ("s", 64, 2, 4), ("ms", 64, 3, 4), ("m", 64, 4, 4), ("l", 128, 2, 4),
             ("xl", 128, 4, 4), ("2xl", 192, 6, 6), ("w256", 256, 4, 4), ("3xl", 256, 8, 8), ("4xl", 512, 8, 8)],
            max_position_embeddings=2048, tie_word_embeddings=False, rope_theta=10000.0,
        ),
        _hub("pythia", [(s, f"EleutherAI/pythia-{s}") for s in
                        ["70m", "160m", "410m", "1b", "1.4b", "2.8b", "6.9b", "12b"]], 300 * 10**9),
        _hub("opt", [(s, f"facebook/opt-{s}") for s in
                     ["125m", "350m", "1.3b", "2.7b", "6.7b", "13b", "30b", "66b"]], 180 * 10**9),
        _hub("gpt2", [("small", "gpt2"), ("medium", "gpt2-medium"), ("large", "gpt2-large"), ("xl", "gpt2-xl")]),
        _hub("bloom", [(s, f"bigscience/bloom-{s}") for s in ["560m", "1b1", "1b7", "3b", "7b1"]], 366 * 10**9),
        _hub("qwen2.5", [(s, f"Qwen/Qwen2.5-{s.upper()}") for s in ["0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b"]], 18 * 10**12),
    ]
}


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ConfigError("model.family", name, sorted(FAMILIES), why="unknown model family")
    return FAMILIES[name]


def own_config(family: Family, size: str, vocab_size: int, **overrides: Any):
    """A transformers config for one size of an own family (no weights built)."""
    import transformers

    cls = getattr(transformers, family.architecture)
    return cls(vocab_size=vocab_size, **{**family.base_arch, **family.size(size).arch, **overrides})


def linear_row_sizes(hf_config: Any) -> list[int]:
    """in_features of the transformer blocks' linear layers, read off a config so that a block
    size that does not divide a row is rejected before any weights are built."""
    d = getattr(hf_config, "hidden_size", None) or getattr(hf_config, "n_embd", None) or getattr(hf_config, "d_model", None)
    ff = (getattr(hf_config, "intermediate_size", None) or getattr(hf_config, "ffn_dim", None)
          or getattr(hf_config, "n_inner", None) or (4 * d if d else None))
    return sorted({int(x) for x in (d, ff) if x})


def count_params(model: Any) -> tuple[int, int]:
    """(total, non-embedding) parameters, tied weights counted once; the output head counts as
    embedding, as in Kaplan et al. / Chinchilla's non-embedding N."""
    seen: set[int] = set()
    total = emb = 0
    emb_ids = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
               for p in m.parameters()}
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if id(p) in emb_ids:
            emb += p.numel()
    return total, total - emb
