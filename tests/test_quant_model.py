"""Whole-model quantization: layer selection per family, bit accounting, outlier columns."""

import pytest
import torch
import transformers as T

from ksir.quant import OutlierConfig, QuantConfig, quantize_model, quantized_linear_names
from ksir.quant.bits import count_params
from ksir.quant.outliers import previous_layer
from ksir.quant.select import get_weight, is_linear

TINY = {
    "llama": lambda: T.LlamaForCausalLM(
        T.LlamaConfig(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
        )
    ),
    "neox": lambda: T.GPTNeoXForCausalLM(
        T.GPTNeoXConfig(
            vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4
        )
    ),
    "opt": lambda: T.OPTForCausalLM(
        T.OPTConfig(
            vocab_size=128,
            hidden_size=64,
            ffn_dim=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            word_embed_proj_dim=64,
        )
    ),
    "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(vocab_size=128, n_embd=64, n_layer=2, n_head=4)),
}


def tiny(family):
    torch.manual_seed(0)
    return TINY[family]().eval()


@pytest.mark.parametrize("family", list(TINY))
def test_default_selection_is_the_block_linears(family):
    m = tiny(family)
    names = quantized_linear_names(m, QuantConfig())
    all_linear = [n for n, mod in m.named_modules() if is_linear(mod)]
    assert names and len(names) == len(all_linear) - 1  # everything but the output head
    assert not any("lm_head" in n or "embed" in n for n in names)
    per_block = {"llama": 7, "neox": 4, "opt": 6, "gpt2": 4}[family]  # gpt2: Conv1D layers
    assert len(names) == 2 * per_block


@pytest.mark.parametrize("family", list(TINY))
@pytest.mark.parametrize("dtype", ["int", "nf"])
def test_quantize_every_family(family, dtype):
    m = tiny(family)
    q = QuantConfig(bits=4, dtype=dtype, blocksize=64)
    names = quantized_linear_names(m, q)
    mods = dict(m.named_modules())
    before = {n: get_weight(mods[n]).detach().clone() for n in names}
    emb = m.get_input_embeddings().weight.detach().clone()
    ids = torch.randint(0, 128, (2, 16))
    s = quantize_model(m, q)
    for n in names:
        w = get_weight(mods[n])
        assert not torch.equal(w, before[n])
        for blk in w.reshape(-1, 64):
            assert blk.unique().numel() <= 16
    assert torch.equal(m.get_input_embeddings().weight, emb)
    assert torch.isfinite(m(ids).logits).all()
    assert s.n_layers == len(names) and s.n_params == count_params(m)


def test_bit_accounting_int4_block64():
    m = tiny("llama")
    s = quantize_model(m, QuantConfig(bits=4, blocksize=64))
    n_w = sum(
        get_weight(mod).numel()
        for n, mod in m.named_modules()
        if n in quantized_linear_names(m, QuantConfig())
    )
    assert s.n_quantized == n_w
    assert s.total_bits == pytest.approx(n_w * (4 + 16 / 64) + (s.n_params - n_w) * 16)
    assert s.bits_per_param == pytest.approx(s.total_bits / s.n_params)


def test_tied_weights_counted_once():
    m = tiny("gpt2")
    assert m.lm_head.weight is m.transformer.wte.weight
    s = quantize_model(m, QuantConfig(bits=16))
    assert s.n_params == sum(p.numel() for p in m.parameters()) and s.total_bits == 16 * s.n_params


@pytest.mark.parametrize(
    "kw, extra_per_weight",
    [
        ({"granularity": "channel"}, lambda o, i: 16 / i),
        ({"granularity": "tensor"}, lambda o, i: 16 / (o * i)),
        ({"dtype": "int_asym"}, lambda o, i: (16 + 16) / 64),  # 16-bit scale + 16-bit offset
        ({"dtype": "int_asym", "zero_point": "int"}, lambda o, i: (16 + 4) / 64),  # + 4-bit integer zero-point
        ({"scale_bits": 8}, None),
    ],
)
def test_block_constants_are_counted(kw, extra_per_weight):
    m = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(1024, 512, bias=False)))
    s = quantize_model(m, QuantConfig(bits=4, **kw))
    if extra_per_weight is None:  # double quantization: 8 bits per block + 32 per 256 blocks + 32 (mean)
        nb = 512 * 1024 // 64
        assert s.total_bits == 512 * 1024 * 4 + nb * 8 + (nb // 256) * 32 + 32
    else:
        assert s.total_bits == pytest.approx(512 * 1024 * (4 + extra_per_weight(512, 1024)))


def test_proxy_outlier_overhead_is_p_times_16_minus_k():
    m = torch.nn.Sequential(
        torch.nn.Sequential(torch.nn.Linear(500, 1000, bias=False), torch.nn.Linear(1000, 500, bias=False))
    )
    base = quantize_model(tiny_copy(m), QuantConfig(bits=4, blocksize=4))
    s = quantize_model(m, QuantConfig(bits=4, blocksize=4, outlier=OutlierConfig("proxy", 0.02)))
    overhead = (s.total_bits - base.total_bits) / base.n_params
    assert overhead == pytest.approx(0.02 * (16 - 4), rel=0.01)  # + 16-bit column indices (0.001 bit)


def tiny_copy(m):
    import copy

    return copy.deepcopy(m)


def test_proxy_previous_layers_llama():
    m = tiny("llama")
    linears = [(n, mod) for n, mod in m.named_modules() if is_linear(mod)]
    idx = {n: i for i, (n, _) in enumerate(linears)}
    mods = dict(linears)

    def prev(n):
        return previous_layer(linears, idx[n])

    L = "model.layers"
    assert prev(f"{L}.0.self_attn.o_proj") is mods[f"{L}.0.self_attn.v_proj"]
    assert prev(f"{L}.0.mlp.down_proj") is mods[f"{L}.0.mlp.up_proj"]
    assert prev(f"{L}.0.mlp.gate_proj") is mods[f"{L}.0.self_attn.o_proj"]
    assert prev(f"{L}.1.self_attn.q_proj") is mods[f"{L}.0.mlp.down_proj"]
    assert prev(f"{L}.0.self_attn.q_proj") is None  # first block: the layer's own column std


def test_proxy_keeps_columns_fed_by_high_std_units():
    m = tiny("llama")
    up = m.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        up[[3, 77], :] *= 50  # hidden units 3 and 77 have high-std producing weights
    down_before = m.model.layers[0].mlp.down_proj.weight.detach().clone()
    quantize_model(
        m, QuantConfig(bits=3, outlier=OutlierConfig("proxy", 0.02))
    )  # round(0.02*128) = 3 columns
    down = m.model.layers[0].mlp.down_proj.weight
    assert torch.equal(down[:, [3, 77]], down_before[:, [3, 77]])


def test_activation_outliers_pick_large_input_columns():
    m = tiny("llama")
    with torch.no_grad():
        m.model.layers[1].post_attention_layernorm.weight[[5, 40]] = (
            100.0  # inputs 5, 40 of gate/up become huge
        )
    up_before = m.model.layers[1].mlp.up_proj.weight.detach().clone()
    calib = torch.randint(0, 128, (4, 32))
    s = quantize_model(m, QuantConfig(bits=3, outlier=OutlierConfig("activation", 0.04)), calib)
    up = m.model.layers[1].mlp.up_proj.weight
    assert torch.equal(up[:, [5, 40]], up_before[:, [5, 40]])
    assert s.n_quantized < sum(p.numel() for n, p in m.named_parameters() if "layers" in n and "proj" in n)
    with pytest.raises(Exception, match="calib"):
        quantize_model(tiny("llama"), QuantConfig(bits=3, outlier=OutlierConfig("activation", 0.04)))
