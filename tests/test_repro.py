"""ksir-repro: the catalogue of studies, their smoke runs (the whole path, real CLIs), claim checks,
and the README table regenerated from the committed claims.json files."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ksir import repro
from ksir.claims import NOT_MEASURABLE, evaluate
from tests.helpers import run_cli


def test_list_names_every_study_with_its_hardware_and_time(tmp_path):
    r = run_cli("ksir-repro", "--list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in repro.names():
        s = repro.Study.load(name)
        line = next(x for x in r.stdout.splitlines() if x.startswith(name + " "))
        assert s.hardware in line and s.expected_time in line
    assert {"chinchilla_epoch", "demo"} <= set(repro.names())


def test_an_unknown_study_is_one_line(tmp_path):
    r = run_cli("ksir-repro", "nope", cwd=tmp_path)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "no study 'nope'" in err[0] and "chinchilla_epoch" in err[0]


@pytest.fixture(scope="module")
def shared_checkpoints(tmp_path_factory):
    """Base models shared by the studies' smoke runs, as `--checkpoints` lets users share them."""
    return tmp_path_factory.mktemp("checkpoints")


@pytest.mark.parametrize("name", repro.names())
def test_every_study_smoke_runs_end_to_end(name, tmp_path, shared_checkpoints):
    """Every study's --smoke path: sweep (if any) through ksir-run, ksir-fit, claims, in under a minute."""
    out = tmp_path / "out"
    r = run_cli("ksir-repro", name, "--smoke", "--out", str(out), "--checkpoints", str(shared_checkpoints),
                cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((out / "claims.json").read_text())
    study = repro.Study.load(name)
    assert data["smoke"] is True and [c["id"] for c in data["claims"]] == [c["id"] for c in study.claims]
    assert all(c["holds"] in ("yes", "no", NOT_MEASURABLE) and c["reason"] for c in data["claims"])
    assert (out / "fit.json").is_file() and "| claim | paper | ksir | holds |" in (out / "claims.md").read_text()
    # A smoke run never overwrites the study's committed results.
    committed = study.folder / "claims.json"
    assert not committed.exists() or json.loads(committed.read_text())["smoke"] is False


def test_chinchilla_epoch_reproduces_epochs_estimates_within_their_standard_errors(tmp_path):
    out = tmp_path / "out"
    r = run_cli("ksir-repro", "chinchilla_epoch", "--smoke", "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    claims = {c["id"]: c for c in json.loads((out / "claims.json").read_text())["claims"]}
    assert {k: c["holds"] for k, c in claims.items()} == {k: "yes" for k in ("E", "A", "B", "alpha", "beta", "a", "b")}
    assert abs(claims["E"]["ksir"] - 1.817) < 0.01 and abs(claims["alpha"]["ksir"] - 0.3478) < 0.005
    fit = json.loads((out / "fit.json").read_text())
    assert fit["n_runs"] == 240 and sum("excluded by the study" in s["reason"] for s in fit["left_out"]) == 5


RUNS = pd.DataFrame({"n_params": [1e5, 1e5, 1e5, 2e5, 2e5, 2e5], "bits": [3, 4, 16, 3, 4, 16],
                     "val_loss": [3.3, 3.1, 3.0, 3.0, 2.8, 2.79]})


@pytest.mark.parametrize("claim,holds,value", [
    ({"kind": "gap", "a": {"bits": 3}, "b": {"bits": 4}, "above": 0.1}, "yes", 0.2),
    ({"kind": "gap", "a": {"bits": 3}, "b": {"bits": 4}, "above": 0.3}, "no", 0.2),
    ({"kind": "ratio", "a": {"bits": 4}, "b": {"bits": 16}, "max": 0.04}, "yes", 0.1 / 3.0),
    ({"kind": "ratio", "a": {"bits": 4}, "b": {"bits": 16}, "max": 0.01}, "no", 0.1 / 3.0),
    ({"kind": "ratio", "a": {"bits": 8}, "b": {"bits": 16}, "max": 0.01}, NOT_MEASURABLE, None),
    ({"kind": "param", "law": "chinchilla", "param": "e", "paper": 1.8, "tol": 0.1}, NOT_MEASURABLE, None),
    ({"kind": "gap_closed", "a": {"bits": 4}, "base": {"bits": 3}, "ref": {"bits": 16}, "min": 0.5}, "yes",
     0.2 / 0.255),  # mean(base - a) / mean(base - ref) over the two sizes
    ({"kind": "gap_closed", "a": {"bits": 4}, "base": {"bits": 16}, "ref": {"bits": 3}, "min": 0.5}, NOT_MEASURABLE,
     None),  # base better than ref: no gap to close
    ({"kind": "correlation", "x": "val_loss", "y": "bits", "paper": -0.5, "tol": 0.1}, "yes",
     RUNS["val_loss"].corr(RUNS["bits"])),
    ({"kind": "bound", "where": {"bits": [3, 4]}, "column": "val_loss", "max": 3.35}, "yes", 3.3),
    ({"kind": "bound", "where": {"bits": [3, 4]}, "column": "val_loss", "min": 2.9, "max": 3.25}, "no", 2.8),
    ({"kind": "bound", "where": {"bits": [3, 4]}, "column": "val_loss", "min": 2.9, "at": "largest", "per": ["bits"]},
     "no", 2.8),  # only the 2e5 models: 3.0 and 2.8, the latter below 2.9
    ({"kind": "bound", "where": {"bits": 8}, "column": "val_loss", "max": 1}, NOT_MEASURABLE, None),
    ({"kind": "optimal_k", "budget": "measured_bytes", "paper": 4, "tol": 1}, NOT_MEASURABLE, None),
])
def test_claims_compute_their_number_and_say_when_it_cannot_be_measured(claim, holds, value):
    v = evaluate({"id": "c", "text": "t", **claim}, {"laws": {}}, RUNS)
    assert v.holds == holds and v.reason
    assert (v.ksir is None) if value is None else v.ksir == pytest.approx(value)


def _lr_runs(best: dict[str, float]) -> pd.DataFrame:
    """A learning-rate sweep at two sizes: parabolas in log2(lr) around each size's best rate."""
    import math

    lrs = [1e-3 * 2 ** i for i in range(6)]
    return pd.DataFrame([{"size": s, "lr": lr, "val_loss": 3.0 + 0.04 * (math.log2(lr / b)) ** 2}
                         for s, b in best.items() for lr in lrs])


@pytest.mark.parametrize("best, holds, penalty", [
    ({"m": 4e-3, "xl": 4e-3}, "yes", 0.0),  # the optimum does not move
    ({"m": 4e-3, "xl": 1.6e-2}, "no", 0.04),  # two octaves apart: the best shared rate is one octave off for both
    ({"m": 1e-3, "xl": 1e-3}, NOT_MEASURABLE, 0.0),  # at the edge of the swept rates: not bracketed
])
def test_lr_transfer_finds_the_best_shared_rate_and_its_penalty(best, holds, penalty):
    v = evaluate({"id": "c", "text": "t", "kind": "lr_transfer", "max": 0.03}, {}, _lr_runs(best))
    assert v.holds == holds and v.ksir == pytest.approx(penalty, abs=1e-9)
    assert "best rate per size" in v.reason


def test_best_scheme_counts_the_winners_of_the_measured_budgets():
    rows = [{"budget_bits": b, "extrapolated": False, "measured_best_scheme": w, "best_scheme": "x"}
            for b, w in [(1, "qat-finetune"), (2, "qat-finetune"), (3, "ptq rtn"), (4, "ptq rtn"), (5, "ptq rtn")]]
    report = {"scheme_frontiers": rows, "headline": {"candidates": [{"law": "power_bits", "status": "unidentified"}]}}
    low = evaluate({"id": "c", "text": "t", "kind": "best_scheme", "budgets": "low", "paper": "qat"}, report, RUNS)
    assert (low.ksir, low.holds) == ("qat-finetune", "yes")
    every = evaluate({"id": "c", "text": "t", "kind": "best_scheme", "paper": "qat"}, report, RUNS)
    assert (every.ksir, every.holds) == ("ptq rtn", "no") and "3 of 5" in every.reason
    laws = evaluate({"id": "c", "text": "t", "kind": "best_scheme", "by": "laws", "paper": "qat"}, report, RUNS)
    assert laws.holds == NOT_MEASURABLE and "unidentified" in laws.reason


def test_a_claim_on_an_unidentified_law_is_not_measurable():
    report = {"laws": {"chinchilla": {"verdict": {"status": "unidentified", "reasons": ["B spans a factor 118"]},
                                      "params": {"b": {"value": 7.6, "reported_value": 2000.0}}}}}
    v = evaluate({"id": "B", "text": "t", "kind": "param", "law": "chinchilla", "param": "b", "paper": 2085,
                  "tol": 1293}, report, RUNS)
    assert v.holds == NOT_MEASURABLE and "unidentified" in v.reason


def test_readme_table_is_generated_from_the_committed_claims():
    """The README's table of studies is exactly what `ksir-repro --readme` writes from claims.json."""
    text = repro.README.read_text()
    a, b = (text.index(m) for m in repro.MARKERS)
    assert text[a + len(repro.MARKERS[0]):b].strip() == repro.readme_table().strip()


def test_a_local_mirror_of_a_family_gives_each_size_its_own_folder_and_identity(tmp_path):
    """model.checkpoint may name a folder of per-size folders (how the kbit_pythia smoke points one sweep
    at its local copies); each size resolves to its own model folder and its own run identity."""
    from ksir.identity import run_key
    from ksir.spec import ModelSpec

    for size in ("70m", "160m"):
        (tmp_path / "pythia" / size).mkdir(parents=True)
        (tmp_path / "pythia" / size / "config.json").write_text("{}")
    a = ModelSpec(family="pythia", size="70m", checkpoint=str(tmp_path / "pythia"))
    b = ModelSpec(family="pythia", size="160m", checkpoint=str(tmp_path / "pythia"))
    assert a.local_folder == tmp_path / "pythia" / "70m" and b.local_folder == tmp_path / "pythia" / "160m"
    single = ModelSpec(family="pythia", size="70m", checkpoint=str(tmp_path / "pythia" / "160m"))
    assert single.local_folder == tmp_path / "pythia" / "160m"  # a model folder is used as it is

    from ksir.config import compose_spec

    keys = {run_key(compose_spec(["job=quantize", "model=pythia", f"model.size={s}", "quant.bits=4",
                                  f"model.checkpoint={tmp_path / 'pythia'}"], check_env=False)) for s in ("70m", "160m")}
    assert len(keys) == 2


def test_a_misspelt_claim_field_is_refused_when_the_study_loads(tmp_path, monkeypatch):
    """YAML reads a bare `on:` key as True: a claim that says `on: [n_params, bits]` would be checked with the
    default pairing without a word. Unknown fields are refused, naming the allowed ones."""
    study = tmp_path / "bad"
    study.mkdir()
    (study / "study.yaml").write_text(
        "title: t\nsource: s\nhardware: cpu\nexpected_time: 1 s\n"
        "claims:\n  - {id: g, text: t, kind: gap, a: {bits: 3}, b: {bits: 4}, on: [n_params, bits], below: 0}\n")
    monkeypatch.setattr(repro, "STUDIES", tmp_path)
    with pytest.raises(repro.StudyError, match=r"claims\[0\] \(g\): unknown field\(s\) \['True'\] for kind gap"):
        repro.Study.load("bad")
