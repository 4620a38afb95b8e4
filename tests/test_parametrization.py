"""model.parametrization=sp|mup|umup: the rules each applies, and exports that are plain Hugging Face Llamas
computing the same function; the whole path through ksir-run."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaForCausalLM

from ksir.errors import ConfigError
from ksir.families import get_family, own_config
from ksir.parametrization import MUP_BASE_WIDTH, PARAMETRIZATIONS
from ksir.spec import JobSpec, TokenizerSpec
from tests.helpers import TINY, run_here

VOCAB = 259


def _model(name: str, size: str, seed: int = 0):
    torch.manual_seed(seed)
    return PARAMETRIZATIONS[name].build(own_config(get_family("llama"), size, vocab_size=VOCAB))


def _steps(model, name: str, lr: float, n: int = 3) -> None:
    opt = PARAMETRIZATIONS[name].optimizer(model, lr, 0.1, (0.9, 0.95))
    ids = torch.randint(0, VOCAB, (4, 32), generator=torch.Generator().manual_seed(1))
    for _ in range(n):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()


@pytest.mark.parametrize("name, lr", [("mup", 3e-3), ("umup", 1.0)])
@pytest.mark.parametrize("size", ["s", "l"])
def test_export_is_a_plain_llama_with_the_same_logits(name, lr, size, tmp_path):
    model = _model(name, size)
    _steps(model, name, lr)  # trained weights, not the init: every multiplier must be folded, not just cancel
    ids = torch.randint(0, VOCAB, (3, 32))
    with torch.no_grad():
        ref = model.eval()(input_ids=ids).logits
    hf = PARAMETRIZATIONS[name].export(model, 32)
    hf.save_pretrained(tmp_path)
    back = LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert type(back) is LlamaForCausalLM and set(back.state_dict()) == set(LlamaForCausalLM(back.config).state_dict())
    with torch.no_grad():
        got = back(input_ids=ids).logits
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()


def _recorder(out: list[float]):
    return lambda _m, _i, o: out.append(float(o.detach().pow(2).mean().sqrt()))


def test_umup_keeps_activations_near_unit_scale_at_every_width_where_sp_does_not():
    """u-muP's premise: unit-scale tensors at init whatever the width (what lets FP8 work without scales);
    sp's projections are far below 1 and drift with width (q_proj's output grows like sqrt(width))."""
    ids = torch.randint(0, VOCAB, (4, 64), generator=torch.Generator().manual_seed(0))
    q_rms: dict[str, list[float]] = {"sp": [], "umup": []}
    for size in ("m", "xl", "3xl"):  # hidden 64, 128, 256
        for name in ("sp", "umup"):
            model = _model(name, size)
            acts: dict[str, list[float]] = {"q_proj": [], "down_proj": []}
            hooks = [m.register_forward_hook(_recorder(acts[n.rsplit(".", 1)[-1]]))
                     for n, m in model.named_modules() if n.endswith(("q_proj", "down_proj"))]
            model(input_ids=ids)
            for h in hooks:
                h.remove()
            every = acts["q_proj"] + acts["down_proj"]
            if name == "umup":
                assert all(0.3 < a < 3 for a in every), (size, every)
            else:
                assert max(every) < 0.5 and max(acts["down_proj"]) < 0.05, (size, every)
            q_rms[name].append(sum(acts["q_proj"]) / len(acts["q_proj"]))
    assert q_rms["sp"][-1] / q_rms["sp"][0] > 1.7  # x4 width: about x2
    assert 0.8 < q_rms["umup"][-1] / q_rms["umup"][0] < 1.25


def test_mup_rules_hidden_lr_and_init_scale_with_width_readout_starts_at_zero():
    lr = 4e-3
    for size in ("m", "xl"):
        model = _model("mup", size)
        m = model.config.hidden_size / MUP_BASE_WIDTH
        opt = PARAMETRIZATIONS["mup"].optimizer(model, lr, 0.1, (0.9, 0.95))
        lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        named = dict(model.named_parameters())
        assert lr_of[id(named["model.layers.0.mlp.up_proj.weight"])] == pytest.approx(lr / m)
        assert lr_of[id(named["model.embed_tokens.weight"])] == lr and lr_of[id(named["lm_head.weight"])] == lr
        std = float(named["model.layers.0.self_attn.q_proj.weight"].std())
        assert std == pytest.approx(0.02 / math.sqrt(m), rel=0.05)
        assert float(named["lm_head.weight"].abs().max()) == 0.0
        assert model.get_output_embeddings().mult == pytest.approx(1 / m)


def test_umup_learning_rates_follow_fan_in_and_depth():
    model = _model("umup", "xl")  # hidden 128, 4 layers
    opt = PARAMETRIZATIONS["umup"].optimizer(model, 2.0, 0.1, (0.9, 0.95))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    layers = model.config.num_hidden_layers
    assert lr_of[id(named["model.layers.0.self_attn.q_proj.weight"])] == pytest.approx(2.0 / math.sqrt(128 * layers))
    ff = model.config.intermediate_size
    assert lr_of[id(named["model.layers.3.mlp.down_proj.weight"])] == pytest.approx(2.0 / math.sqrt(ff * layers))
    assert lr_of[id(named["lm_head.weight"])] == pytest.approx(2.0)  # readout: "output" type, no fan-in rule


def _spec(**over) -> JobSpec:
    cfg = {"job": "train", "model": {"family": "llama", "size": "xs"}, "data": {}, "trainer": {}, "eval": {},
           "logger": {}, "paths": {}, "quant": {}, "qat": {}}
    for key, value in over.items():
        sec, _, leaf = key.partition(".")
        cfg[sec] = {**cfg[sec], leaf: value}
    return JobSpec.from_config(cfg)


@pytest.mark.parametrize("over, key", [
    ({"model.parametrization": "ntk"}, "model.parametrization"),
    ({"trainer.matmul_precision": "fp16"}, "trainer.matmul_precision"),
    ({"trainer.matmul_scaling": "delayed"}, "trainer.matmul_scaling"),
    ({"model.parametrization": "umup", "qat.enabled": True, "qat.bits": 4}, "model.parametrization"),
    ({"trainer.matmul_precision": "fp8_e4m3", "qat.enabled": True, "qat.bits": 4}, "trainer.matmul_precision"),
])
def test_bad_values_are_refused_naming_the_key(over, key):
    with pytest.raises(ConfigError) as e:
        _spec(**over)
    assert str(e.value).startswith(f"invalid {key}=")


def test_identity_moves_only_for_what_changes_the_weights():
    from ksir.identity import model_key, run_key

    base = _spec()
    assert run_key(_spec(**{"model.parametrization": "sp", "trainer.matmul_precision": "fp32"})) == run_key(base)
    assert run_key(_spec(**{"trainer.matmul_scaling": "none"})) == run_key(base)  # no FP8: scaling is moot
    keys = {model_key(_spec(**o)) for o in (
        {}, {"model.parametrization": "mup"}, {"model.parametrization": "umup"}, {"trainer.matmul_precision": "bf16"},
        {"trainer.matmul_precision": "fp8_e4m3"}, {"trainer.matmul_precision": "fp8_e4m3", "trainer.matmul_scaling": "none"})}
    assert len(keys) == 6


def test_ksir_run_trains_under_each_setting_saves_llamas_and_ptq_reuses_the_base(tmp_path):
    """Train jobs under sp and u-muP with unscaled FP8 matmuls through the real CLI (a sweep whose job folders
    would exceed a file name's 255 bytes without ksir's cut); the saved u-muP checkpoint is a plain Llama whose
    evaluation reproduces the record, and a quantize job of it reuses it."""
    args = [*(a for a in TINY if not a.startswith("trainer.max_steps")), "trainer.max_steps=30", "logger=none",
            f"out_dir={tmp_path}", "trainer.lr=3e-3", "trainer.matmul_precision=fp8_e4m3", "trainer.matmul_scaling=none"]
    r = run_here("ksir-run", "-m", "job=train", "model.size=xs", "model.parametrization=sp,umup", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert all(len(p.name.encode()) <= 255 for p in (tmp_path / "multirun").iterdir())
    recs = [json.loads(p.read_text()) for p in (tmp_path / "results").glob("*.json")]
    assert {(x["parametrization"], x["matmul_precision"], x["matmul_scaling"]) for x in recs} == \
        {("sp", "fp8_e4m3", "none"), ("umup", "fp8_e4m3", "none")}
    assert all(x["lr"] == pytest.approx(3e-3) and x["regime"] == "fp" for x in recs)
    from ksir.data import build_tokenizer, load_documents, load_token_data
    from ksir.evaluate import evaluate_lm

    umup = next(x for x in recs if x["parametrization"] == "umup")
    model = LlamaForCausalLM.from_pretrained(umup["checkpoint"])
    cfg = _spec(**{"data.max_documents": 120, "data.seq_len": 64})
    docs = load_documents(cfg.data, cfg.paths.cache_dir)
    tok = build_tokenizer(TokenizerSpec("bytes", 257), docs["train"]["text"])
    data = load_token_data(docs, tok, 64, cfg.paths.cache_dir)
    val = evaluate_lm(model, data.eval_blocks(32), 16, torch.device("cpu"))["val_loss"]
    assert val == pytest.approx(umup["metrics"]["val_loss"], abs=1e-4)

    q = run_here("ksir-run", "job=quantize", "model.size=xs", "model.parametrization=umup", "quant.bits=4", *args,
                cwd=tmp_path)
    assert q.returncode == 0, q.stderr[-3000:]
    assert "[train]" not in q.stdout  # the u-muP base model was found, not retrained
    rec = json.loads(next((tmp_path / "results").glob("q-*.json")).read_text())
    assert (rec["parametrization"], rec["matmul_precision"]) == ("umup", "fp8_e4m3")
