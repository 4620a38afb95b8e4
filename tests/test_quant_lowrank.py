"""Low rank as a quantize-job axis: factor pairs and low-rank corrections of the quantization error, their bit
accounting, and the guarantee that a correction never increases a layer's output error."""

from __future__ import annotations

import pytest
import torch

from ksir.errors import ConfigError
from ksir.quant import QuantConfig, quantize_model, validate_quant_config
from ksir.quant.bits import layer_bits
from ksir.quant.blockwise import make_grid, quantize_weight
from ksir.quant.lowrank import correction, factor_bits, factorize, rank_of, relative_output_error


def _weight(m=96, n=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    # a decaying spectrum, as trained weights have, plus a heavy-tailed column scale (outlier features)
    u = torch.linalg.qr(torch.randn(m, m, generator=g))[0]
    v = torch.linalg.qr(torch.randn(n, n, generator=g))[0]
    s = torch.logspace(0, -2, min(m, n))
    return (u[:, : len(s)] * s) @ v[: len(s)] * 10


def test_full_rank_factor_pair_reproduces_the_weight():
    w = _weight()
    assert rank_of(min(w.shape), w.shape) == min(w.shape)  # full rank
    assert torch.allclose(factorize(w, min(w.shape), bits=16), w, atol=2e-3 * w.abs().max())
    exact = factorize(w.double(), min(w.shape), bits=16).double()  # fp16 factors: only their rounding remains
    assert (exact - w.double()).abs().max() < 1e-2 * w.abs().max()


def test_rank_is_absolute_or_a_fraction_of_the_smaller_side():
    assert rank_of(8, (96, 128)) == 8 and rank_of(0.25, (96, 128)) == 24 and rank_of(96, (96, 128)) == 96
    assert rank_of(0.001, (96, 128)) == 1
    with pytest.raises(ConfigError, match=r"quant\.lowrank\.rank=1000 .*<= 96"):  # refused, not clamped
        rank_of(1000, (96, 128))


def test_factor_pair_error_falls_with_rank_as_the_svd_says():
    w = _weight()
    s = torch.linalg.svdvals(w.double())
    for r in (4, 16, 48):
        err = (factorize(w.double(), r, bits=16).double() - w.double()).norm()
        best = s[r:].pow(2).sum().sqrt()  # Eckart-Young: the best rank-r error
        assert err == pytest.approx(float(best), rel=1e-2)


@pytest.mark.parametrize("whiten", [False, True])
@pytest.mark.parametrize("bits", [3, 4])
def test_a_correction_never_increases_the_layer_output_error(bits, whiten):
    w = _weight()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, w.shape[1], generator=g) * torch.linspace(0.1, 4, w.shape[1])  # uneven input scales
    q = quantize_weight(w, make_grid(QuantConfig(bits=bits)), "block", 64)
    before = relative_output_error(w, q, x)
    rms = x.pow(2).mean(0).sqrt() if whiten else None
    for r in (1, 4, 16, 64):
        after = relative_output_error(w, q + correction(w, q, r, 16, rms), x)
        assert after <= before * (1 + 1e-3), (r, before, after)
    # whitening with the data's own column scales does better on that data than the plain SVD of the error
    plain = relative_output_error(w, q + correction(w, q, 8, 16, None), x)
    white = relative_output_error(w, q + correction(w, q, 8, 16, x.pow(2).mean(0).sqrt()), x)
    assert white < plain


def test_bit_accounting_per_mode():
    shape = (96, 128)
    base = QuantConfig(bits=4, blocksize=64)
    k_bits, _ = layer_bits(shape, base)
    assert k_bits == 96 * 128 * 4 + 96 * 2 * 16  # 4 bits per weight + a 16-bit scale per block of 64
    corr = QuantConfig(bits=4, blocksize=64, lowrank={"mode": "correct", "rank": 8, "bits": 16})
    assert layer_bits(shape, corr)[0] == k_bits + 8 * (96 + 128) * 16
    corr8 = QuantConfig(bits=4, blocksize=64, lowrank={"mode": "correct", "rank": 8, "bits": 8})
    assert layer_bits(shape, corr8)[0] == k_bits + 8 * (96 + 128) * 8 + (96 + 8) * 16  # + a scale per factor row
    fact = QuantConfig(bits=16, lowrank={"mode": "factorize", "rank": 0.25})
    assert layer_bits(shape, fact)[0] == 24 * (96 + 128) * 16 == factor_bits(shape, 24, 16)
    fact4 = QuantConfig(bits=4, blocksize=64, lowrank={"mode": "factorize", "rank": 64})
    # A [96, 64] and B [64, 128] quantized at 4 bits with block-64 scales, like any weight
    assert layer_bits(shape, fact4)[0] == layer_bits((96, 64), base)[0] + layer_bits((64, 128), base)[0]


@pytest.mark.parametrize(("lowrank", "key"), [
    ({"mode": "sideways"}, "quant.lowrank.mode"),
    ({"mode": "correct", "rank": 0}, "quant.lowrank.rank"),
    ({"mode": "correct", "rank": 8, "bits": 4}, "quant.lowrank.bits"),
    ({"mode": "correct", "rank": 8, "whiten": "magic"}, "quant.lowrank.whiten"),
])
def test_bad_lowrank_values_are_one_line(lowrank, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_quant_config(QuantConfig(bits=4, lowrank=lowrank))


def test_a_correction_needs_k_bits_and_packed_backends_refuse_low_rank():
    with pytest.raises(ConfigError, match="quant.lowrank.mode"):
        validate_quant_config(QuantConfig(bits=16, lowrank={"mode": "correct", "rank": 8}))
    with pytest.raises(ConfigError, match="no packed kernel for low-rank"):
        validate_quant_config(QuantConfig(bits=4, dtype="nf", backend="bitsandbytes",
                                          lowrank={"mode": "correct", "rank": 8}))


def test_low_rank_quantize_model_counts_its_bits_and_never_increases_a_layer_output_error(trained_tiny):
    """On the trained tiny model, through quantize_model: 3-bit RTN + a whitened rank-8 correction costs
    r(m+n)*16 bits per layer more than 3-bit RTN and gives every layer an output error on the calibration inputs
    no larger than RTN's; a factor pair at full rank reproduces the model's loss."""
    import copy

    from ksir.evaluate import evaluate_lm
    from ksir.quant.calib import watch_inputs

    base = trained_tiny.model
    names = [n for n, m in base.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in n]
    inputs: dict[str, torch.Tensor] = {}
    watch_inputs(base, {n: base.get_submodule(n) for n in names}, trained_tiny.calib[:8], 8,
                 lambda n, x: inputs.setdefault(n, x.detach().clone()))
    plain_m, corr_m = copy.deepcopy(base), copy.deepcopy(base)
    plain = quantize_model(plain_m, QuantConfig(bits=3))
    corr = quantize_model(corr_m, QuantConfig(bits=3, lowrank={"mode": "correct", "rank": 8, "whiten": "activation"}),
                          trained_tiny.calib)
    shapes = [base.get_submodule(n).weight.shape for n in names]
    assert corr.total_bits - plain.total_bits == sum(8 * (a + b) * 16 for a, b in shapes)
    for n in names:
        w = base.get_submodule(n).weight
        e_plain = relative_output_error(w, plain_m.get_submodule(n).weight, inputs[n])
        e_corr = relative_output_error(w, corr_m.get_submodule(n).weight, inputs[n])
        assert e_corr <= e_plain * (1 + 1e-3), (n, e_plain, e_corr)
    full_m = copy.deepcopy(base)
    quantize_model(full_m, QuantConfig(bits=16, lowrank={"mode": "factorize", "rank": 0.9999}))
    loss = lambda m: evaluate_lm(m, trained_tiny.eval_blocks, 16)["val_loss"]  # noqa: E731
    assert loss(full_m) == pytest.approx(loss(base), abs=2e-3)
