"""Job kinds carry their behaviour: one registry entry (ksir.kinds) says how a kind is checked, identified,
described, depended on and run, so a new kind is one entry, and the job's config is one typed spec end to end."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from ksir import identity, kinds, records
from ksir.config import compose_spec as compose
from ksir.errors import ConfigError
from ksir.jobs import describe, execute
from ksir.paths import REPO_ROOT
from ksir.spec import JobSpec

# ---- a third kind, registered by a test: everything it needs is its entry ----------------------------------

CALLS: list[str] = []


def echo_identity(spec: JobSpec) -> dict:
    return {"job": "echo", "family": spec.model.family, "size": spec.model.size, "seed": spec.seed}


def echo_check(spec: JobSpec) -> None:
    if spec.seed < 0:
        raise ConfigError("seed", spec.seed, why="the echo job needs a seed >= 0")


def echo_nothing(spec: JobSpec) -> None:
    CALLS.append("preflight")


def echo_requires(spec: JobSpec) -> list[JobSpec]:
    return []


def echo_describe(spec: JobSpec) -> str:
    return f"{spec.model.family}-{spec.model.size} echo"


def echo_run(spec: JobSpec, run) -> dict:
    CALLS.append(f"run {run.key}")
    return {"metrics": {"val_loss": float(spec.seed) + 0.5}, "wall_time_s": 0.0}


ECHO = kinds.JobKind("echo", "e", identity=f"{__name__}:echo_identity", check=f"{__name__}:echo_check",
                     preflight=f"{__name__}:echo_nothing", requires=f"{__name__}:echo_requires",
                     describe=f"{__name__}:echo_describe", run=f"{__name__}:echo_run", trains_with_qat=False)


def test_a_new_kind_is_one_registry_entry(monkeypatch, tmp_path):
    monkeypatch.setitem(kinds.KINDS, "echo", ECHO)
    CALLS.clear()
    spec = compose([f"out_dir={tmp_path}", "job=echo", "seed=3", "logger=none"])
    assert spec.kind is ECHO and describe(spec) == "llama-xs echo"
    key = identity.run_key(spec)
    assert key.startswith("e-") and identity.identity(spec) == echo_identity(spec)
    rec = execute(spec)
    assert rec["status"] == "done" and rec["metrics"]["val_loss"] == 3.5 and rec["run_key"] == key
    assert ["preflight", f"run {key}"] == CALLS
    stored, _ = records.find_record(spec.paths.results_dir, key)
    assert stored["config"]["job"] == "echo" and stored["config"]["seed"] == 3
    assert execute(spec)["skipped"]  # found again by its key: not run twice
    assert ["preflight", f"run {key}"] == CALLS
    with pytest.raises(ConfigError, match="seed"):  # its own check, at construction
        compose([f"out_dir={tmp_path}", "job=echo", "seed=-1"])


def test_an_unknown_kind_is_one_line_naming_the_kinds(tmp_path):
    with pytest.raises(ConfigError, match=r"job='nope' \(allowed: train, quantize\)"):
        compose([f"out_dir={tmp_path}", "job=nope"])


def test_every_entry_names_functions_that_exist():
    for k in kinds.KINDS.values():
        for what in ("identity", "check", "preflight", "requires", "describe", "run"):
            module, fn = getattr(k, what).split(":")
            assert callable(getattr(__import__(module, fromlist=[fn]), fn)), f"{k.name}.{what}"


def test_no_branch_on_a_jobs_name_outside_the_registry():
    """`spec.job == ...` anywhere in ksir or the sweeper would put a kind's behaviour outside its entry."""
    found = []
    for root in ("ksir", "hydra_plugins"):
        for path in (REPO_ROOT / root).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Compare) and any(
                        isinstance(x, ast.Attribute) and x.attr == "job" for x in [node.left, *node.comparators]):
                    found.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert not found, f"branches on a job's name: {found}"


# ---- one typed spec end to end -------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    ["job=train"], ["job=train", "qat=ksir"], ["job=quantize", "quant.bits=3", "quant.method=gptq"],
    ["job=quantize", "eval=zeroshot", "quant.bits=4", "quant.blocksize=32"]])
def test_the_normalised_spec_is_what_records_keep_and_it_parses_back_to_the_same_job(overrides, tmp_path):
    spec = compose([f"out_dir={tmp_path}", *overrides])
    kept = records.new_record(spec, identity.run_key(spec), identity.identity(spec))["config"]
    assert kept == spec.as_dict() and "raw" not in kept
    again = JobSpec.from_config(kept)
    assert again == spec and identity.run_key(again) == identity.run_key(spec)
    assert isinstance(kept["trainer"]["lr"], float) and isinstance(kept["data"]["seq_len"], int)


def test_the_trainer_spec_goes_to_training_typed(tmp_path):
    """plan_steps reads the typed TrainerSpec: no re-coercion of strings, the budget in whole batches."""
    from ksir.train import plan_steps

    t = compose([f"out_dir={tmp_path}", "job=train", "trainer.batch_size=8", "trainer.tokens_per_param=2",
                 "trainer.min_steps=1", "trainer.max_steps=null"]).trainer
    steps, tokens = plan_steps(10_000, t, 64)
    assert steps == math.ceil(2 * 10_000 / (8 * 64)) and tokens == steps * 8 * 64


def test_the_modules_that_read_the_config_take_its_typed_parts():
    """load_documents, build_tokenizer, evaluate_zeroshot and train_model are annotated with the spec's parts."""
    want = {"ksir/data/corpus.py": ("load_documents", "DataSpec"), "ksir/data/tokenizer.py": ("build_tokenizer", "TokenizerSpec"),
            "ksir/zeroshot.py": ("evaluate_zeroshot", "ZeroShotSpec"), "ksir/train.py": ("train_model", "TrainerSpec")}
    for rel, (fn, ann) in want.items():
        tree = ast.parse(Path(REPO_ROOT / rel).read_text())
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == fn)
        assert any(isinstance(a.annotation, ast.Name) and a.annotation.id == ann for a in node.args.args), (rel, fn)
