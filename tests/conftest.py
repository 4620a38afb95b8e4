"""Shared fixtures: configs composed by real Hydra, and one tiny own-family model trained through
the real train job (Lightning, W&B offline), reused by every test that needs trained weights."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no internet: set before any test module imports HF libraries
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ["WANDB_MODE"] = "offline"  # tests never talk to a W&B server

from .helpers import TINY


def compose(overrides: list[str]):
    """A validated JobSpec, composed by real Hydra exactly as ksir-run does."""
    from ksir.config import compose_spec

    return compose_spec(overrides)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One corpus/token cache for the whole test session (built once, as users' ~/.cache/ksir)."""
    return tmp_path_factory.mktemp("ksir-cache")


@pytest.fixture(scope="session")
def tiny_cfg(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-out")

    def make(*extra: str):
        return compose([*TINY, f"out_dir={out}", f"paths.cache={cache_dir}", *extra])

    return make


@pytest.fixture(scope="session")
def trained_tiny(tiny_cfg):
    """A llama-xs trained for 60 steps on the embedded corpus, via the real train job."""
    import torch

    from ksir.checkpoints import load_model
    from ksir.data import load_documents, load_token_data
    from ksir.data.tokenizer import load_pretrained_tokenizer
    from ksir.jobs import execute

    cfg = tiny_cfg("job=train", "model.size=xs")
    record = execute(cfg)
    model = load_model(record["checkpoint"], torch.device("cpu"))
    tok = load_pretrained_tokenizer(record["checkpoint"])
    data = load_token_data(load_documents(cfg.data, cfg.paths.cache), tok, cfg.data.seq_len, cfg.paths.cache)
    return SimpleNamespace(model=model, tokenizer=tok, data=data, calib=data.calibration_blocks(16, seed=0),
                           eval_blocks=data.eval_blocks(int(cfg.eval.sequences)), record=record, cfg=cfg,
                           checkpoint=record["checkpoint"])


# The files that take longest, longest first: `make test` hands whole files to its workers (pytest-xdist,
# --dist loadfile --no-loadscope-reorder) in collection order, so starting the long ones first keeps one
# worker from finishing alone with a long file left (longest-first scheduling). Order within a file is kept.
SLOW_FILES = ("test_repro.py", "test_faults.py", "test_docs_commands.py", "test_cli.py", "test_resume.py",
              "test_sweeps.py", "test_store_faults.py", "test_deploy.py", "test_sweep_input.py", "test_startup.py",
              "test_train_eval.py", "test_quant_heal.py", "test_parametrization.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))  # stable: file order kept otherwise
