"""ksir-repro: the catalogue of studies, their smoke runs (the whole path, real CLIs), claim checks,
and the table of every claim (docs/studies.md) regenerated from the committed claims.json files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ksir import repro
from ksir.claims import VERDICTS, evaluate
from tests.helpers import run_cli


def test_list_names_every_study_with_its_hardware_and_time(tmp_path):
    r = run_cli("ksir-repro", "--list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in repro.names():
        s = repro.Study.load(name)
        line = next(x for x in r.stdout.splitlines() if x.startswith(name + " "))
        assert s.hardware in line and s.expected_time in line
    assert {"chinchilla_epoch", "demo"} <= set(repro.names())


@pytest.mark.parametrize("args,says", [
    (["demo", "--smoke", "--update"], "--update commits a full run's claims into experiments/<study>/; not with --smoke"),
    (["demo", "--with", "trainer=gpu", "--update"], "not with --with"),
    (["demo", "--with", "foo"], "--with 'foo': expected KEY=VALUE (e.g. --with trainer=gpu)"),
])
def test_misused_options_are_one_line_before_any_job(args, says, tmp_path, capsys):
    assert repro.main([*args, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"ksir-repro: error: {err.split('error: ', 1)[1].strip()}"] and says in err
    assert not (tmp_path / "o").exists()


def test_an_unknown_study_is_one_line(tmp_path):
    r = run_cli("ksir-repro", "nope", cwd=tmp_path)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1 and "no study 'nope'" in err[0] and "chinchilla_epoch" in err[0]


@pytest.fixture(scope="module")
def shared_checkpoints(tmp_path_factory):
    """Base models shared by the studies' smoke runs, as `--checkpoints` lets users share them."""
    return tmp_path_factory.mktemp("checkpoints")


def _check_smoke(name: str, out: Path, stdout: str, before: dict) -> dict:
    """What every smoke run must show: writes only under --out, and says what it can know: a claim measured
    from one seed has no interval, so it is inconclusive and says so."""
    study = repro.Study.load(name)
    data = json.loads((out / "claims.json").read_text())
    assert data["smoke"] is True and [c["id"] for c in data["claims"]] == [c["id"] for c in study.claims]
    assert all(c["verdict"] in VERDICTS and c["reason"] for c in data["claims"])
    seeds = data["seeds"] or 1
    for c in data["claims"]:
        if seeds == 1 and c["interval"] is None and c["verdict"] != "inconclusive":
            assert c["id"] in {k["id"] for k in study.claims if k["kind"] in ("bound", "param", "exponent")}, c
        if seeds == 1 and c["replicates"] == 1:
            assert c["verdict"] == "inconclusive" and "needs >= 2 seeds" in c["reason"], c
    prov = data["provenance"]
    assert prov["git"]["commit"] and prov["packages"]["torch"] and "loss" in prov["fit_settings"]
    assert (out / "fit.json").is_file() and "| claim | paper | ksir [interval] | verdict | why |" in \
        (out / "claims.md").read_text()
    assert f"outputs in {out}" in stdout
    assert {p: p.stat().st_mtime_ns for p in study.folder.iterdir()} == before, "a run wrote into the study folder"
    return data


def _mtimes(name: str) -> dict:
    return {p: p.stat().st_mtime_ns for p in repro.Study.load(name).folder.iterdir()}


@pytest.mark.parametrize("name", [n for n in repro.names() if n != "demo"])
def test_every_study_smoke_runs_end_to_end(name, tmp_path, shared_checkpoints, capsys):
    """Every study's --smoke path (sweeps through ksir-run's entry point, here in this process: the process
    boundary is the demo's test below), ksir-fit, claims."""
    out, before = tmp_path / "out", _mtimes(name)
    status = repro.main([name, "--smoke", "--in-process", "--out", str(out), "--checkpoints", str(shared_checkpoints)])
    stdout = capsys.readouterr().out
    assert status == 0, stdout[-3000:]
    _check_smoke(name, out, stdout, before)


def test_demo_smoke_through_the_real_commands_has_the_seed_level_intervals_of_its_runs(tmp_path, shared_checkpoints):
    """The demo's smoke (two seeds) as a user runs it: ksir-repro as a process, each sweep a ksir-run process,
    the base models shared with the other studies' smokes (`--checkpoints`: seed 0's are trained already).
    Its 8-bit claim's numbers recomputed by hand from the runs it committed to its output folder (paired by
    size and seed; the t interval over the two seeds, 90% for equivalence)."""
    from scipy import stats

    out, before = tmp_path / "out", _mtimes("demo")
    r = run_cli("ksir-repro", "demo", "--smoke", "--out", str(out), "--checkpoints", str(shared_checkpoints),
                cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = _check_smoke("demo", out, r.stdout, before)
    runs = pd.read_csv(out / "claims_runs.csv")
    assert sorted(runs["seed"].unique()) == [0, 1]
    claim = next(c for c in data["claims"] if c["id"] == "eight_bit")
    widest = None
    for _, g in runs.groupby("n_params"):
        a = g[g["bits"] == 8].set_index("seed")["val_loss"]
        b = g[(g["bits"] == 16) & (g["regime"] == "ptq")].set_index("seed")["val_loss"]
        rel = (a / b - 1).to_numpy()
        half = stats.t.ppf(0.95, len(rel) - 1) * rel.std(ddof=1) / np.sqrt(len(rel))
        ci = (rel.mean() - half, rel.mean() + half)
        if widest is None or max(map(abs, ci)) > max(map(abs, widest[1])):
            widest = (rel.mean(), ci)
    assert claim["ksir"] == pytest.approx(widest[0]) and claim["interval"] == pytest.approx(list(widest[1]))
    assert claim["level"] == 0.9 and claim["replicates"] == 2
    inside = widest[1][0] > -0.01 and widest[1][1] < 0.01
    assert claim["verdict"] == ("holds" if inside else claim["verdict"])
    k = next(c for c in data["claims"] if c["id"] == "k_star")
    assert k["share"] is not None and k["verdict"] == ("holds" if k["share"] >= 0.95 else "fails"
                                                       if k["share"] <= 0.05 else "inconclusive")
    # The claim's k is the most frequent best k of the budget table printed above it (the same measured budgets).
    lines = r.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| budget (bits) | best |"))
    best = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        cell = ln.split("|")[2].strip()
        if cell[:1].isdigit():
            best.append(float(cell.split()[0]))
    counts = {b: best.count(b) for b in best}
    assert best and k["ksir"] in {b for b, c in counts.items() if c == max(counts.values())}, (best, k)


def test_chinchilla_epoch_committed_claims_are_recomputed_to_1e6(tmp_path, capsys):
    """The committed claims of chinchilla_epoch, recomputed from the shipped table (no job runs): every number
    equal to 1e-6, every verdict the same; and they are what the paper's estimates say."""
    assert repro.main(["chinchilla_epoch", "--check", "--out", str(tmp_path / "chk")]) == 0
    assert "the committed claims are reproduced" in capsys.readouterr().out
    claims = {c["id"]: c for c in json.loads((repro.STUDIES / "chinchilla_epoch" / "claims.json").read_text())["claims"]}
    assert set(claims) == {"E", "A", "B", "alpha", "beta", "a"}  # one claim per independent quantity
    assert all(c["verdict"] == "holds" for c in claims.values())
    assert abs(claims["E"]["ksir"] - 1.817) < 0.0026 and abs(claims["alpha"]["ksir"] - 0.34781) < 0.00154
    fit = json.loads((tmp_path / "chk" / "fit.json").read_text())
    assert fit["n_runs"] == 240 and sum("excluded by the study" in s["reason"] for s in fit["left_out"]) == 5


def test_check_names_what_differs_from_the_committed_claims(tmp_path, monkeypatch, capsys):
    """A committed number that the runs no longer give is named, and --check exits 1."""
    import shutil

    folder = tmp_path / "chinchilla_epoch"
    shutil.copytree(repro.STUDIES / "chinchilla_epoch", folder)
    data = json.loads((folder / "claims.json").read_text())
    data["claims"][0]["ksir"] = 1.9
    (folder / "claims.json").write_text(json.dumps(data))
    monkeypatch.setattr(repro, "STUDIES", tmp_path)
    assert repro.main(["chinchilla_epoch", "--check", "--out", str(tmp_path / "chk")]) == 1
    assert "E.ksir: committed 1.9" in capsys.readouterr().out


# Paired runs of two seeds at two sizes (a = 3 bits, b = 4 bits, ref = 16 bits).
RUNS = pd.DataFrame([{"seed": s, "n_params": n, "bits": k, "total_bits": n * k, "val_loss": v + 0.01 * s}
                     for s in (0, 1, 2) for n, vals in ((1e5, {3: 3.30, 4: 3.10, 16: 3.00}), (2e5, {3: 3.00, 4: 2.80, 16: 2.79}))
                     for k, v in vals.items()])
MARGINS = {"small": {"value": 0.05, "source": "test"}, "pct4": {"value": 0.04, "source": "test"},
           "pct1": {"value": 0.01, "source": "test"}, "r": {"value": 0.1, "source": "test"},
           "half": {"value": 0.5, "source": "test"}, "tol": {"value": 0.1, "source": "test"}}


def _noisy(runs: pd.DataFrame, sd: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return runs.assign(val_loss=runs["val_loss"] + rng.normal(0, sd, len(runs)))


@pytest.mark.parametrize("claim,runs,verdict", [
    # superiority: a beats b (lower) / a worse than b (higher); every seed the same gap: a zero-width interval
    ({"kind": "gap", "a": {"bits": 4}, "b": {"bits": 3}}, RUNS, "holds"),
    ({"kind": "gap", "a": {"bits": 3}, "b": {"bits": 4}}, RUNS, "fails"),
    ({"kind": "gap", "a": {"bits": 3}, "b": {"bits": 4}, "direction": "higher"}, RUNS, "holds"),
    ({"kind": "gap", "a": {"bits": 3}, "b": {"bits": 4}, "direction": "higher", "margin": "small"}, RUNS, "holds"),
    # noise as large as the effect: the interval straddles 0
    ({"kind": "gap", "a": {"bits": 4}, "b": {"bits": 16}}, _noisy(RUNS, 0.2), "inconclusive"),
    # one seed: no interval
    ({"kind": "gap", "a": {"bits": 4}, "b": {"bits": 3}}, RUNS[RUNS["seed"] == 0], "inconclusive"),
    # equivalence (90% interval inside (-m, m))
    ({"kind": "gap", "test": "equivalence", "margin": "tol", "a": {"bits": 4}, "b": {"bits": 16}}, RUNS, "holds"),
    ({"kind": "gap", "test": "equivalence", "margin": "small", "a": {"bits": 3}, "b": {"bits": 16}}, RUNS, "fails"),
    ({"kind": "gap", "test": "equivalence", "margin": "tol", "a": {"bits": 4}, "b": {"bits": 16}},
     _noisy(RUNS, 0.2), "inconclusive"),
    ({"kind": "ratio", "a": {"bits": 4}, "b": {"bits": 16}, "margin": "pct4"}, RUNS, "holds"),
    ({"kind": "ratio", "a": {"bits": 4}, "b": {"bits": 16}, "margin": "pct1"}, RUNS, "fails"),
    ({"kind": "gap_closed", "a": {"bits": 4}, "base": {"bits": 3}, "ref": {"bits": 16}, "min": 0.5, "margin": "half"},
     RUNS, "holds"),
    ({"kind": "gap_closed", "a": {"bits": 4}, "base": {"bits": 16}, "ref": {"bits": 3}, "min": 0.5}, RUNS,
     "inconclusive"),  # base better than ref: no gap to close
    ({"kind": "bound", "where": {"bits": [3, 4]}, "column": "val_loss", "max": 3.35}, RUNS, "holds"),
    ({"kind": "bound", "where": {"bits": [3, 4]}, "column": "val_loss", "min": 2.9, "max": 3.35}, RUNS, "fails"),
    ({"kind": "bound", "where": {"bits": 8}, "column": "val_loss", "max": 1}, RUNS, "inconclusive"),
    ({"kind": "optimal_k", "paper": 4}, RUNS, "holds"),  # 4 bits wins every budget both curves reach, every seed
    ({"kind": "optimal_k", "paper": 3}, RUNS, "fails"),
    ({"kind": "gap_at_bits", "a": {"bits": 4}, "b": {"bits": 3}}, RUNS, "holds"),
    ({"kind": "param", "law": "chinchilla", "param": "e", "paper": 1.8, "margin": "tol"}, RUNS, "inconclusive"),
])
def test_claims_compute_their_verdict_from_intervals(claim, runs, verdict):
    v = evaluate({"id": "c", "text": "t", **claim}, {"laws": {}}, runs, MARGINS)
    assert v.verdict == verdict and v.reason, v


def test_a_superiority_interval_is_the_t_interval_of_the_seed_level_gaps():
    runs = _noisy(RUNS, 0.02, seed=3)
    v = evaluate({"id": "c", "text": "t", "kind": "gap", "a": {"bits": 4}, "b": {"bits": 3}}, {}, runs, MARGINS)
    from scipy import stats

    gaps = []
    for s in (0, 1, 2):
        r = runs[runs["seed"] == s].set_index(["n_params", "bits"])["val_loss"]
        gaps.append(np.mean([r[(n, 4)] - r[(n, 3)] for n in (1e5, 2e5)]))
    half = stats.t.ppf(0.975, 2) * np.std(gaps, ddof=1) / np.sqrt(3)
    assert v.ksir == pytest.approx(np.mean(gaps)) and v.interval == pytest.approx((np.mean(gaps) - half, np.mean(gaps) + half))
    assert v.level == 0.95 and v.replicates == 3


def _lr_runs(best: dict[str, float], seeds: int = 3, sd: float = 0.0) -> pd.DataFrame:
    """A learning-rate sweep at two sizes: parabolas in log2(lr) around each size's best rate."""
    import math

    rng = np.random.default_rng(0)
    lrs = [1e-3 * 2 ** i for i in range(6)]
    return pd.DataFrame([{"seed": s, "size": z, "lr": lr, "val_loss": 3.0 + 0.04 * (math.log2(lr / b)) ** 2
                          + rng.normal(0, sd)} for s in range(seeds) for z, b in best.items() for lr in lrs])


@pytest.mark.parametrize("best, direction, verdict, penalty", [
    ({"m": 4e-3, "xl": 4e-3}, "lower", "holds", 0.0),  # the optimum does not move
    ({"m": 4e-3, "xl": 1.6e-2}, "lower", "fails", 0.04),  # two octaves apart: the shared rate is one octave off
    ({"m": 4e-3, "xl": 1.6e-2}, "higher", "holds", 0.04),  # ... so "no rate transfers" holds
    ({"m": 1e-3, "xl": 1e-3}, "lower", "inconclusive", 0.0),  # at the edge of the swept rates: not bracketed
])
def test_lr_transfer_finds_the_best_shared_rate_and_its_penalty(best, direction, verdict, penalty):
    v = evaluate({"id": "c", "text": "t", "kind": "lr_transfer", "margin": "small" if penalty == 0 else "r",
                  "direction": direction}, {}, _lr_runs(best), {"small": {"value": 0.03, "source": "t"},
                                                                 "r": {"value": 0.03, "source": "t"}})
    assert v.verdict == verdict and v.ksir == pytest.approx(penalty, abs=1e-9)
    assert "best rate per size" in v.reason


def test_best_scheme_is_the_winner_of_most_measured_budgets_in_every_resample():
    runs = pd.concat([RUNS.assign(regime="ptq"),
                      RUNS[RUNS["bits"] < 16].assign(regime="qat", val_loss=lambda d: d["val_loss"] - 0.1)])
    v = evaluate({"id": "c", "text": "t", "kind": "best_scheme", "paper": "qat", "schemes": ["regime"]}, {}, runs)
    assert v.verdict == "holds" and v.ksir == "qat" and v.share == 1.0
    v = evaluate({"id": "c", "text": "t", "kind": "best_scheme", "paper": "ptq", "schemes": ["regime"]}, {}, runs)
    assert v.verdict == "fails" and v.share == 0.0


def test_a_claim_on_an_unidentified_law_is_inconclusive():
    report = {"laws": {"chinchilla": {"verdict": {"status": "unidentified", "reasons": ["B spans a factor 118"]},
                                      "params": {"b": {"value": 7.6, "reported_value": 2000.0}}}}}
    v = evaluate({"id": "B", "text": "t", "kind": "param", "law": "chinchilla", "param": "b", "paper": 2085,
                  "margin": "tol"}, report, RUNS, MARGINS)
    assert v.verdict == "inconclusive" and "unidentified" in v.reason


def test_a_claim_needs_its_margin_declared():
    from ksir.claims import check

    assert "not declared" in check({"id": "c", "text": "t", "kind": "gap", "a": {}, "b": {}, "margin": "x"}, {})
    assert "needs a declared margin" in check({"id": "c", "text": "t", "kind": "gap", "a": {}, "b": {},
                                               "test": "equivalence"}, {})


def test_the_claims_overview_is_generated_from_the_committed_claims():
    """docs/studies.md's table of every claim is exactly what `ksir-repro --table` writes from claims.json."""
    text = repro.CLAIMS_DOC.read_text()
    a, b = (text.index(m) for m in repro.MARKERS)
    assert text[a + len(repro.MARKERS[0]):b].strip() == repro.claims_overview().strip()


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
    with pytest.raises(repro.StudyError, match=r"claims\[0\] \(g\): unknown field\(s\) \['True', 'below'\] for kind gap"):
        repro.Study.load("bad")


def test_plan_rounds_join_the_grid_by_run_key_and_a_run_off_the_grid_is_one_line(tmp_path, monkeypatch):
    """The grid's runs get the round of the plan's loop that ran the same job; a planned run the grid lacks
    stops the study (its claim compares subsets of one grid), naming the run."""
    import types

    import analysis.collect

    grid = pd.DataFrame({"run_key": ["q-a", "q-b", "q-c"], "job": "quantize", "regime": "ptq"})
    planned = grid.iloc[:2].copy()
    monkeypatch.setattr(analysis.collect, "load_records", lambda paths: types.SimpleNamespace(runs=planned))
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "rounds.json").write_text(json.dumps({"q-a": 0, "q-b": 2, "t-x": 0}))
    got = repro.with_plan_rounds(grid, tmp_path)
    assert got["plan_round"].tolist()[:2] == [0, 2] and pd.isna(got["plan_round"].iloc[2])
    planned = pd.concat([planned, pd.DataFrame({"run_key": ["q-z"], "job": "quantize", "regime": "ptq"})])
    with pytest.raises(repro.StudyError, match="1 planned run.* not in the grid .e.g. q-z"):
        repro.with_plan_rounds(grid, tmp_path)
    (tmp_path / "plan" / "rounds.json").unlink()
    with pytest.raises(repro.StudyError, match="has not run"):
        repro.with_plan_rounds(grid, tmp_path)


def test_each_round_of_the_plan_reads_only_the_records_of_the_rounds_before_it(tmp_path, monkeypatch):
    """A relaunched loop replays itself: round r's ksir-plan gets the records that rounds 0..r-1 ran, never a later
    round's (before: it read the whole folder, so a relaunch planned round 1 from round 2's runs too)."""
    import analysis.plan_cli
    from ksir.records import SCHEMA_VERSION

    study = repro.Study.load("plan_own_family")
    results = tmp_path / "plan" / "results"
    results.mkdir(parents=True)
    for key in ("q-a", "q-b", "q-c"):
        (results / f"{key}.json").write_text(json.dumps({"schema": SCHEMA_VERSION, "run_key": key}))
    (tmp_path / "plan" / "rounds.json").write_text(json.dumps({"q-a": 0, "q-b": 1, "q-c": 2}))
    seen = {}

    def plan(argv):
        r = int(argv[argv.index("--name") + 1].rsplit("_r", 1)[1])
        seen[r] = sorted(Path(a).name for a in argv if a.endswith(".json"))
        preset = Path(argv[argv.index("--out") + 1]) / "conf" / "experiment" / f"plan_{study.name}_r{r}.yaml"
        preset.parent.mkdir(parents=True)
        preset.write_text("# @package _global_\n")
        return 0

    monkeypatch.setattr(repro, "sweep", lambda *a, **k: None)  # the jobs ran before: nothing new
    monkeypatch.setattr(analysis.plan_cli, "main", plan)
    repro.run_plan(study, tmp_path, smoke=False, in_process=True)
    assert seen == {1: ["q-a.json"], 2: ["q-a.json", "q-b.json"], 3: ["q-a.json", "q-b.json", "q-c.json"]}
    assert json.loads((tmp_path / "plan" / "rounds.json").read_text()) == {"q-a": 0, "q-b": 1, "q-c": 2}
