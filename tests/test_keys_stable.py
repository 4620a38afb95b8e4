"""Refactors leave every run key and model key as it was: keys of a grid of jobs (train, QAT variants, every
quantize axis) computed at commit 1ae1215, before job kinds and the weight-format vocabulary, must still come
out. A changed key would orphan every record and checkpoint users have (a result found under its key is a result
not recomputed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ksir.config import compose_spec
from ksir.identity import model_key, run_key

EXPECTED = json.loads((Path(__file__).parent / "data" / "run_keys_1ae1215.json").read_text())["keys"]
GRID = [
    ["job=train"], ["job=train", "model.size=s"], ["job=train", "seed=2"], ["job=train", "model.parametrization=mup"],
    ["job=train", "model.parametrization=umup", "trainer.matmul_precision=fp8_e4m3"],
    ["job=train", "qat=lsq"], ["job=train", "qat=lsq", "qat.bits=2"], ["job=train", "qat=absmax"],
    ["job=train", "qat=paretoq"], ["job=train", "qat=ksir"], ["job=train", "qat=lsq", "qat.init_from=auto"],
    ["job=train", "qat=lsq", "qat.bits=1.58"], ["job=train", "qat=lsq", "qat.bits=1"],
    ["job=train", "qat=lsq", "qat.dtype=float", "qat.bits=4"], ["job=train", "qat=lsq", "qat.dtype=nf", "qat.bits=3"],
    ["job=train", "qat=lsq", "qat.granularity=channel"], ["job=train", "qat=lsq", "qat.init_from=auto", "qat.distill.weight=0.5"],
    ["job=train", "eval=zeroshot"],
    ["job=quantize"], ["job=quantize", "quant.bits=16", "quant.dtype=nf"],
    ["job=quantize", "quant.bits=4"], ["job=quantize", "quant.bits=3", "quant.dtype=float"],
    ["job=quantize", "quant.bits=4", "quant.dtype=float", "quant.exponent_bits=2"],
    ["job=quantize", "quant.bits=4", "quant.dtype=nf", "quant.blocksize=32"],
    ["job=quantize", "quant.bits=4", "quant.dtype=int_asym", "quant.zero_point=int"],
    ["job=quantize", "quant.bits=4", "quant.granularity=channel"],
    ["job=quantize", "quant.bits=3", "quant.method=gptq"], ["job=quantize", "quant.bits=3", "quant.method=gptq", "seed=1"],
    ["job=quantize", "quant.bits=4", "quant.scale_search=mse"], ["job=quantize", "quant.bits=4", "quant.scale_bits=8"],
    ["job=quantize", "quant.bits=4", "quant.outlier.mode=proxy"],
    ["job=quantize", "quant.bits=4", "quant.lowrank.mode=correct", "quant.lowrank.rank=8"],
    ["job=quantize", "quant.bits=4", "quant.lowrank.mode=factorize", "quant.lowrank.rank=0.25"],
    ["job=quantize", "quant.bits=16", "quant.lowrank.mode=factorize", "quant.lowrank.rank=0.25"],
    ["job=quantize", "quant.bits=3", "quant.heal.steps=20"],
    ["job=quantize", "quant.bits=2", "quant.dtype=codebook", "quant.codebook=[-1,-0.3,0.3,1]"],
    ["job=quantize", "quant.bits=1.58"], ["job=quantize", "quant.bits=4", "eval=zeroshot"],
    ["job=quantize", "model.family=pythia", "model.size=70m", "quant.bits=4"],
]


def test_the_grid_is_the_recorded_one():
    assert [" ".join(o) for o in GRID] == list(EXPECTED)


@pytest.mark.parametrize("overrides", GRID, ids=[" ".join(o) for o in GRID])
def test_keys_are_unchanged_by_the_refactor(overrides, tmp_path):
    spec = compose_spec([*overrides, f"out_dir={tmp_path}"], check_env=False)
    got = [run_key(spec), model_key(spec) if spec.kind.trains_with_qat else None]
    assert got == EXPECTED[" ".join(overrides)]
