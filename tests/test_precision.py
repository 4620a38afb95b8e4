"""ksir.precision: matmuls of the blocks rounded to bf16 / FP8 in forward and backward, per-tensor or unscaled."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ksir import precision, spec
from ksir.families import get_family, own_config
from ksir.parametrization import PARAMETRIZATIONS


def test_registries_match_the_names_the_torch_free_spec_checks():
    assert tuple(precision.FORMATS) == spec.MATMUL_PRECISIONS
    assert precision.SCALINGS == spec.MATMUL_SCALINGS
    assert tuple(PARAMETRIZATIONS) == spec.PARAMETRIZATIONS


@pytest.mark.parametrize("name, mantissa", [("fp8_e4m3", 3), ("fp8_e5m2", 2), ("bf16", 7)])
def test_rounding_error_is_the_formats_half_ulp_with_per_tensor_scales(name, mantissa):
    torch.manual_seed(0)
    x = torch.randn(4096) * 1e-3  # far below FP8's normal range: only the per-tensor scale keeps it
    q = precision.round_to(x, precision.FORMATS[name], "tensor")
    rel = ((q - x).abs() / x.abs()).max().item()
    assert 0 < rel <= 2.0 ** -(mantissa + 1) * 1.0001 or name == "bf16" and rel <= 2.0 ** -8 * 1.0001
    assert torch.equal(precision.round_to(x, precision.FORMATS["fp32"]), x)


def test_bf16_rounding_is_torchs_cast_and_fp8_saturates_instead_of_overflowing():
    x = torch.randn(1000)
    assert torch.equal(precision.round_to(x, precision.FORMATS["bf16"]), x.to(torch.bfloat16).float())
    big = torch.tensor([1e6, -1e6, 1.0])
    q = precision.round_to(big, precision.FORMATS["fp8_e4m3"], "none")
    assert torch.isfinite(q).all() and q.tolist() == [448.0, -448.0, 1.0]


def test_unscaled_fp8_flushes_small_tensors_that_per_tensor_scaling_keeps():
    """What unit scaling is for: sp-sized gradients (~1e-4) vanish in E4M3 without a scale."""
    g = torch.randn(10_000) * 1e-4
    assert precision.underflow_share(g, "fp8_e4m3", "none") == 1.0
    assert precision.underflow_share(g, "fp8_e4m3", "tensor") < 0.01
    assert precision.underflow_share(torch.randn(10_000), "fp8_e4m3", "none") < 0.01  # unit variance fits as is


def test_forward_and_backward_matmuls_see_rounded_operands():
    torch.manual_seed(0)
    fmt = precision.FORMATS["fp8_e4m3"]
    x = torch.randn(8, 32, requires_grad=True)
    w = torch.randn(16, 32, requires_grad=True)
    g = torch.randn(8, 16)
    y = precision.linear(x, w, None, fmt, "tensor")
    y.backward(g)
    xq, wq, gq = (precision.round_to(t, fmt, "tensor") for t in (x.detach(), w.detach(), g))
    assert torch.allclose(y, xq @ wq.T, atol=1e-5)
    assert torch.allclose(x.grad, gq @ wq, atol=1e-5)  # dL/dx = g8 W8
    assert torch.allclose(w.grad, gq.T @ xq, atol=1e-5)  # dL/dW = g8^T x8
    assert not torch.allclose(w.grad, g.T @ x.detach(), atol=1e-5)  # and they differ from full precision


@pytest.mark.parametrize("name", ["sp", "umup"])
def test_apply_sets_every_block_linear_and_remove_restores_the_model(name):
    cfg = own_config(get_family("llama"), "xs", vocab_size=259)
    torch.manual_seed(0)
    model = PARAMETRIZATIONS[name].build(cfg)
    keys = list(model.state_dict())
    ids = torch.randint(0, 259, (2, 16))
    ref = model(input_ids=ids).logits
    n = precision.apply(model, "fp8_e4m3", "tensor")
    assert n == 7 * cfg.num_hidden_layers  # q k v o gate up down; readout and embedding stay
    assert list(model.state_dict()) == keys
    low = model(input_ids=ids).logits
    assert (low - ref).abs().max() > 0  # the model computes something else now
    if name == "sp":  # ... exactly what E4M3 matmuls compute, written here from the format's definition
        import copy
        import math

        import torch.nn.functional as F

        def e4m3(t: torch.Tensor) -> torch.Tensor:  # power-of-two per-tensor scale, saturating cast
            s = 2.0 ** math.floor(math.log2(448.0 / t.detach().abs().max().item()))
            return (t * s).clamp(-448, 448).to(torch.float8_e4m3fn).float() / s

        plain = copy.deepcopy(model)
        precision.remove(plain)
        for m in precision.block_linears(plain).values():
            m.forward = (lambda lin: lambda x: F.linear(e4m3(x), e4m3(lin.weight), lin.bias))(m)
        torch.testing.assert_close(low, plain(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    precision.remove(model)
    assert torch.equal(model(input_ids=ids).logits, ref)
    if name == "sp":
        assert all(type(m) is nn.Linear for m in precision.block_linears(model).values())


@pytest.mark.gpu
def test_native_fp8_forward_equals_the_simulated_one_on_cuda():
    dev = torch.device("cuda")
    if not torch.cuda.is_available() or not precision.native_fp8_available(dev):
        pytest.skip("no FP8 tensor cores")
    torch.manual_seed(0)
    fmt = precision.FORMATS["fp8_e4m3"]
    x, w = torch.randn(64, 128, device=dev), torch.randn(256, 128, device=dev)
    native = precision.linear(x, w, None, fmt, "tensor")
    simulated = F.linear(precision.round_to(x, fmt), precision.round_to(w, fmt))
    assert torch.allclose(native, simulated, rtol=1e-3, atol=1e-3)
