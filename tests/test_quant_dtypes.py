"""The data-type registry: table shapes, the paper's defaults, and value-for-value agreement with bitsandbytes."""

import pytest
import torch

from ksir.quant.dtypes import (
    DTYPES,
    FLOAT_DEFAULT_EXPONENT_BITS,
    NF4_OFFSET,
    CodeOptions,
    dynamic_code,
    float_code,
    int_code,
    nf_code,
    nf_offset,
    quantile_code,
    static_code,
)

# Published constants (bitsandbytes NF4 table, rounded to 3 decimals; REFERENCE.md / QLoRA appendix).
NF4_PUBLISHED = [
    -1,
    -0.696,
    -0.525,
    -0.395,
    -0.284,
    -0.185,
    -0.091,
    0,
    0.080,
    0.161,
    0.246,
    0.338,
    0.441,
    0.563,
    0.723,
    1,
]
# bitsandbytes FP4 (E2M1, bias 2^(e-1)): normal magnitudes {2, 3, 4, 6, 8, 12} / 12 and zero.
FP4_NORMALS_PUBLISHED = [2 / 12, 3 / 12, 4 / 12, 6 / 12, 8 / 12, 1.0]


def _bnb():
    return pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes not importable")


def test_nf4_matches_published_constants():
    assert torch.allclose(nf_code(4), torch.tensor(NF4_PUBLISHED), atol=6e-4)


def test_fp4_normals_match_published_constants():
    c = float_code(
        4, CodeOptions(exponent_bits=2)
    )  # bitsandbytes FP4 is E2M1 (the paper's 4-bit default is E3M0)
    pos = c[c > 0]
    # bitsandbytes has two FP4 tables that differ only in the subnormal: create_fp8_map gives 0.0208 (= 0.5 * 2^-2
    # / 6, what we build), the 4-bit CUDA/CPU kernels use 0.0052. The normal values agree in both.
    assert torch.allclose(pos[1:], torch.tensor(FP4_NORMALS_PUBLISHED), atol=1e-6)
    assert pos[0].item() == pytest.approx(0.125 / 6)
    assert 0.0 in c.tolist() and c.numel() == 15  # +-0 share a value


def test_nf_offset_constant():
    assert nf_offset(4) == NF4_OFFSET
    assert nf_offset(4) == pytest.approx(1 - 0.5 * (1 / 30 + 1 / 32), abs=1e-7)


def test_nf4_equals_bitsandbytes():
    F = _bnb()
    ref = F.create_normal_map()
    assert torch.equal(nf_code(4), torch.cat([ref[ref < 0], torch.zeros(1), ref[ref > 0]]))


@pytest.mark.parametrize("k", range(2, 9))
def test_float_equals_bitsandbytes_fp8_map(k):
    F = _bnb()
    for e in range(1, k):
        ours = float_code(k, CodeOptions(exponent_bits=e))
        assert torch.equal(ours, F.create_fp8_map(True, e, k - 1 - e, k).unique()), (k, e)


@pytest.mark.parametrize("k", range(2, 9))
def test_dynamic_equals_bitsandbytes(k):
    F = _bnb()
    assert torch.equal(dynamic_code(k), F.create_dynamic_map(True, k - 1, k).unique())


def test_dynamic8_is_bitsandbytes_default_map():
    F = _bnb()
    ref = F.create_dynamic_map()
    assert ref.numel() == 256 and torch.equal(dynamic_code(8), ref.unique())


def test_float_default_exponent_bits_are_the_papers():
    assert FLOAT_DEFAULT_EXPONENT_BITS[3] == 2
    assert all(FLOAT_DEFAULT_EXPONENT_BITS[k] == 3 for k in range(4, 9))
    # 3-bit default E2M0: {0, subnormal-free powers}; 4-bit default E3M0
    assert float_code(3, CodeOptions()).numel() <= 8


@pytest.mark.parametrize("name", [n for n in DTYPES if n not in ("quantile", "codebook", "int_asym")])
def test_registry_tables(name):
    for k in DTYPES[name].bits:
        c = static_code(name, k, CodeOptions())
        assert c.dtype == torch.float32 and c.ndim == 1
        assert torch.all(c[1:] > c[:-1]), "sorted and distinct"
        assert c.numel() <= 2 ** int(k) if k >= 2 else c.numel() == 3
        assert c.abs().max() == 1 and c.max() == 1 and 0.0 in c.tolist()


def test_float_without_subnormals_drops_them():
    a, b = float_code(5, CodeOptions(subnormals=True)), float_code(5, CodeOptions(subnormals=False))  # E3M1
    assert b.numel() < a.numel() and set(b.tolist()) <= set(a.tolist())


def test_int_grid_and_ternary():
    assert torch.equal(int_code(4), torch.arange(-7, 8) / 7)
    assert int_code(1.58).tolist() == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_quantile_type(k):
    x = torch.randn(50_000, generator=torch.Generator().manual_seed(k))
    xn = x / x.abs().max()
    c = quantile_code(xn, k)
    assert c.numel() == 2**k and 0.0 in c.tolist() and c.abs().max() == 1
    # q_i = mean of the i/(2^k+1) and (i+1)/(2^k+1) quantiles (torch.quantile as the reference)
    n = 2**k
    qs = torch.quantile(xn, torch.arange(1, n + 1) / (n + 1))
    expect = torch.cat([(qs[:-1] + qs[1:]) / 2, torch.zeros(1)]).sort().values
    assert torch.allclose(c, expect / expect.abs().max(), atol=1e-5)
