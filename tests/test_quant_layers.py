"""Per-layer bits: rules, the sensitivity-driven allocation and their bit accounting, each against an independent
computation (a brute-force search, the bits written out by hand, the uniform quantizer, transformers' own loss)."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from ksir.errors import ConfigError
from ksir.quant import QuantConfig, quantize_model, selected_shapes
from ksir.quant.layers import block_index, greedy_allocation, rule_plan, sensitivities
from ksir.quant.select import get_weight

NAMES = [f"model.layers.{b}.{p}" for b in range(3) for p in ("self_attn.q_proj", "mlp.down_proj")]


def _two_block_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_rules_apply_in_order_and_name_blocks_by_position():
    q = QuantConfig(bits=3, layer_bits={"first": 8, "last": 16, r"down_proj": 4})
    plan = rule_plan(NAMES, q)
    assert [block_index(n) for n in NAMES] == [0, 0, 1, 1, 2, 2]
    assert plan == {"model.layers.0.self_attn.q_proj": 8, "model.layers.0.mlp.down_proj": 4,  # the later rule wins
                    "model.layers.1.self_attn.q_proj": 3, "model.layers.1.mlp.down_proj": 4,
                    "model.layers.2.self_attn.q_proj": 16, "model.layers.2.mlp.down_proj": 4}
    with pytest.raises(ConfigError, match=r"quant.layer_bits.gate_proj=8: .*matches none of 6"):
        rule_plan(NAMES, QuantConfig(bits=3, layer_bits={"gate_proj": 8}))


def test_mixed_plan_quantizes_each_layer_at_its_k_and_counts_bits_by_hand():
    base = _two_block_llama()
    q = QuantConfig(bits=2, layer_bits={"first": 8, "o_proj": 16})
    shapes = selected_shapes(base, q)
    model = copy.deepcopy(base)
    s = quantize_model(model, q)
    uniform = {k: copy.deepcopy(base) for k in (2, 8)}
    for k, m in uniform.items():
        quantize_model(m, QuantConfig(bits=k))
    mods, ref = dict(model.named_modules()), dict(base.named_modules())
    want_bits, n_quant = 0.0, 0
    for name, (out, inp) in shapes.items():
        k = 16 if name.endswith("o_proj") else 8 if block_index(name) == 0 else 2
        got = get_weight(mods[name])
        if k == 16:  # left as it was
            assert torch.equal(got, get_weight(ref[name]))
            want_bits += out * inp * 16
        else:  # exactly what the uniform k-bit model has in this layer (RTN is layer by layer)
            assert torch.equal(got, get_weight(dict(uniform[k].named_modules())[name]))
            want_bits += out * inp * k + out * inp / 64 * 16  # k per weight + an fp16 scale per block of 64
            n_quant += out * inp
    rest = sum(p.numel() for p in base.parameters()) - sum(o * i for o, i in shapes.values())
    assert s.total_bits == pytest.approx(want_bits + rest * 16, rel=1e-12)
    assert s.n_quantized == n_quant and s.n_layers == sum(1 for n in shapes if not n.endswith("o_proj"))
    n = {name: o * i for name, (o, i) in shapes.items()}
    assert s.mean_bits == pytest.approx(sum(s.plan[x] * n[x] for x in n) / sum(n.values()))
    assert s.plan["model.layers.1.mlp.up_proj"] == 2 and s.plan["model.layers.0.self_attn.o_proj"] == 16


def _brute_force(gain, sizes, budget):
    names = list(gain)
    best = None
    for ks in itertools.product(*(sorted(gain[n]) for n in names)):
        if sum(k * sizes[n] for k, n in zip(ks, names, strict=True)) > budget * sum(sizes.values()) + 1e-9:
            continue
        loss = sum(gain[n][k] for k, n in zip(ks, names, strict=True))
        if best is None or loss < best[0] - 1e-12:
            best = (loss, dict(zip(names, ks, strict=True)))
    return best


def test_greedy_allocation_is_optimal_where_returns_diminish_and_always_within_budget():
    rng = torch.Generator().manual_seed(0)
    for trial in range(30):
        sizes = dict.fromkeys("abcd", 100)
        gain = {}
        for n in sizes:  # convex, decreasing loss increase over unit steps of k: greedy is exact here
            drops = sorted(torch.rand(3, generator=rng).tolist(), reverse=True)
            scale = 10 ** float(torch.rand(1, generator=rng) * 2)
            gain[n] = {2: scale * sum(drops), 3: scale * sum(drops[1:]), 4: scale * drops[2], 5: 0.0}
        budget = 2 + 3 * float(torch.rand(1, generator=rng))
        plan = greedy_allocation(gain, sizes, budget)
        loss, _ = _brute_force(gain, sizes, budget)
        assert sum(gain[n][plan[n]] for n in plan) == pytest.approx(loss, rel=1e-9, abs=1e-12), trial
    # uneven sizes and gaps: within budget, and no single further upgrade fits
    sizes = {"a": 4096, "b": 16384, "c": 1024}
    gain = {"a": {2: 1.0, 3: 0.4, 4: 0.1, 8: 0.0}, "b": {2: 0.2, 3: 0.1, 4: 0.05, 8: 0.0},
            "c": {2: 5.0, 3: 1.0, 4: 0.2, 8: 0.0}}
    plan = greedy_allocation(gain, sizes, 3.0)
    used = sum(plan[n] * sizes[n] for n in plan)
    assert used <= 3.0 * sum(sizes.values())
    assert plan["c"] == 8 and plan["b"] == 2  # the small sensitive layer gets the bits, the big tolerant one not
    for n, k in plan.items():
        assert all(used + (up - k) * sizes[n] > 3.0 * sum(sizes.values()) for up in gain[n] if up > k)


def test_allocation_measures_each_layer_alone_and_meets_the_budget(trained_tiny):
    base = copy.deepcopy(trained_tiny.model).eval()
    calib = trained_tiny.calib[:4]
    q = QuantConfig(bits=3.5, allocate={"candidates": [2, 4, 8], "sequences": 4}, gptq={"batch_size": 4})
    layers = {n: dict(base.named_modules())[n] for n in selected_shapes(base, q)}
    sens = sensitivities(base, layers, q, calib)
    name = "model.layers.0.mlp.down_proj"  # one entry recomputed independently: transformers' own loss
    with torch.no_grad():
        ref = base(input_ids=calib, labels=calib).loss.item()
        alone = copy.deepcopy(base)
        quantize_model(alone, QuantConfig(bits=2, include=[rf"^{name}$"], exclude=[]))
        want = alone(input_ids=calib, labels=calib).loss.item() - ref
    assert sens[name][2.0] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert max(abs(sens[n][8.0]) for n in sens) < max(abs(sens[n][2.0]) for n in sens)  # 8 bits: the smallest effects
    model = copy.deepcopy(base)
    s = quantize_model(model, q, trained_tiny.calib)
    assert set(s.plan.values()) <= {2.0, 4.0, 8.0} and len(set(s.plan.values())) > 1
    assert 3.0 < s.mean_bits <= 3.5
    assert s.sensitivity.keys() == sens.keys()  # the plan came from these measurements
    for n in sens:
        assert s.sensitivity[n] == pytest.approx(sens[n], rel=1e-6, abs=1e-9)


def test_per_layer_job_records_its_plan_and_key(trained_tiny, tiny_cfg):
    from ksir.identity import run_key
    from ksir.jobs import describe, execute

    ckpt = f"model.checkpoint={trained_tiny.checkpoint}"
    spec = tiny_cfg("job=quantize", ckpt, "quant.bits=2", "quant.layer_bits={first:8,o_proj:16}")
    rec = execute(spec)
    assert rec["layer_bits"] == "first=8,o_proj=16" and rec["bits"] == 2.0
    plan = rec["layer_plan"]
    assert set(plan.values()) == {8.0, 16.0}  # one block: "first" is every layer, o_proj kept
    assert describe(spec).endswith("layers first=8,o_proj=16")
    uniform = tiny_cfg("job=quantize", ckpt, "quant.bits=2")
    reordered = tiny_cfg("job=quantize", ckpt, "quant.bits=2", "quant.layer_bits={o_proj:16,first:8}")
    assert len({run_key(spec), run_key(uniform), run_key(reordered)}) == 3  # order decides which rule wins
    n = {x: o * i for x, (o, i) in selected_shapes(trained_tiny.model, spec.quant).items()}
    assert plan.keys() == n.keys()
    assert rec["mean_bits"] == pytest.approx(sum(plan[x] * n[x] for x in n) / sum(n.values()))
    o_proj = sum(v for x, v in n.items() if x.endswith("o_proj"))
    assert rec["n_quantized_params"] == sum(n.values()) - o_proj


@pytest.mark.parametrize("overrides, match", [
    (["quant.bits=4", "quant.layer_bits={gate:9}"], r"quant.layer_bits.gate=9: .*allowed: 2, 3, 4, 5, 6, 7, 8, 16"),
    (["quant.layer_bits={first:8}"], r"quant.layer_bits=.*set it below 16"),
    (["quant.bits=3.5"], r"quant.bits=3.5"),
    (["quant.bits=9", "quant.allocate.candidates=[2,8]"], r"quant.bits=9(.0)?: .*budget in \[2, 8\]"),
    (["quant.bits=3", "quant.allocate.candidates=[2,4]", "quant.lowrank.mode=correct"],
     r"quant.allocate.candidates=\[2, 4\]: per-layer bits combine with RTN or GPTQ only"),
    (["quant.bits=3", "quant.layer_bits={first:8}", "quant.backend=hqq"], r"no packed backend stores layers"),
    (["quant.bits=3", "quant.layer_bits={gate_prj:8}"], r"quant.layer_bits.gate_prj=8: .*matches none of"),
])
def test_bad_per_layer_settings_fail_in_one_line_before_compute(tiny_cfg, overrides, match):
    from ksir import preflight

    with pytest.raises(ConfigError, match=match) as err:
        preflight.check(tiny_cfg("job=quantize", "model.size=xs", *overrides))
    assert "\n" not in str(err.value)
