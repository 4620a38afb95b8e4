"""QAT building blocks on tiny random models: fake quantizers against the PTQ registry and the formulas of LSQ,
ParetoQ and k-SIR; gradients; bit accounting; export round trip; config validation and run identity."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import transformers as T

from ksir.errors import ConfigError
from ksir.qat import (
    TERNARY_EXACT_BITS,
    KSIRQuant,
    QATConfig,
    QATLinear,
    enable_ksir_attention,
    fake_quant_activation,
    is_qat_param_name,
    load_qat_model,
    prepare_qat,
    save_qat_checkpoint,
    stretched_round,
    validate_qat_config,
)
from ksir.qat.fake_quant import fake_quant_weight
from ksir.qat.model import weight_spec
from ksir.quant import QuantConfig, quantize_model
from ksir.quant.bits import summarize
from ksir.quant.select import quantized_linear_names


def tiny_llama(seed: int = 0, layers: int = 2) -> T.LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = T.LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=layers,
                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    return T.LlamaForCausalLM(cfg)


def ids(n: int = 4, t: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 97, (n, t), generator=torch.Generator().manual_seed(seed))


def qcfg(**kw) -> QATConfig:
    return QATConfig.from_mapping({"enabled": True, **kw})


PTQ_CASES = [dict(bits=4), dict(bits=3, dtype="nf"), dict(bits=4, dtype="float"), dict(bits=4, dtype="dynamic"),
             dict(bits=3, dtype="quantile"), dict(bits=3, dtype="int_asym"),
             dict(bits=3, dtype="int_asym", zero_point="int"), dict(bits=2, dtype="nf"),
             dict(bits=4, granularity="channel"), dict(bits=3, blocksize=32, scale_bits=8),
             dict(bits=2, dtype="codebook", codebook=[-1.0, -0.3, 0.2, 1.0])]


@pytest.mark.parametrize("case", PTQ_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
@pytest.mark.parametrize("scale", ["absmax", "lsq"])
def test_qat_forward_starts_at_the_ptq_model(case, scale):
    """absmax scales: the QAT forward *is* the registry's round-to-nearest; LSQ (absmax init): it starts there."""
    ref = tiny_llama().eval()
    qat = copy.deepcopy(ref)
    quantize_model(ref, QuantConfig(**{k: v for k, v in case.items()}))
    q = qcfg(scale=scale, quantizer="codebook", **case)
    prepare_qat(qat, q)
    qat.eval()
    names = quantized_linear_names(ref, q.quant_config())
    mods = dict(qat.named_modules())
    for n in names:
        assert isinstance(mods[n], QATLinear)
        torch.testing.assert_close(mods[n].quantized_weight(), dict(ref.named_modules())[n].weight, rtol=0, atol=0)
    x = ids()
    with torch.no_grad():
        torch.testing.assert_close(qat(x).logits, ref(x).logits, rtol=0, atol=1e-6)


def test_lsq_gradients_follow_the_formula():
    """dL/ds = g * sum(dL/dw_q * (q - w/s)) inside the range, the clipped level outside; dL/dw = 0 outside
    (Esser et al. 2019, with g = 1/sqrt(N * Q_P))."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 8, bias=False)
    q = qcfg(bits=3, granularity="channel")
    spec = weight_spec(q)
    from ksir.qat.model import to_qat_linear

    m = to_qat_linear(lin, spec, None)
    with torch.no_grad():
        m.qat_scale.mul_(0.7)  # some weights now clip
    up = torch.randn(8, 64)
    (m.quantized_weight() * up).sum().backward()
    from ksir.quant.blockwise import store_fp16_up

    L, w = 3, m.weight.detach()
    x = w / store_fp16_up(m.qat_scale.detach())  # the forward uses the scale as stored (fp16)
    inside = x.abs() <= 1
    qx = torch.clamp(torch.round(x * L), -L, L) / L
    g = 1 / math.sqrt(64 * L)
    want_s = g * (up * torch.where(inside, qx - x, torch.sign(x))).sum(-1, keepdim=True)
    torch.testing.assert_close(m.qat_scale.grad, want_s, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m.weight.grad, up * inside, rtol=1e-6, atol=1e-7)
    assert (~inside).sum() > 0 and m.qat_scale.grad.abs().min() > 0


@pytest.mark.parametrize("zero_point", ["float", "int"])
def test_lsq_plus_offset_gradient_is_the_clipped_upstream_sum(zero_point):
    """LSQ+ (Bhalgat et al. 2020): the output moves one-for-one with the offset only where it clips (inside the
    range round((w - m)/s) * s + m does not depend on m, straight through). The integer zero-point, rounded
    straight through, gets the same gradient in units of -s."""
    from ksir.qat.model import to_qat_linear
    from ksir.quant.blockwise import store_step

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 8, bias=False)
    spec = weight_spec(qcfg(bits=3, dtype="int_asym", zero_point=zero_point, granularity="channel"))
    m = to_qat_linear(lin, spec, None)
    with torch.no_grad():
        m.qat_scale.mul_(0.6)  # the grid no longer covers each row: both ends clip
    up = torch.randn(8, 64)
    (m.quantized_weight() * up).sum().backward()
    s = store_step(m.qat_scale.detach(), spec.grid)
    w, z = m.weight.detach(), m.qat_zero.detach()
    t = (w - z) / s if zero_point == "float" else w / s + torch.round(z)  # codes before clamping
    clipped = (torch.round(t) < 0) | (torch.round(t) > 7)
    want = (up * clipped).sum(-1, keepdim=True) / math.sqrt(64 * 7)  # LSQ gradient scale 1/sqrt(N * Q_P)
    if zero_point == "int":
        want = -want * s
    assert clipped.any(-1).all() and (~clipped).any()
    torch.testing.assert_close(m.qat_zero.grad, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(m.weight.grad, up * ~clipped, rtol=1e-6, atol=1e-7)


def test_stretched_elastic_levels_and_lsq_init():
    x = torch.linspace(-1, 1, 1001)
    assert torch.allclose(stretched_round(x, 3).unique(), torch.tensor([-2 / 3, 0.0, 2 / 3]))
    assert torch.allclose(stretched_round(x, 4).unique(), torch.tensor([-0.75, -0.25, 0.25, 0.75]))
    # ParetoQ's formula for 2 bits: (round(clip(x) * k/2 - 0.5) + 0.5) / k * 2 with k = 4 levels
    xc = torch.linspace(-0.999, 0.999, 1000)  # bin edges (ties) excluded: ParetoQ rounds half to even there
    torch.testing.assert_close(stretched_round(xc, 4), (torch.round(xc * 2 - 0.5) + 0.5) / 2)
    # LSQ init: 2 mean|w| / sqrt(Q_P) as a step size = 2 mean|w| sqrt(Q_P) as the code's scale (int: L = Q_P)
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 4, bias=False)
    from ksir.qat.model import to_qat_linear

    m = to_qat_linear(lin, weight_spec(qcfg(bits=4, granularity="channel", scale_init="lsq")), None)
    step = m.qat_scale.detach() / 7
    torch.testing.assert_close(step, 2 * lin.weight.detach().abs().mean(-1, keepdim=True) / math.sqrt(7))


@pytest.mark.parametrize("bits,levels,quantizer", [(1, 2, "sign"), (1.58, 3, "stretched"), (2, 4, "stretched")])
def test_extremely_low_bits_use_their_quantizers_and_accounting(bits, levels, quantizer):
    model = tiny_llama()
    q = qcfg(bits=bits, granularity="channel")
    assert q.resolved_quantizer() == quantizer
    summary = prepare_qat(model, q)
    k = TERNARY_EXACT_BITS if bits == 1.58 else bits
    assert summary.bits == pytest.approx(k)
    # Accounting: k bits per quantized weight + one 16-bit scale per row + 16-bit rest, via ksir.quant.bits.
    shapes = {n: tuple(m.weight.shape) for n, m in model.named_modules() if isinstance(m, QATLinear)}
    n_q = sum(a * b for a, b in shapes.values())
    n_rows = sum(a for a, _ in shapes.values())
    n_all = sum(p.numel() for n, p in model.named_parameters() if not is_qat_param_name(n))
    assert summary.total_bits == pytest.approx(n_q * k + n_rows * 16 + (n_all - n_q) * 16)
    for m in [m for m in model.modules() if isinstance(m, QATLinear)]:
        per_row = [r.unique().numel() for r in m.quantized_weight().detach()]
        assert max(per_row) <= levels and sum(n == levels for n in per_row) >= 0.9 * len(per_row)  # grid in use
    x = ids()
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    scales = [m.qat_scale.grad for m in model.modules() if isinstance(m, QATLinear)]
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in scales)


def test_ternary_record_bits_match_the_registry_formula():
    model = tiny_llama()
    q = qcfg(bits=1.58)
    names = quantized_linear_names(model, q.quant_config())
    mods = dict(model.named_modules())
    shapes = {n: tuple(mods[n].weight.shape) for n in names}
    n_w = sum(o * i for o, i in shapes.values())
    rest = sum(p.numel() for p in model.parameters()) - n_w
    want = n_w * math.log2(3) + n_w // 64 * 16 + rest * 16  # log2(3) bits a weight, a 16-bit scale per block of 64
    assert summarize(model, QuantConfig(bits=1.58), shapes, {}).total_bits == pytest.approx(want)
    assert prepare_qat(model, q).total_bits == pytest.approx(want)
    ptq4 = summarize(tiny_llama(), QuantConfig(bits=4), shapes, {}).total_bits
    assert prepare_qat(tiny_llama(), qcfg(bits=4)).total_bits == pytest.approx(ptq4)  # same as PTQ at 4 bits


def test_activation_quantization_is_per_token_k_bit_with_ste():
    x = torch.randn(3, 5, 64, requires_grad=True)
    y = fake_quant_activation(x, 4)
    steps = x.detach().abs().amax(-1, keepdim=True) / 7
    codes = y.detach() / steps
    torch.testing.assert_close(codes, codes.round(), rtol=0, atol=1e-4)
    assert codes.abs().max() <= 7 + 1e-4 and (y - x).abs().max() <= steps.max() / 2 + 1e-6
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_ksir_attention_matches_the_formula_and_16_bit_equals_sdpa():
    model = tiny_llama().eval()
    x = ids()
    with torch.no_grad():
        ref = model(x).logits
    enable_ksir_attention(model, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, ref, rtol=0, atol=1e-5)  # beta = 1, no rounding

    # One attention layer by hand: out = beta * softmax(Q_k(QK^T/sqrt(d)) + mask) Q_k(V)
    from ksir.qat.attention import ksir_attention_forward

    attn = model.model.layers[0].self_attn
    attn.ksir_attn = KSIRQuant(4, 2, bits=4)
    with torch.no_grad():
        attn.ksir_attn.score_alpha.copy_(torch.tensor([0.3, 0.2, 0.25, 0.4]))
        attn.ksir_attn.value_alpha.copy_(torch.tensor([0.1, 0.15]))
        attn.ksir_attn.beta.copy_(torch.tensor([1.0, 0.5, 2.0, 1.5]))
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 6, 16), torch.randn(2, 2, 6, 16), torch.randn(2, 2, 6, 16)
    out, _ = ksir_attention_forward(attn, q, k, v, None, scaling=0.25)
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    sa = torch.tensor([0.3, 0.2, 0.25, 0.4]).view(1, 4, 1, 1)
    va = torch.tensor([0.1, 0.1, 0.15, 0.15]).view(1, 4, 1, 1)
    s = torch.clamp(torch.round(q @ kr.transpose(2, 3) * 0.25 / sa), -7, 7) * sa
    s = s.masked_fill(~torch.ones(6, 6, dtype=torch.bool).tril(), float("-inf"))
    want = torch.tensor([1.0, 0.5, 2.0, 1.5]).view(1, 4, 1, 1) * (s.softmax(-1) @ (torch.clamp(torch.round(vr / va), -7, 7) * va))
    torch.testing.assert_close(out, want.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_ksir_alpha_and_beta_get_gradients_and_calibration_sets_alpha():
    model = tiny_llama()
    x = ids(8)
    n = enable_ksir_attention(model, 4, calib=x)
    assert n == 2
    kq = model.model.layers[0].self_attn.ksir_attn
    assert torch.all(kq.score_alpha > 0) and not torch.allclose(kq.score_alpha, torch.ones(4))
    assert torch.allclose(kq.value_alpha * 7, kq.value_absmax)  # alpha = absmax / L, L = 7 at 4 bits
    out = model(input_ids=x, labels=x)
    out.loss.backward()
    for layer in model.model.layers:
        for name, p in layer.self_attn.ksir_attn.named_parameters():
            assert p.grad is not None and torch.all(p.grad.abs() > 0), name


def test_export_reload_is_identical_and_plain_hf_sees_the_quantized_weights(tmp_path):
    model = tiny_llama()
    x = ids()
    q = qcfg(bits=3, dtype="nf", act_bits=8, attention={"enabled": True, "bits": 6})
    summary = prepare_qat(model, q, x)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):  # move weights and every learned constant away from their init
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    save_qat_checkpoint(model, None, tmp_path / "m", {"note": "test"}, q, summary)
    again = load_qat_model(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(again(x).logits, model(x).logits)
    assert isinstance(again.model.layers[1].mlp.down_proj, QATLinear)
    assert again.config._attn_implementation == "ksir"
    # Weight-only QAT: a plain HF loader gets the dequantized k-bit weights and the same outputs.
    m2 = tiny_llama()
    q2 = qcfg(bits=2)
    s2 = prepare_qat(m2, q2)
    m2.eval()
    save_qat_checkpoint(m2, None, tmp_path / "w", {}, q2, s2)
    plain = T.AutoModelForCausalLM.from_pretrained(tmp_path / "w")
    with torch.no_grad():
        assert torch.equal(plain(x).logits, m2(x).logits)
        assert plain.model.layers[0].mlp.up_proj.weight.unique().numel() > 4  # several scales, 4 levels each


def test_sixteen_bit_qat_leaves_the_model_untouched():
    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = prepare_qat(model, qcfg(bits=16))
    assert not any(isinstance(m, QATLinear) for m in model.modules())
    assert s.total_bits == 16 * sum(v.numel() for v in before.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("over,key", [
    ({"bits": 0.5}, "qat.bits"), ({"bits": 1, "dtype": "nf"}, "qat.bits"), ({"bits": 1.58, "dtype": "float"}, "qat.bits"),
    ({"scale": "minmax"}, "qat.scale"), ({"quantizer": "sign", "bits": 4}, "qat.quantizer"),
    ({"quantizer": "stretched", "dtype": "nf"}, "qat.quantizer"), ({"act_bits": 1}, "qat.act_bits"),
    ({"attention": {"enabled": True, "bits": 1}}, "qat.attention.bits"), ({"distill": {"weight": 0.5}}, "qat.distill.weight"),
    ({"blocksize": 48}, "qat.blocksize"), ({"bogus": 1}, "qat.bogus"), ({"scale_lr": 0}, "qat.scale_lr"),
])
def test_invalid_qat_values_name_the_key(over, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_qat_config({"enabled": True, **over}, [64, 192])


def test_qat_group_changes_the_train_key_only_when_enabled(tiny_cfg):
    from ksir.identity import run_key

    plain = tiny_cfg("job=train")
    assert run_key(tiny_cfg("job=train", "qat=none")) == run_key(plain)
    keys = {run_key(tiny_cfg("job=train", *o)) for o in (["qat=lsq"], ["qat=lsq", "qat.bits=2"],
                                                        ["qat=absmax"], ["qat=lsq", "qat.init_from=auto"])}
    assert len(keys) == 4 and run_key(plain) not in keys
    for preset in ("lsq", "absmax", "paretoq", "ksir", "none"):
        tiny_cfg("job=train", f"qat={preset}")  # composing a JobSpec validates it
    with pytest.raises(ConfigError, match="qat.bits"):
        tiny_cfg("job=train", "qat=lsq", "qat.bits=9")


def test_quantized_weights_use_k_bit_codes_per_block():
    torch.manual_seed(0)
    w = torch.randn(16, 128)
    for bits, dtype in ((2, "int"), (3, "nf"), (4, "float")):
        q = qcfg(bits=bits, dtype=dtype, quantizer="codebook", scale="absmax")
        wq = fake_quant_weight(w, weight_spec(q)).reshape(-1, 64)
        assert max(r.unique().numel() for r in wq) <= 2**bits
