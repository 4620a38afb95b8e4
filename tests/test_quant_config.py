"""The quant config group: YAML files, from_mapping, and one-line ConfigErrors before any compute."""

import dataclasses
import itertools
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ksir.errors import ConfigError
from ksir.quant import QuantConfig, quantize_model, validate_quant_config

CONF = Path(__file__).resolve().parents[1] / "conf" / "quant"


def test_rtn_yaml_is_exactly_the_dataclass_defaults():
    cfg = OmegaConf.load(CONF / "rtn.yaml")
    assert set(cfg.keys()) == {f.name for f in dataclasses.fields(QuantConfig)}
    assert QuantConfig.from_mapping(cfg) == QuantConfig()


def test_gptq_option_composes_with_hydra():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="gptq", overrides=["bits=4", "dtype=nf", "outlier.mode=proxy"])
    q = QuantConfig.from_mapping(cfg)
    assert (q.method, q.bits, q.dtype, q.outlier.mode, q.blocksize) == ("gptq", 4, "nf", "proxy", 64)


@pytest.mark.parametrize("bad", [{"bitz": 4}, {"outlier": {"frac": 0.1}}, {"gptq": {"dmp": 0.1}}])
def test_unknown_keys(bad):
    with pytest.raises(ConfigError, match="unknown key"):
        QuantConfig.from_mapping(bad)


def test_paper_sweep_grid_is_valid():
    """ksir-run -m quant.dtype=int,float,nf,dynamic quant.blocksize=64,256,4096 quant.bits=3,4,5,6,8"""
    for dtype, bs, k in itertools.product(
        ["int", "float", "nf", "dynamic"], [64, 256, 4096], [3, 4, 5, 6, 8]
    ):
        validate_quant_config(
            QuantConfig.from_mapping({"dtype": dtype, "blocksize": bs, "bits": k}), [4096, 8192]
        )


@pytest.mark.parametrize(
    "kw, key",
    [
        ({"method": "awq", "bits": 4}, "quant.method"),
        ({"dtype": "int5", "bits": 4}, "quant.dtype"),
        ({"bits": 0}, "quant.bits"),
        ({"bits": 17}, "quant.bits"),
        ({"bits": 1.58, "dtype": "float"}, "quant.bits"),
        ({"bits": 2.5}, "quant.bits"),
        ({"bits": 1, "dtype": "nf"}, "quant.bits"),
        ({"bits": 4, "granularity": "row"}, "quant.granularity"),
        ({"bits": 4, "blocksize": 48}, "quant.blocksize"),
        ({"bits": 4, "blocksize": 1}, "quant.blocksize"),
        ({"bits": 4, "scale_bits": 4}, "quant.scale_bits"),
        ({"bits": 4, "scale_search": "percentile"}, "quant.scale_search"),
        ({"bits": 4, "dtype": "int_asym", "zero_point": "bf16"}, "quant.zero_point"),
        ({"bits": 4, "dtype": "float", "exponent_bits": 4}, "quant.exponent_bits"),
        ({"bits": 4, "dtype": "codebook"}, "quant.codebook"),
        ({"bits": 2, "dtype": "codebook", "codebook": [-1, -0.5, 0, 0.5, 1]}, "quant.codebook"),
        ({"bits": 2, "dtype": "codebook", "codebook": [0, 0, 1]}, "quant.codebook"),
        ({"bits": 4, "outlier": {"mode": "random"}}, "quant.outlier.mode"),
        ({"bits": 4, "outlier": {"fraction": 1.5}}, "quant.outlier.fraction"),
        ({"bits": 4, "gptq": {"damp": 0}}, "quant.gptq.damp"),
        ({"bits": 4, "include": ["("]}, "quant.include"),
    ],
)
def test_bad_values_raise_one_line_config_error(kw, key):
    with pytest.raises(ConfigError) as e:
        validate_quant_config(QuantConfig.from_mapping(kw), [64, 128])
    msg = str(e.value)
    assert e.value.key == key and key in msg and "\n" not in msg and "allowed" in msg


def test_ternary_and_16_bit_are_valid():
    validate_quant_config(QuantConfig(bits=1.58, dtype="int"), [64])
    validate_quant_config(
        QuantConfig(bits=16, dtype="nf", blocksize=48), [64]
    )  # 16 bit: nothing else is used


def test_blocksize_checked_against_the_model_before_compute():
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(96, 8)))
    w = model[0][0].weight.clone()
    with pytest.raises(ConfigError, match="quant.blocksize"):
        quantize_model(model, QuantConfig(bits=4, blocksize=64))
    assert torch.equal(w, model[0][0].weight)


def test_gptq_without_calibration_data_is_a_config_error():
    model = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(64, 8)))
    with pytest.raises(ConfigError, match="calib"):
        quantize_model(model, QuantConfig(bits=4, method="gptq"))


@pytest.mark.parametrize(("overrides", "key"), [
    (dict(bits=16, granularity="row"), "quant.granularity"),  # a 16-bit job ignores it, but it is a typo
    (dict(bits=16, scale_search="best"), "quant.scale_search"),
    (dict(bits=4, lowrank={"mode": "factorize", "rank": 8, "whiten": "activation"}), "quant.lowrank.whiten"),
    (dict(bits=4, lowrank={"mode": "correct", "rank": 200}), "quant.lowrank.rank"),  # more than the rows have
])
def test_values_that_would_be_ignored_or_clamped_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_quant_config(QuantConfig.from_mapping(overrides), [64, 128])


def test_a_rank_a_weight_does_not_have_is_refused_not_clamped():
    from ksir.quant.lowrank import rank_of

    assert rank_of(8, (64, 32)) == 8 and rank_of(0.5, (64, 32)) == 16
    with pytest.raises(ConfigError, match=r"<= 32 \(min\(out, in\) of a \[64, 32\] weight\)"):
        rank_of(33, (64, 32))
