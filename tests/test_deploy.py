"""Real packed backends (bitsandbytes, torchao, HQQ) on CPU: the registry's one-line refusals, packed models that
score what ksir's simulated quantization scores, bytes that match a hand count, and a packed job end to end."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch

from ksir.errors import ConfigError
from ksir.quant.backends import BACKENDS, coverage_table, format_for
from ksir.quant.config import QuantConfig
from ksir.quant.validate import validate_quant_config

from .helpers import TINY, run_here

# (backend, quant overrides) for every format whose kernels run on a CPU
CPU_FORMATS = [
    ("bitsandbytes", dict(bits=4, dtype="nf")),
    ("bitsandbytes", dict(bits=4, dtype="nf", blocksize=32)),  # the library packs block 32 (it was refused)
    ("bitsandbytes", dict(bits=4, dtype="nf", scale_bits=8)),
    ("bitsandbytes", dict(bits=4, dtype="float", exponent_bits=2)),
    ("bitsandbytes", dict(bits=8, dtype="int", granularity="channel")),
    ("torchao", dict(bits=8, dtype="int", granularity="channel")),
    ("torchao", dict(bits=3, dtype="int_asym", zero_point="int")),
    ("torchao", dict(bits=8, dtype="float", exponent_bits=4, granularity="channel")),
    ("hqq", dict(bits=2, dtype="int_asym")),
    ("hqq", dict(bits=3, dtype="int_asym")),
    ("hqq", dict(bits=4, dtype="int_asym")),
]


@pytest.mark.parametrize(("overrides", "words"), [
    (dict(backend="bitsandbytes", bits=3, dtype="int"), "no packed kernel for int3 block 64 in bitsandbytes"),
    (dict(backend="bitsandbytes", bits=4, dtype="nf", blocksize=16), "nf4: block 16 (it has 32, 64, 128"),
    (dict(backend="bitsandbytes", bits=4, dtype="float"), "fp4: needs quant.exponent_bits=2"),
    (dict(backend="torchao", bits=3, dtype="int_asym"), "intx_weight_only: needs quant.zero_point=int"),
    (dict(backend="hqq", bits=5, dtype="int_asym"), "no packed kernel for int_asym5 block 64 in hqq"),
    (dict(backend="hqq", bits=4, dtype="int_asym", method="gptq"), "no packed kernel for method=gptq"),
    (dict(backend="tensorrt", bits=4), "allowed: simulated, bitsandbytes, torchao, hqq"),
    (dict(backend="tensorrt", bits=16), "allowed: simulated"),
])
def test_unsupported_configs_are_one_line_before_compute(overrides, words):
    with pytest.raises(ConfigError) as e:
        validate_quant_config(QuantConfig(**overrides))
    msg = str(e.value)
    assert words in msg and "\n" not in msg
    assert "quant.backend" in msg


def test_every_registered_format_is_reachable_and_the_16_bit_job_needs_no_kernel():
    examples = {(b, format_for(QuantConfig(backend=b, **o)).name) for b, o in CPU_FORMATS}
    examples |= {("torchao", format_for(QuantConfig(backend="torchao", bits=4, dtype="int_asym")).name),
                 ("hqq", format_for(QuantConfig(backend="hqq", bits=8, dtype="int_asym")).name)}
    assert examples == {(b.name, f.name) for b in BACKENDS.values() for f in b.formats}
    assert format_for(QuantConfig(backend="hqq", bits=16)) is None
    assert format_for(QuantConfig(bits=4)) is None  # simulated


def test_the_documented_backend_table_is_the_registry():
    from ksir.paths import REPO_ROOT

    assert coverage_table() in (REPO_ROOT / "docs" / "deploy.md").read_text(), "docs/deploy.md's backend table " \
        "is stale: paste ksir.quant.backends.coverage_table()"


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=260, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                      tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    blocks = torch.randint(0, 260, (8, 48), generator=torch.Generator().manual_seed(1))
    return model, blocks


@pytest.mark.parametrize(("backend", "overrides"), CPU_FORMATS, ids=lambda v: str(v))
def test_packed_model_scores_what_the_simulated_model_scores(tiny_llama, backend, overrides):
    """Same 16-bit weights, same grid: packed - simulated validation loss within 2e-3 nats (bf16 kernels;
    torchao's int8/float8 grids differ slightly from ksir's: -128..127 / absmax/127.5, e4m3fn)."""
    from ksir.deploy.job import quantize_packed
    from ksir.evaluate import evaluate_lm

    model, blocks = tiny_llama
    q = QuantConfig(backend=backend, **overrides, measure={"repeats": 1, "decode_tokens": 2, "prompt_len": 16, "decode_batches": [1]})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary, metrics, d = quantize_packed(model, q, format_for(q), lambda m, full: evaluate_lm(m, blocks, 8),
                                              blocks, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the base model was changed"
    assert abs(d["packed_minus_simulated"]) < 2e-3, d
    assert metrics["val_loss"] == pytest.approx(d["simulated_val_loss"], abs=2e-3)
    # the packed model is really smaller: its linear layers no longer hold 16-bit weights
    assert d["bytes"] < d["reference"]["bytes"]
    assert d["formula_bytes"] == summary.total_bits / 8
    # random weights: quantization costs loss, and the 16-bit reference is the unquantized model in bf16
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    assert d["reference"]["val_loss"] == pytest.approx(evaluate_lm(bf16, blocks, 8)["val_loss"])
    for fig in (d, d["reference"]):
        assert fig["prefill_tokens_per_s"] > 0 and fig["decode_ms_per_token"]["1"] > 0


def test_measured_bytes_equal_a_hand_count(tiny_llama):
    """NF4 block 64 with fp32 absmax (bitsandbytes) and HQQ 4-bit with 16-bit scale and zero: every byte counted."""
    from ksir.deploy.job import quantize_packed
    from ksir.deploy.measure import stored_bytes
    from ksir.evaluate import evaluate_lm

    model, blocks = tiny_llama
    linear = [m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "layers." in n]
    n_w = sum(m.weight.numel() for m in linear)
    rest = sum(p.numel() for p in model.parameters()) - n_w  # embeddings, head, norms stay bf16
    ev = lambda m, full: evaluate_lm(m, blocks, 8)  # noqa: E731
    for backend, over, per_weight in [
        # NF4: 4 bits/weight + one fp32 absmax per 64 + the 16-entry fp32 code table and a small state blob
        ("bitsandbytes", dict(bits=4, dtype="nf"), 0.5 + 4 / 64),
        ("hqq", dict(bits=4, dtype="int_asym"), 0.5 + 4 / 64),  # bf16 scale + bf16 zero per 64
    ]:
        q = QuantConfig(backend=backend, **over, measure={"repeats": 1, "decode_tokens": 1, "prompt_len": 8, "decode_batches": [1]})
        _, _, d = quantize_packed(model, q, format_for(q), ev, blocks, torch.device("cpu"))
        core = 2 * rest + per_weight * n_w
        # what is left is per-layer metadata (code tables, shapes, packing tags): small and bounded
        extra = d["bytes"] - core
        assert 0 <= extra <= 600 * len(linear), (backend, extra)
        assert d["reference"]["bytes"] == 2 * (rest + n_w) == stored_bytes(copy.deepcopy(model).to(torch.bfloat16))


def test_a_packed_quantize_job_end_to_end_and_fit_on_measured_bytes(tmp_path, cache_dir):
    """ksir-run (real Hydra, trains its base model first) -> a packed record -> ksir-fit --budget measured_bytes."""
    common = [*TINY, "trainer.max_steps=20", "eval.sequences=8", "quant.measure.repeats=1",
              "quant.measure.decode_tokens=4", f"out_dir={tmp_path}/out", f"paths.cache={cache_dir}"]
    # bits=16 under a packed backend is the scheme-free 16-bit baseline: nothing to pack, one job per base model
    r = run_here("ksir-run", "-m", "job=quantize", "model.size=xs,s", "quant.backend=hqq", "quant.dtype=int_asym",
                "quant.bits=2,4,16", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[hqq]" in r.stdout and "x formula" in r.stdout
    recs = [json.loads(p.read_text()) for p in (tmp_path / "out" / "results").glob("q-*.json")]
    packed = [x for x in recs if x.get("backend") == "hqq"]
    assert len(packed) == 4 and all(x["identity"]["quant"]["backend"] == "hqq" for x in packed)
    for x in packed:
        d = x["deploy"]
        assert x["measured_bytes"] == d["bytes"] > 0 and d["library"].startswith("hqq ")
        assert d["reference"]["bytes"] > d["bytes"] and abs(d["packed_minus_simulated"]) < 5e-3
        assert x["metrics"]["val_loss"] == pytest.approx(d["simulated_val_loss"], abs=5e-3)
    out = tmp_path / "fit"
    r = run_here("ksir-fit", str(tmp_path / "out" / "results"), "--out", str(out), "--budget", "measured_bytes",
                "--bootstrap", "0", "--no-figures", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((out / "fit.json").read_text())["memory"]
    assert {(r["bits"], r["packed_format"]) for r in rows} == {(2.0, "hqq"), (4.0, "hqq")}
    assert "## Memory: formula vs measured" in (out / "report.md").read_text()
    import pandas as pd

    runs = pd.read_csv(out / "runs.csv")
    q = runs[runs["bits"] < 16]
    assert (q["total_bits"] == 8 * q["measured_bytes"]).all() and (q["formula_total_bits"] < q["total_bits"]).all()
    base = runs[runs["bits"] == 16]  # the 16-bit baselines take the bf16 bytes measured beside packed runs
    assert len(base) == 2
    for _, b in base.iterrows():
        ref = q.loc[q["checkpoint"] == b["checkpoint"], "ref_bytes"]
        assert len(ref) == 2 and b["total_bits"] == 8 * ref.iloc[0]


def test_a_missing_library_is_one_line_naming_the_extra(monkeypatch):
    import importlib.util

    from ksir.quant.backends import check_installed

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "hqq" else real(name, *a))
    with pytest.raises(ConfigError, match=r"the hqq package is not installed \(pip install 'ksir\[deploy\]'\)"):
        check_installed(QuantConfig(backend="hqq", bits=4, dtype="int_asym"))
    check_installed(QuantConfig(backend="bitsandbytes", bits=4, dtype="nf"))  # installed: no error


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("backend", "overrides"), [
    ("torchao", dict(bits=4, dtype="int_asym")),  # tinygemm int4, CUDA only
    ("bitsandbytes", dict(bits=4, dtype="nf", scale_bits=8)),
    ("hqq", dict(bits=4, dtype="int_asym")),
])
def test_gpu_packed_model_scores_what_the_simulated_model_scores(backend, overrides):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ksir.deploy.job import quantize_packed
    from ksir.evaluate import evaluate_lm

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=512, intermediate_size=1536, num_hidden_layers=4,
                      num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    blocks = torch.randint(0, 512, (16, 128))
    dev = torch.device("cuda")
    q = QuantConfig(backend=backend, **overrides, measure={"repeats": 3})
    _, metrics, d = quantize_packed(model, q, format_for(q), lambda m, full: evaluate_lm(m, blocks, 8, dev), blocks, dev)
    assert abs(d["packed_minus_simulated"]) < 5e-3, d
    assert d["bytes"] < 0.4 * d["reference"]["bytes"]
    assert d["peak_method"].startswith("cuda")


def test_a_packed_backend_on_the_16_bit_job_says_nothing_is_packed(tiny_cfg, trained_tiny, capsys):
    """The 16-bit job is the unquantized baseline whatever backend a sweep names: it says so, in one line."""
    from ksir.jobs import execute

    rec = execute(tiny_cfg("job=quantize", "model.size=xs", "quant.bits=16", "quant.backend=hqq", "logger=none",
                           "quant.dtype=int_asym", "force=true"))  # the shared baseline may be done already
    out = capsys.readouterr().out
    assert "16-bit baseline: nothing to pack (quant.backend=hqq packs k < 16)" in out
    assert rec["bits"] == 16 and rec.get("backend") is None  # recorded as the simulated baseline it is
