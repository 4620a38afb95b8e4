"""GPTQ vs round-to-nearest on the layers of a trained own-family model: with the same grid, GPTQ's layer-output
error on its calibration data is lower, for every data type."""

import copy

import pytest
import torch

from ksir.quant import QuantConfig, quantize_model, quantized_linear_names
from ksir.quant.blockwise import make_grid, quantize_weight
from ksir.quant.gptq import block_groups, collect_hessians, gptq_quantize_weight
from ksir.quant.select import get_weight


@pytest.fixture(scope="session")
def trained(trained_tiny):
    """llama-xs trained by the real train job (tests/conftest.py)."""
    return trained_tiny


@pytest.fixture(scope="session")
def layer_data(trained):
    model = trained.model
    names = quantized_linear_names(model, QuantConfig())
    mods = dict(model.named_modules())
    H = collect_hessians(model, {n: mods[n] for n in names}, trained.calib, batch_size=8)
    return {n: (get_weight(mods[n]).detach().float(), H[n]) for n in names}


def output_error(W, Q, H):
    """Mean squared layer-output error on the calibration inputs: tr((W-Q) H (W-Q)^T) (H = 2/n X^T X)."""
    D = W - Q
    return torch.einsum("oi,ij,oj->", D, H, D).item()


CASES = [
    ("int", 3, {}),
    ("int_asym", 3, {}),
    ("int_asym", 3, {"zero_point": "int"}),
    ("float", 3, {}),
    ("dynamic", 3, {}),
    ("nf", 3, {}),
    ("quantile", 3, {}),
    ("codebook", 2, {"codebook": [-1.0, -0.25, 0.0, 0.5]}),
    ("float", 4, {"exponent_bits": 2, "subnormals": False}),
]


@pytest.mark.parametrize("dtype, k, extra", CASES, ids=[f"{d}{k}" + "".join(f"-{v}" for v in e.values()) for d, k, e in CASES])
def test_gptq_beats_rtn_on_every_layer(layer_data, dtype, k, extra):
    q = QuantConfig(bits=k, dtype=dtype, blocksize=32, **extra)
    grid = make_grid(q)
    for name, (W, H) in layer_data.items():
        rtn = quantize_weight(W, grid, q.granularity, q.blocksize)
        gq = gptq_quantize_weight(W, H, grid, q.granularity, q.blocksize, q.gptq)
        e_rtn, e_gptq = output_error(W, rtn, H), output_error(W, gq, H)
        assert e_gptq < e_rtn, (name, e_gptq, e_rtn)
        for blk in gq.reshape(-1, 32):  # GPTQ stays on the grid: at most 2^k values per block
            assert blk.unique().numel() <= 2**k


@pytest.mark.parametrize(
    "kw",
    [
        {"granularity": "channel"},
        {"granularity": "tensor"},
        {"gptq": {"act_order": True}},
        {"scale_search": "mse"},
        {"scale_bits": 8},
        {"blocksize": 16},
    ],
    ids=["channel", "tensor", "act_order", "mse", "dq8", "block16"],
)
def test_gptq_beats_rtn_with_every_option(layer_data, kw):
    q = QuantConfig.from_mapping({"bits": 3, "dtype": "nf", "blocksize": 64, **kw})
    grid = make_grid(q)
    tot_rtn = tot_gptq = 0.0
    for W, H in layer_data.values():
        if q.granularity == "block" and W.shape[1] % q.blocksize:
            continue
        tot_rtn += output_error(W, quantize_weight(W, grid, q.granularity, q.blocksize), H)
        tot_gptq += output_error(W, gptq_quantize_weight(W, H, grid, q.granularity, q.blocksize, q.gptq), H)
    assert 0 < tot_gptq < tot_rtn


def test_gptq_keeps_outlier_columns_in_16_bit(layer_data):
    W, H = next(iter(layer_data.values()))
    keep = torch.tensor([1, 7, 30])
    grid = make_grid(QuantConfig(bits=3))
    gq = gptq_quantize_weight(W, H, grid, "block", 32, keep_cols=keep)
    rest = torch.ones(W.shape[1], dtype=torch.bool)
    rest[keep] = False
    first = gq[:, :32][:, rest[:32]]  # the first block without its kept columns: on the 3-bit grid
    assert all(row.unique().numel() <= 8 for row in first)
    assert gq[:, keep].unique().numel() > 8 * 3  # kept columns are free 16-bit values
    assert output_error(W, gq, H) < output_error(W, gptq_quantize_weight(W, H, grid, "block", 32), H)


def test_block_groups_follow_transformer_blocks():
    names = ["model.layers.0.a", "model.layers.0.b", "model.layers.1.a", "lm_head"]
    assert block_groups(names) == [
        ["model.layers.0.a", "model.layers.0.b"],
        ["model.layers.1.a"],
        ["lm_head"],
    ]


def test_gptq_model_stays_closer_to_the_16_bit_model_than_rtn(trained):
    """End to end: sequential GPTQ over the whole model keeps its predictions closer to the 16-bit model's than
    RTN does, on held-out blocks the calibration never saw: KL(16-bit || quantized) per token. (The loss itself
    is no test here: on this barely trained model 3-bit RTN noise can lower the held-out loss.)"""
    import torch.nn.functional as F

    held = trained.eval_blocks
    with torch.no_grad():
        ref = F.log_softmax(trained.model(held).logits.float(), -1)
    kl = {}
    for method in ("rtn", "gptq"):
        m = copy.deepcopy(trained.model)
        s = quantize_model(m, QuantConfig(method=method, bits=3, dtype="int", blocksize=32), trained.calib)
        with torch.no_grad():
            low = F.log_softmax(m(held).logits.float(), -1)
        kl[method] = F.kl_div(low.flatten(0, 1), ref.flatten(0, 1), log_target=True, reduction="batchmean").item()
        assert s.n_layers == len(quantized_linear_names(trained.model, QuantConfig())) > 0
    assert 0 < kl["gptq"] < kl["rtn"], kl
