"""PTQ + KD ("compress then heal"): distillation into the 16-bit parameters of a quantized model, k-bit weights
frozen, total bits unchanged, recorded as its own regime."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from ksir.errors import ConfigError
from ksir.heal import heal_model
from ksir.quant import QuantConfig, quantize_model, validate_quant_config
from ksir.quant.select import get_weight, quantized_linear_names

from .helpers import TINY, run_here


def test_healing_trains_only_the_16_bit_parts_and_closes_part_of_the_gap(trained_tiny):
    from ksir.evaluate import evaluate_lm

    base = trained_tiny.model
    loss = lambda m: evaluate_lm(m, trained_tiny.eval_blocks, 16)["val_loss"]  # noqa: E731
    q = QuantConfig(bits=2, granularity="tensor", heal={"steps": 40, "lr": 3e-3, "batch_size": 16})
    ptq = copy.deepcopy(base)
    s_ptq = quantize_model(ptq, q)
    healed = copy.deepcopy(ptq)
    info = heal_model(healed, copy.deepcopy(base), q, trained_tiny.data.train, trained_tiny.cfg.trainer, seed=0)
    names = quantized_linear_names(base, q)
    for n in names:  # the k-bit weights are exactly the PTQ model's
        assert torch.equal(get_weight(healed.get_submodule(n)), get_weight(ptq.get_submodule(n)))
    changed = [n for n, p in healed.named_parameters() if not torch.equal(p, dict(ptq.named_parameters())[n])]
    assert changed and all("norm" in n or "embed" in n or "lm_head" in n for n in changed)
    assert info["heal_steps"] == 40 and info["heal_trained_params"] > 0
    l16, l_ptq, l_heal = loss(base), loss(ptq), loss(healed)
    assert l_ptq > l16 + 0.05, "2-bit per-tensor RTN must cost loss for this test to mean anything"
    assert l_heal < l_ptq, (l16, l_ptq, l_heal)  # distillation recovers part of what quantization lost
    assert quantize_model(copy.deepcopy(base), q).total_bits == s_ptq.total_bits  # storage unchanged


@pytest.mark.parametrize(("heal", "key"), [
    ({"steps": -1}, "quant.heal.steps"), ({"steps": 5, "lr": 0}, "quant.heal.lr"),
    ({"steps": 5, "batch_size": 0}, "quant.heal.batch_size"),
])
def test_bad_heal_values_are_one_line(heal, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_quant_config(QuantConfig(bits=4, heal=heal))
    with pytest.raises(ConfigError, match="quant.heal.steps"):
        validate_quant_config(QuantConfig(bits=16, heal={"steps": 5}))


def test_a_healed_job_is_its_own_regime_with_its_own_identity(tmp_path, cache_dir):
    common = [*TINY, "trainer.max_steps=20", "eval.sequences=8", "quant.bits=2", "quant.granularity=channel",
              "model.size=xs", f"out_dir={tmp_path}/out", f"paths.cache={cache_dir}"]
    r = run_here("ksir-run", "-m", "job=quantize", "quant.heal.steps=0,10", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    recs = {x["regime"]: x for x in (json.loads(p.read_text()) for p in (tmp_path / "out" / "results").glob("q-*.json"))}
    assert set(recs) == {"ptq", "ptq+kd"} and recs["ptq"]["run_key"] != recs["ptq+kd"]["run_key"]
    assert recs["ptq+kd"]["total_bits"] == recs["ptq"]["total_bits"]
    assert recs["ptq+kd"]["metrics"]["heal_steps"] == 10 and "heal" in recs["ptq+kd"]["identity"]["quant"]
    assert "heal" not in recs["ptq"]["identity"]["quant"]


def test_healing_a_gpt2_model_freezes_its_conv1d_weights(trained_tiny):
    """GPT-2 stores its linear weights transposed (Conv1D): the k-bit weights to freeze are those parameters, not
    the [out, in] view of them (freezing the view crashed, and left the real weights training)."""
    import transformers

    cfg = transformers.GPT2Config(vocab_size=257, n_positions=64, n_embd=64, n_layer=2, n_head=4)
    torch.manual_seed(0)
    base = transformers.GPT2LMHeadModel(cfg).eval()
    q = QuantConfig(bits=2, granularity="channel", heal={"steps": 5, "lr": 1e-3, "batch_size": 8})
    model = copy.deepcopy(base)
    quantize_model(model, q)
    names = quantized_linear_names(model, q)
    assert names and all(type(model.get_submodule(n)).__name__ == "Conv1D" for n in names)
    before = {n: model.get_submodule(n).weight.detach().clone() for n in names}
    info = heal_model(model, base, q, trained_tiny.data.train, trained_tiny.cfg.trainer, seed=0)
    assert info["heal_steps"] == 5 and info["heal_trained_params"] > 0
    assert all(torch.equal(model.get_submodule(n).weight, w) for n, w in before.items())
