"""Document sources. Every source yields a `datasets.DatasetDict` with `train` and `validation`
splits of documents (one `text` column), so that everything downstream is one code path.

- `embedded`: the source text that ships with the Python interpreter (the standard library's
  modules, docstrings and comments included). It is real English-and-code text, exists on every
  machine that has Python, and needs no network; we build it deterministically from sorted paths.
- `hub`: any Hugging Face hub dataset (`datasets.load_dataset(path, name)`), e.g. WikiText-103.
- `files`: local text / JSON(L) / Parquet / CSV files through `datasets`' packaged builders.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets

from ksir.data.cache import cached, memo
from ksir.data.embedded import embedded_files, stable_fraction
from ksir.errors import ConfigError
from ksir.spec import DATA_SOURCES as SOURCES
from ksir.spec import FILE_FORMATS as FILE_BUILDERS
from ksir.spec import DataSpec


def embedded_fingerprint(data: DataSpec) -> str:
    root, files = embedded_files()
    h = hashlib.sha256(f"{sys.version_info[:3]}|{data.max_documents}|{data.validation_fraction}".encode())
    for f in files:
        h.update(f"{f.relative_to(root)}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def documents_digest(docs: datasets.DatasetDict) -> str:
    """sha256 (16 hex digits) of every document's text (and name, where the source has names), split by split:
    equal digests, equal corpus. The embedded corpus is the running Python's standard library, so two
    machines with different Pythons train on different text; this is how a record shows it. Kept beside
    each split's Arrow file, so jobs after the first pay nothing for it."""
    def split_digest(split: str) -> str:
        h = hashlib.sha256()
        ds = docs[split]
        cols = [c for c in ("name", "text") if c in ds.column_names]
        for batch in ds.data.to_batches(max_chunksize=4096):
            for row in zip(*(batch.column(c).to_pylist() for c in cols), strict=True):
                for v in row:
                    b = str(v).encode("utf-8", "surrogatepass")
                    h.update(len(b).to_bytes(8, "little") + b)
        return h.hexdigest()

    parts = []
    for split in sorted(docs):
        files = docs[split].cache_files
        digest = (memo(Path(files[0]["filename"]).with_suffix(".sha256"), lambda s=split: split_digest(s))
                  if files else split_digest(split))
        parts.append(f"{split}:{digest}")
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def _split_by_document(names: list[str], texts: list[str], validation_fraction: float) -> datasets.DatasetDict:
    is_val = [stable_fraction(n) < validation_fraction for n in names]

    def pick(flag: bool) -> datasets.Dataset:
        rows = [(n, t) for n, t, v in zip(names, texts, is_val, strict=True) if v == flag]
        return datasets.Dataset.from_dict({"name": [n for n, _ in rows], "text": [t for _, t in rows]})

    return datasets.DatasetDict({"train": pick(False), "validation": pick(True)})


def _load_embedded(data: DataSpec, cache_dir: Path) -> datasets.DatasetDict:
    def build() -> datasets.DatasetDict:
        root, files = embedded_files()
        if data.max_documents:
            files = files[: data.max_documents]
        names = [str(f.relative_to(root)) for f in files]
        texts = [f.read_text(encoding="utf-8", errors="replace") for f in files]
        return _split_by_document(names, texts, data.validation_fraction)

    return cached(cache_dir / f"embedded-{embedded_fingerprint(data)}", build)


def _ensure_validation(dd: datasets.DatasetDict, data: DataSpec) -> datasets.DatasetDict:
    text_col = data.text_column or "text"
    if text_col != "text":
        dd = dd.rename_column(text_col, "text")
    if "validation" not in dd:
        if "train" not in dd:
            raise ConfigError("data", list(dd), why="dataset has neither 'train' nor 'validation' split")
        # Split by document, deterministically, as for the embedded corpus.
        train = dd["train"]
        names = [str(i) for i in range(len(train))]
        return _split_by_document(names, list(train["text"]), data.validation_fraction)
    return datasets.DatasetDict({"train": dd["train"], "validation": dd["validation"]})


def load_documents(data: DataSpec, cache_dir: str | Path) -> datasets.DatasetDict:
    """Documents of the configured source, split into train/validation by document."""
    cache_dir = Path(cache_dir)
    if data.source == "embedded":
        return _load_embedded(data, cache_dir)
    if data.source == "hub":
        dd = datasets.load_dataset(data.path, data.name, cache_dir=str(cache_dir / "hub"))
        return _ensure_validation(dd, data)
    if data.source == "files":
        files = data.files or {}
        first = data.file_paths()[0][1] if files else None
        builder = data.format or FILE_BUILDERS.get(Path(str(first)).suffix)
        dd = datasets.load_dataset(builder, data_files={k: list(v) if isinstance(v, list | tuple) else v
                                                        for k, v in files.items()},
                                   cache_dir=str(cache_dir / "files"))
        return _ensure_validation(dd, data)
    raise ConfigError("data.source", data.source, SOURCES)


def validate_data_config(cfg: Mapping[str, Any]) -> DataSpec:
    """A `data` section as typed: the checks that need no data read (`DataSpec.check`: unknown source, bad
    fractions) and missing or unusable local files. Raises ConfigError naming the key."""
    from ksir.dataconfig import from_mapping
    from ksir.preflight import check_data_file

    spec = from_mapping(DataSpec, cfg, "data")
    spec.check()
    for split, p in spec.file_paths():
        check_data_file(f"data.files.{split}", Path(p).expanduser(), spec.format)
    return spec
