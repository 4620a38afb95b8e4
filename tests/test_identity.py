"""One job, one identity: normalised numbers, inapplicable fields left out, one 16-bit baseline per base
model, stable under added fields, and records written by the previous version still found."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from ksir import identity, records
from ksir.config import compose_config, compose_spec
from ksir.identity import canon, model_key, run_key
from ksir.legacy import v1_run_key
from ksir.qat.config import QATConfig
from ksir.quant.config import QuantConfig
from ksir.spec import DataSpec, EvalSpec, TrainerSpec

DATA = Path(__file__).parent / "data"


def key(*overrides: str, job: str = "quantize") -> str:
    return run_key(compose_spec([f"job={job}", *overrides], check_env=False))


def test_numbers_are_normalised():
    assert key("quant.bits=4") == key("quant.bits=4.0")
    assert key("quant.bits=4", "trainer.tokens_per_param=1") == key("quant.bits=4.0", "trainer.tokens_per_param=1.0")
    assert key(job="train") == key("trainer.lr=0.003", job="train") == key("trainer.lr=3e-3", job="train")
    assert key("quant.bits=4", "quant.dtype=float", "quant.exponent_bits=3") == key("quant.bits=4", "quant.dtype=float")


@pytest.mark.parametrize("change", [
    ["quant.gptq.damp=0.5"], ["quant.calib_sequences=7"], ["quant.gptq.act_order=true"],  # RTN: no GPTQ, no data
    ["quant.exponent_bits=2"], ["quant.subnormals=false"],  # int has no exponent
    ["quant.zero_point=int"], ["quant.codebook=[-1,1]"], ["quant.mse_grid=7"], ["quant.outlier.fraction=0.1"],
    ["seed=5"],  # RTN draws no calibration data; the base model's seed is in its own key (own family) ...
    ["eval.batch_size=3"], ["eval.device=cpu"], ["out_dir=/elsewhere"], ["logger=none"], ["launcher=joblib"],
    ["force=true"], ["model.cache_base=false"], ["trainer.checkpoint_every_n_steps=7"], ["trainer.compile=true"],
])
def test_settings_that_do_not_apply_leave_the_key(change):
    base = ["quant.bits=4", "model.checkpoint=/some/model"]  # ... so pin the base model to see the quantizer alone
    assert key(*base, *change) == key(*base), change


def test_blocksize_does_not_apply_to_channel_or_tensor_scales():
    for g in ("channel", "tensor"):
        assert key("quant.bits=4", f"quant.granularity={g}", "quant.blocksize=128") == \
            key("quant.bits=4", f"quant.granularity={g}")


@pytest.mark.parametrize("change", [
    ["quant.bits=3"], ["quant.blocksize=32"], ["quant.dtype=nf"], ["quant.method=gptq"], ["quant.scale_bits=8"],
    ["quant.granularity=channel"], ["quant.scale_search=mse"], ["quant.outlier.mode=proxy"], ["model.size=s"],
    ["data.seq_len=64"], ["eval.sequences=8"], ["trainer.tokens_per_param=2"], ["seed=1"], ["eval=zeroshot"],
])
def test_settings_that_apply_change_the_key(change):
    assert key("quant.bits=4", *change) != key("quant.bits=4"), change


def test_applicable_dtype_and_method_options_change_the_key():
    assert key("quant.bits=4", "quant=gptq", "quant.gptq.damp=0.5") != key("quant.bits=4", "quant=gptq")
    assert key("quant.bits=4", "quant=gptq", "seed=3") != key("quant.bits=4", "quant=gptq")  # calibration draw
    assert key("quant.bits=4", "quant.dtype=float", "quant.exponent_bits=2") != key("quant.bits=4", "quant.dtype=float")
    assert key("quant.bits=4", "quant.dtype=int_asym", "quant.zero_point=int") != key("quant.bits=4", "quant.dtype=int_asym")


def test_one_sixteen_bit_baseline_per_base_model():
    variants = [["quant.dtype=nf", "quant.blocksize=16"], ["quant=gptq"], ["quant.granularity=channel"],
                ["quant.dtype=float", "quant.scale_bits=8"], ["quant.outlier.mode=proxy"]]
    assert {key("quant.bits=16", *v) for v in variants} == {key("quant.bits=16")}
    assert key("quant.bits=16", "model.size=s") != key("quant.bits=16")


def test_paper_grid_computes_one_baseline_per_size():
    from hydra import compose, initialize_config_dir

    from ksir.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        params = compose("config", overrides=["experiment=paper_grid"], return_hydra_config=True).hydra.sweeper.params
    keys = {key("experiment=paper_grid", f"model.size={s}", f"quant.dtype={d}", f"quant.blocksize={b}", "quant.bits=16")
            for s in params["model.size"].split(",") for d in params["quant.dtype"].split(",")
            for b in params["quant.blocksize"].split(",")}
    assert len(keys) == len(params["model.size"].split(",")) == 5  # was 50 distinct 16-bit jobs


def test_train_identity_ignores_quantization_and_the_model_ignores_evaluation():
    assert key("quant.bits=4", job="train") == key("quant.bits=8", job="train")
    a, b = (compose_spec(["job=quantize", "quant.bits=4", f"eval.sequences={n}"], check_env=False) for n in (8, 16))
    base = identity.base_train_spec  # one base model for both:
    assert identity.checkpoint_dir(base(a)) == identity.checkpoint_dir(base(b))
    assert run_key(a) != run_key(b)
    assert key(job="train").startswith("t-") and key("quant.bits=4").startswith("q-")
    assert model_key(compose_spec(["qat=lsq"], check_env=False)) != model_key(compose_spec([], check_env=False))


@pytest.mark.parametrize("section,cls", [("quant", QuantConfig), ("qat", QATConfig), ("trainer", TrainerSpec),
                                         ("data", DataSpec), ("eval", EvalSpec)])
def test_adding_a_field_with_a_default_leaves_every_key(section, cls):
    """A later version adds `new_knob` (default = today's behaviour): no existing identity may move."""
    grown = dataclasses.make_dataclass(f"Grown{cls.__name__}", [("new_knob", int, dataclasses.field(default=0))],
                                       bases=(cls,), frozen=cls.__dataclass_params__.frozen)
    for job, extra in (("quantize", ["quant.bits=4", "quant=gptq"]), ("train", ["qat=lsq", "qat.bits=2"])):
        spec = compose_spec([f"job={job}", *extra], check_env=False)
        old = getattr(spec, section)
        new = grown(**{f.name: getattr(old, f.name) for f in dataclasses.fields(old)})
        assert run_key(spec.replace(**{section: new})) == run_key(spec), (section, job)
        if (section, job) not in (("quant", "train"), ("qat", "quantize")):  # a section the job reads
            assert run_key(spec.replace(**{section: dataclasses.replace(new, new_knob=1)})) != run_key(spec)


# The defaults that identities omit. Changing one silently changes what existing keys mean: add a field
# instead, with today's behaviour as its default.
FROZEN_DEFAULTS = {
    "QuantConfig": {"method": "rtn", "bits": 16, "dtype": "int", "blocksize": 64, "granularity": "block",
                    "exponent_bits": None, "subnormals": True, "codebook": None, "zero_point": "float",
                    "scale_bits": 16, "scale_search": "absmax", "mse_grid": 20, "mse_min_ratio": 0.5,
                    "include": ["(^|\\.)\\d+\\."], "exclude": ["(^|\\.)lm_head$", "embed"],
                    "outlier": {"mode": "none", "fraction": 0.02},
                    "gptq": {"damp": 0.01, "act_order": False, "block_columns": 128, "batch_size": 8},
                    "calib_sequences": 128, "backend": "simulated",
                    "measure": {"dtype": "bfloat16", "prompt_len": 128, "prefill_batch": 4, "decode_batches": [1, 8],
                                "decode_tokens": 32, "repeats": 5, "compare_simulated": True},
                    "lowrank": {"mode": "none", "rank": 0.125, "bits": 16, "whiten": "none"},
                    "heal": {"steps": 0, "lr": 0.001, "batch_size": 16, "temperature": 1.0},
                    "act": {"bits": 16, "dtype": "int", "exponent_bits": None, "granularity": "token",
                            "scales": "dynamic"},
                    "kv": {"bits": 16, "dtype": "int", "exponent_bits": None, "granularity": "head", "cache": "simulated",
                           "residual": 1, "sequences": 8},
                    "rotate": "none", "layer_bits": {}, "allocate": {"candidates": [], "sequences": 8},
                    "smooth": {"method": "none", "alpha": None, "grid": 20},
                    "attention": {"bits": 16, "learn": False, "steps": 50, "lr": 0.01, "batch_size": 16}},
    "TrainerSpec": {"tokens_per_param": 20, "param_count": "total", "batch_size": 32, "lr": 0.003,
                    "weight_decay": 0.1, "betas": [0.9, 0.95], "warmup_fraction": 0.05, "min_steps": 10,
                    "max_steps": None, "checkpoint_every_n_steps": 100, "compile": False, "matmul_precision": "fp32",
                    "matmul_scaling": "tensor", "lightning": {}},
    "DataSpec": {"source": "embedded", "seq_len": 128, "validation_fraction": 0.05,
                 "tokenizer": {"kind": "bytes", "vocab_size": 257}, "max_documents": None, "path": None, "name": None,
                 "text_column": "text", "files": None, "format": None},
    "EvalSpec": {"sequences": 256, "batch_size": 32, "device": "auto",
                 "zeroshot": {"enabled": False, "tasks": ["lambada_openai", "piqa", "hellaswag", "winogrande"],
                              "limit": None, "batch_size": 32, "data_dir": None, "num_fewshot": 0}},
}


@pytest.mark.parametrize("cls", [QuantConfig, TrainerSpec, DataSpec, EvalSpec])
def test_identity_defaults_are_frozen(cls):
    assert canon(cls()) == FROZEN_DEFAULTS[cls.__name__]


def test_the_frozen_v1_key_reproduces_the_previous_version():
    """Keys computed by the previous release's run_key for these configs (tests/data/v1_keys.json)."""
    for case in json.loads((DATA / "v1_keys.json").read_text()):
        from omegaconf import OmegaConf

        raw = OmegaConf.to_container(compose_config(case["overrides"]), resolve=True)
        assert v1_run_key(raw) == case["key"], case["overrides"]
        assert v1_run_key(raw, "train") == case["train_key"], case["overrides"]


def test_records_of_the_previous_version_are_found_and_nothing_reruns(tmp_path, monkeypatch):
    """A results folder written by the previous release (schema 1; bits given as 2, 4.0 and 16) answers the
    same jobs launched today (bits 2, 4 and 16 under another data type): nothing is recomputed."""
    results = tmp_path / "results"
    shutil.copytree(DATA / "v1_results", results)
    stored = {p.name: p.read_text() for p in results.glob("*.json")}
    from ksir import jobs

    def no_compute(spec):
        raise AssertionError(f"recomputed {jobs.describe(spec)}")

    monkeypatch.setattr(jobs, "_attempt", lambda spec, key: no_compute(spec))
    tiny = ["data.max_documents=120", "data.seq_len=64", "trainer.tokens_per_param=1", "trainer.batch_size=16",
            "trainer.min_steps=20", "trainer.max_steps=60", "eval.sequences=32", "logger=none",
            f"out_dir={tmp_path}", f"paths.results={results}"]
    found = {}
    for bits, dtype in (("2", "int"), ("4", "int"), ("16", "nf")):
        rec = jobs.execute(compose_spec(["job=quantize", "model.size=xs", f"quant.bits={bits}",
                                         f"quant.dtype={dtype}", *tiny]))
        assert rec["skipped"] and rec["schema"] == 2 and rec["legacy_run_keys"]
        found[bits] = rec["metrics"]["val_loss"]
    assert found == {"2": 3.1650133889818948, "4": 3.167667207263765, "16": 3.163696773468502}
    # The old files are kept, byte for byte, in .v1/; the folder now holds schema-2 records under today's keys.
    for name, text in stored.items():
        if name.startswith("q-"):
            assert (results / records.LEGACY_DIR / name).read_text() == text
    assert all(records.read_record(p)["schema"] == 2 for p in records.iter_record_files(results))


def test_migrate_merges_duplicates_of_one_job(tmp_path):
    """Two schema-1 records of one job (4 and 4.0) become one; analysis then counts the point once."""
    from analysis.collect import load_records

    results = tmp_path / "results"
    shutil.copytree(DATA / "v1_results", results)
    dup = json.loads((results / "q-419699e9923220f0.json").read_text())
    dup.update(run_key="q-0000000000000000", created="2020-01-01T00:00:00+00:00")
    dup["config"]["quant"]["bits"] = 4
    (results / "q-0000000000000000.json").write_text(json.dumps(dup))
    before = load_records([results])
    assert (before.runs["bits"] == 4).sum() == 1  # read-time upgrade already collapses them
    merged = records.migrate(results)
    assert sorted(len(v) for v in merged.values()) == [1, 1, 1, 2]
    after = load_records([results])
    assert len(after.runs) == 4 and (after.runs["bits"] == 4).sum() == 1
    assert sorted(p.name for p in (results / records.LEGACY_DIR).iterdir()) == sorted(
        [*(p.name for p in (DATA / "v1_results").glob("*.json")), "q-0000000000000000.json"])


def test_ksir_migrate_command(tmp_path):
    from .helpers import run_cli

    results = tmp_path / "results"
    shutil.copytree(DATA / "v1_results", results)
    r = run_cli("ksir-migrate", str(results), cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "4 schema-1 record(s) -> 4 schema-2 record(s)" in r.stdout
    assert all(records.read_record(p)["schema"] == 2 and json.loads(p.read_text())["schema"] == 2
               for p in records.iter_record_files(results))
