"""SmoothQuant and AWQ: the scales against the papers' formulas computed by hand, the scaled model computing the
same function in 16 bits, SmoothQuant rescuing 8-bit activations from a planted outlier channel, AWQ's search
recomputed independently, and the job's record."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ksir.errors import ConfigError
from ksir.quant import QuantConfig, quantize_model, selected_shapes
from ksir.quant.smooth import awq_scales, input_stats, smooth_layers, smoothquant_scales

from .conftest import compose


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_scales_follow_the_papers_formulas():
    rng = np.random.default_rng(0)
    amax, amean = rng.uniform(0.1, 20, 32), rng.uniform(0.01, 2, 32)
    w = rng.normal(size=(16, 32))
    s = smoothquant_scales(torch.tensor(amax, dtype=torch.float32), torch.tensor(w, dtype=torch.float32), 0.5)
    np.testing.assert_allclose(s.numpy(), amax**0.5 / np.abs(w).max(0) ** 0.5, rtol=1e-5)  # SmoothQuant eq. 4
    for a in (0.0, 0.3, 1.0):
        want = amean**a / np.exp(np.mean(np.log(amean**a)))  # mean|x|^alpha, geometric mean 1
        np.testing.assert_allclose(awq_scales(torch.tensor(amean, dtype=torch.float32), a).numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("method", ["smoothquant", "awq"])
def test_scaled_model_computes_the_same_function_in_16_bits(trained_tiny, method):
    model = copy.deepcopy(trained_tiny.model).eval()
    ids = trained_tiny.eval_blocks[:2]
    before = _logits(model, ids)
    q = QuantConfig(bits=4, act={"bits": 8}, smooth={"method": method, "alpha": 0.5})
    layers = {n: model.get_submodule(n) for n in selected_shapes(model, q)}
    w0 = {n: m.weight.detach().clone() for n, m in layers.items()}
    smooth_layers(model, layers, q, trained_tiny.calib[:4], quantize=lambda w: w)
    assert any(not torch.allclose(m.weight, w0[n]) for n, m in layers.items())  # the weights did change ...
    torch.testing.assert_close(_logits(model, ids), before, atol=1e-4, rtol=1e-4)  # ... the function did not


def test_smoothquant_rescues_8_bit_activations_from_an_outlier_channel(trained_tiny):
    """A planted outlier: one channel of the first norm's output x30, the matching columns of q/k/v /30 (the
    same function). Per-tensor 8-bit activations then lose that layer's small channels; SmoothQuant moves the
    range into the weights and the W8A8 model stays closer to the 16-bit one."""
    base = copy.deepcopy(trained_tiny.model).eval()
    block = base.model.layers[0]
    with torch.no_grad():
        block.input_layernorm.weight[5] *= 30
        for p in (block.self_attn.q_proj, block.self_attn.k_proj, block.self_attn.v_proj):
            p.weight[:, 5] /= 30
    ids = trained_tiny.eval_blocks[:4]
    ref = _logits(base, ids)
    err = {}
    for method in ("none", "smoothquant"):
        m = copy.deepcopy(base)
        quantize_model(m, QuantConfig(bits=8, act={"bits": 8, "granularity": "tensor"},
                                      smooth={"method": method}), trained_tiny.calib)
        err[method] = (_logits(m, ids) - ref).pow(2).mean().item()
    assert err["smoothquant"] < 0.5 * err["none"], err


def test_awq_picks_the_alpha_with_the_least_output_error_recomputed_independently(trained_tiny):
    from ksir.quant.blockwise import make_grid, quantize_weight

    model = copy.deepcopy(trained_tiny.model).eval()
    q = QuantConfig(bits=3, smooth={"method": "awq", "grid": 5})
    names = list(selected_shapes(model, q))
    layers = {n: model.get_submodule(n) for n in names}
    stats = input_stats(model, layers, trained_tiny.calib, 8, keep_rows=2048)
    w0 = {n: layers[n].weight.detach().clone() for n in names}
    grid = make_grid(q)
    chosen = quantize_model(model, q, trained_tiny.calib).smooth
    name = "model.layers.0.mlp.down_proj"
    x, amean = stats[name]["rows"].numpy().astype(np.float64), stats[name]["absmean"].numpy().astype(np.float64)
    w = w0[name].numpy().astype(np.float64)
    errs = {}
    for a in (0.0, 0.2, 0.4, 0.6, 0.8):  # numpy: scales, the product and the error; ksir's grid for the rounding
        s = amean**a / np.exp(np.mean(np.log(amean**a)))
        wq = quantize_weight(torch.tensor(w * s, dtype=torch.float32), grid, "block", 64).double().numpy()
        errs[a] = np.mean(((x / s) @ wq.T - x @ w.T) ** 2)
    best = min(errs, key=errs.get)
    assert chosen[name]["alpha"] == pytest.approx(best)
    assert chosen[name]["error"] == pytest.approx(errs[best], rel=1e-3)
    assert chosen[name]["error_rtn"] == pytest.approx(errs[0.0], rel=1e-3)


def test_smoothed_jobs_record_their_scales_and_keys(tiny_cfg, trained_tiny):
    from ksir.jobs import describe, execute

    awq = tiny_cfg("job=quantize", "model.size=xs", "quant.bits=3", "quant.smooth.method=awq", "logger=none")
    rec = execute(awq)
    rtn = execute(tiny_cfg("job=quantize", "model.size=xs", "quant.bits=3", "logger=none"))
    assert rec["smooth"] == "awq" and rec["total_bits"] == rtn["total_bits"]  # scales fold into the previous op
    assert set(rec["smooth_layers"]) == set(selected_shapes(trained_tiny.model, awq.quant))
    assert rec["run_key"] != rtn["run_key"] and describe(awq).endswith("int3 b64 rtn awq")
    assert all(v["error"] <= v["error_rtn"] for v in rec["smooth_layers"].values())


@pytest.mark.parametrize("overrides,needle", [
    (["quant.bits=4", "quant.smooth.method=smoothquant"], "set quant.act.bits below 16"),
    (["quant.act.bits=8", "quant.smooth.method=awq"], "AWQ scales weight columns"),
    (["quant.bits=4", "quant.smooth.method=awq", "quant.rotate=hadamard"], "per-channel scales combine with"),
    (["quant.bits=4", "quant.smooth.method=awq", "quant.smooth.alpha=2"], "null or a number in [0, 1]"),
    (["quant.bits=4", "quant.smooth.method=gptq"], "allowed: none, smoothquant, awq"),
])
def test_bad_smooth_settings_are_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        compose(["job=quantize", *overrides])
    assert needle in str(e.value) and "\n" not in str(e.value)
