import json

import pandas as pd
import pytest
import torch

from ksir.data import build_tokenizer, load_documents, load_token_data
from ksir.data.corpus import validate_data_config
from ksir.errors import ConfigError
from ksir.spec import DataSpec, TokenizerSpec

EMB = DataSpec(source="embedded", max_documents=80, validation_fraction=0.1, seq_len=32)


def test_embedded_corpus_is_real_deterministic_and_split_by_document(cache_dir):
    a = load_documents(EMB, cache_dir)
    b = load_documents(EMB, cache_dir)
    assert a["train"]["name"] == b["train"]["name"]
    assert len(a["train"]) + len(a["validation"]) == 80
    assert not set(a["train"]["name"]) & set(a["validation"]["name"])
    assert len(a["validation"]) > 0
    assert any("def " in t for t in a["train"]["text"])  # real Python source text


def test_byte_tokenizer_roundtrips_and_blocks_are_fixed(cache_dir):
    docs = load_documents(EMB, cache_dir)
    tok = build_tokenizer(TokenizerSpec("bytes", 257), docs["train"]["text"])
    assert len(tok) == 257
    text = "héllo wörld\n\tdef f(): return 1"
    assert tok.decode(tok(text)["input_ids"]) == text
    d1 = load_token_data(docs, tok, 32, cache_dir)
    d2 = load_token_data(docs, tok, 32, cache_dir)
    assert d1.validation.shape[1] == 32 and d1.train.dtype == torch.long
    assert torch.equal(d1.eval_blocks(8), d2.eval_blocks(8))
    assert not torch.equal(d1.calibration_blocks(4, seed=0), d1.calibration_blocks(4, seed=1))
    with pytest.raises(ConfigError, match="eval.sequences"):
        d1.eval_blocks(10**7)


@pytest.mark.parametrize("vocab", [257, 300])
def test_the_cached_tokenizer_is_the_trained_one_and_is_trained_once(tmp_path, cache_dir, vocab, monkeypatch):
    """A train job reads its byte-level BPE from the cache after the first: the same tokenizer (its full state,
    hence its fingerprint and every token block), trained once per corpus and vocabulary."""
    from ksir.data import blocks, tokenizer

    docs = load_documents(EMB, cache_dir)
    spec, texts, corpus = TokenizerSpec("bytes", vocab), docs["train"]["text"], docs["train"]._fingerprint
    trained = build_tokenizer(spec, texts)
    first = build_tokenizer(spec, texts, cache_dir=tmp_path, corpus=corpus)
    assert first.backend_tokenizer.to_str() == trained.backend_tokenizer.to_str()
    assert len(list(tmp_path.glob("tokenizer-*.json"))) == 1
    calls = []
    real = tokenizer.train_byte_bpe
    monkeypatch.setattr(tokenizer, "train_byte_bpe", lambda *a: calls.append(a) or real(*a))
    again = build_tokenizer(spec, texts, cache_dir=tmp_path, corpus=corpus)
    assert calls == [] and blocks.tokenizer_fingerprint(again) == blocks.tokenizer_fingerprint(trained)
    text = "héllo wörld\n\tdef f(): return 1"
    assert again(text)["input_ids"] == trained(text)["input_ids"] and len(again) == len(trained) == vocab
    assert (again.eos_token, again.pad_token, again.bos_token) == (trained.eos_token, trained.pad_token,
                                                                  trained.bos_token)
    build_tokenizer(spec, texts, cache_dir=tmp_path, corpus=corpus + "x")  # another corpus: its own entry
    assert len(calls) == 1 and len(list(tmp_path.glob("tokenizer-*.json"))) == 2


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "parquet"])
def test_local_files_go_through_the_same_datasets_path(tmp_path, cache_dir, fmt):
    docs = [f"document number {i} " + "lorem ipsum " * 30 for i in range(40)]
    path = tmp_path / f"corpus.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(docs))
    elif fmt == "jsonl":
        path.write_text("\n".join(json.dumps({"body": d}) for d in docs))
    else:
        pd.DataFrame({"body": docs}).to_parquet(path)
    cfg = {"source": "files", "files": {"train": str(path)}, "format": None, "seq_len": 16,
           "text_column": "text" if fmt == "txt" else "body", "validation_fraction": 0.2}
    dd = load_documents(validate_data_config(cfg), cache_dir)
    assert len(dd["train"]) + len(dd["validation"]) == 40 and len(dd["validation"]) > 0
    tok = build_tokenizer(TokenizerSpec(), dd["train"]["text"])
    data = load_token_data(dd, tok, 16, cache_dir)
    assert tok.decode(data.train[0]).startswith("document number")


def test_bad_data_configs_fail_before_reading(tmp_path):
    with pytest.raises(ConfigError, match="data.source"):
        validate_data_config({"source": "ftp", "validation_fraction": 0.1, "seq_len": 8})
    with pytest.raises(ConfigError, match="data.files.train.*file not found"):
        validate_data_config({"source": "files", "files": {"train": str(tmp_path / "missing.txt")},
                              "validation_fraction": 0.1, "seq_len": 8})
    with pytest.raises(ConfigError, match="validation_fraction"):
        validate_data_config({"source": "embedded", "validation_fraction": 1.5, "seq_len": 8})


def test_parallel_jobs_build_a_cache_once_and_never_read_it_half_written(tmp_path):
    """Two jobs start on a fresh cache (a SLURM array): the second waits for the first's complete copy."""
    import threading
    import time

    import datasets

    from ksir.data.cache import cached

    built, got = [], {}

    def slow_build():
        built.append(threading.current_thread().name)
        time.sleep(1.0)  # the window in which a reader used to find half-written Arrow files
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a", "b", "c"]})})

    def job(name):
        got[name] = cached(tmp_path / "corpus", slow_build)["train"]["text"]

    threads = [threading.Thread(target=job, args=(n,), name=n) for n in ("first", "second")]
    threads[0].start()
    time.sleep(0.3)
    threads[1].start()
    for t in threads:
        t.join()
    assert built == ["first"] and got == {"first": ["a", "b", "c"], "second": ["a", "b", "c"]}
    assert sorted(p.name for p in tmp_path.iterdir()) == [".corpus.lock", "corpus"]  # no temp folder left
