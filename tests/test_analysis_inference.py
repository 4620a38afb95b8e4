"""The memory of inference as the budget (`ksir-fit --budget inference --context T --batch B`): weights plus the KV
cache of B sequences of T tokens, curves per (k_w, k_kv), and Kumar et al.'s N_eff fitted across cache precisions."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main as ksir_fit

EFF = {2: 0.16, 3: 0.43, 4: 0.70, 8: 1.0, 16: 1.0}  # weights: eff(k)/k peaks at k = 4
EFF_KV = {4: 0.97, 16: 1.0}  # a 4-bit cache costs a little quality


def table(path, seed=0):
    """PTQ-like runs over 7 sizes x k_w x k_kv; K and V values per token grow with width (N^(1/3))."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in np.geomspace(1e6, 3e8, 7):
        values = 2 * 12 * 64 * (n / 1e6) ** (1 / 3)
        for k, e in EFF.items():
            for kv, ekv in EFF_KV.items():
                loss = (1.9 + 300 * (n * e * ekv) ** -0.3 + 900 * (20 * n) ** -0.28) * np.exp(rng.normal(0, 0.002))
                rows.append({"n_params": n, "train_tokens": 20 * n, "bits": float(k), "kv_bits": float(kv),
                             "val_loss": loss, "total_bits": n * (16.0 if k == 16 else k + 0.25),
                             "kv_bits_per_token": values * (16.0 if kv == 16 else kv + 16 / 64)})
    df = pd.DataFrame(rows)
    df.to_csv(path, index=False)
    return df


def _fit(tmp_path, name, *args):
    out = tmp_path / name
    code = ksir_fit(["--table", str(tmp_path / "t.csv"), "--out", str(out), "--bootstrap", "40", "--no-figures",
                     *args])
    return code, out


def test_inference_budget_adds_the_kv_cache_and_answers_with_k_w_and_k_kv(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    src = table(tmp_path / "t.csv")
    labels, set_xlabel = [], Axes.set_xlabel
    monkeypatch.setattr(Axes, "set_xlabel", lambda ax, text, *a, **k: (labels.append(text), set_xlabel(ax, text, *a, **k))[1])
    out = tmp_path / "long"
    code = ksir_fit(["--table", str(tmp_path / "t.csv"), "--out", str(out), "--bootstrap", "40", "--budget", "inference",
                     "--context", "32768", "--batch", "2"])
    assert code == 0
    figures = json.loads((out / "fit.json").read_text())["figures"]
    assert any("scheme_frontiers" in f for f in figures)  # the (k_w, k_kv) frontiers at equal inference memory
    assert labels and all("inference memory: weights + KV cache" in t for t in labels)  # every memory axis says so
    runs = pd.read_csv(out / "runs.csv")
    want = src["total_bits"] + src["kv_bits_per_token"] * 32768 * 2
    got = runs.set_index(["n_params", "bits", "kv_bits"])["total_bits"]
    np.testing.assert_allclose(got.loc[list(src.set_index(["n_params", "bits", "kv_bits"]).index)].to_numpy(),
                               want.to_numpy(), rtol=1e-12)
    rep = json.loads((out / "fit.json").read_text())
    assert rep["curve_keys"] == ["bits", "kv_bits"] and "KV cache of 65536 tokens" in rep["description"]
    joins = {j["scheme"]: j for j in rep["baselines"]}
    assert joins["kv_bits=4"]["baselines"] == 0 and joins["kv_bits=16"]["baselines"] == 7  # no 16-bit cache anchor
    inside = [r for r in rep["optimal"] if not r["extrapolated"]]
    assert inside and all(r["best"].endswith(",4") for r in inside)  # a long context: the 4-bit cache wins
    # a one-token context: the cache weighs nothing, so its 3% quality loss decides for the 16-bit cache
    code, out = _fit(tmp_path, "short", "--budget", "inference", "--context", "1")
    short = json.loads((out / "fit.json").read_text())
    assert code == 0 and all(r["best"].endswith(",16") for r in short["optimal"] if not r["extrapolated"])
    # Kumar et al.'s N_eff sees both cache precisions in one fit (kv_bits is its input, not a curve of its own)
    multi = rep["laws"]["precision_multi"]
    assert multi["group"] == {} and multi["n_points"] == len(src)
    assert multi["params"]["log_gamma_w"]["reported_ci95"][0] > 1.0  # the weights' precision is identified


@pytest.mark.parametrize("args, needle", [
    (["--context", "4096"], "--context/--batch: only with --budget inference"),
    (["--budget", "inference"], "--budget inference needs --context N >= 1"),
    (["--budget", "inference", "--context", "64", "--batch", "0"], "--batch: sequences held at once"),
])
def test_inference_budget_input_is_one_line(tmp_path, capsys, args, needle):
    table(tmp_path / "t.csv")
    code, _ = _fit(tmp_path, "bad", *args)
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and "\n" not in err


def test_a_table_without_kv_bits_per_token_says_so(tmp_path, capsys):
    table(tmp_path / "t.csv").drop(columns="kv_bits_per_token").to_csv(tmp_path / "t.csv", index=False)
    code, _ = _fit(tmp_path, "none", "--budget", "inference", "--context", "64")
    assert code == 2 and "no run records kv_bits_per_token" in capsys.readouterr().err


def precision_table(path, interaction=0.0, seed=0):
    """Single-axis and mixed (k_w, k_act, k_kv) runs from Kumar et al.'s N_eff with known gammas; `interaction`
    adds a loss penalty to mixed runs only (effects that do not compose)."""
    rng = np.random.default_rng(seed)
    gamma = {"bits": 1.6, "act_bits": 1.2, "kv_bits": 0.9}
    configs = [(16, 16, 16), (2, 16, 16), (3, 16, 16), (4, 16, 16), (8, 16, 16), (16, 4, 16), (16, 8, 16),
               (16, 16, 2), (16, 16, 4), (4, 8, 16), (4, 4, 4), (8, 4, 2), (3, 8, 4)]
    rows = []
    for n in np.geomspace(1e6, 3e8, 6):
        for w, a, kv in configs:
            neff = n * np.prod([1 - np.exp(-p / gamma[c]) for c, p in zip(gamma, (w, a, kv), strict=True)])
            mixed = sum(p < 16 for p in (w, a, kv)) >= 2
            for seed_ in range(2):
                loss = (1.9 + 300 * neff**-0.3) * (1 + interaction * mixed) * np.exp(rng.normal(0, 0.003))
                rows.append({"n_params": n, "bits": float(w), "act_bits": float(a), "kv_bits": float(kv),
                             "seed": seed_, "val_loss": loss, "total_bits": n * (16 if w == 16 else w + 0.25)})
    pd.DataFrame(rows).to_csv(path, index=False)


@pytest.mark.parametrize("interaction", [0.0, 0.05])
def test_mixed_precisions_are_predicted_from_single_axis_runs(tmp_path, interaction):
    precision_table(tmp_path / "t.csv", interaction)
    code, out = _fit(tmp_path, "fit", "--law", "precision_multi")
    assert code == 0
    comp = json.loads((out / "fit.json").read_text())["composition"]
    assert comp["fitted_on"] == 6 * 9 * 2 and len(comp["predicted"]) == 6 * 4  # 9 single-axis, 4 mixed configs
    if interaction == 0:  # the law holds: the gammas come back and the mixed runs are predicted within 1%
        params = comp["fit"]["params"]
        for name, true in (("log_gamma_w", 1.6), ("log_gamma_act", 1.2), ("log_gamma_kv", 0.9)):
            assert params[name]["reported_value"] == pytest.approx(true, rel=0.1)
        assert comp["max_abs_rel_error"] < 0.01
    else:  # a 5% penalty on mixed runs only: the check sees it
        assert comp["mean_abs_rel_error"] > 0.03 and not any(r["inside"] for r in comp["predicted"])
    assert "## Do the precisions compose?" in (out / "report.md").read_text()


@pytest.mark.parametrize("interaction,verdict", [(0.0, "holds"), (0.05, "fails")])
def test_the_composition_claim_fits_each_seed_and_tests_its_error_against_the_margin(tmp_path, interaction, verdict):
    """The claim a study states (ksir.claims' composition kind): per seed, the law fitted on that seed's single-axis
    runs predicts its mixed runs; the per-seed errors recomputed here with the module the report uses."""
    from analysis.compose import mixed_holdout
    from analysis.settings import FitSettings
    from ksir.claims import evaluate

    precision_table(tmp_path / "t.csv", interaction)
    runs = pd.read_csv(tmp_path / "t.csv")
    # runs of another axis (a rotation) that would spoil the fit: the claim's `where` leaves them out
    other = runs[runs["act_bits"] < 16].assign(rotate="hadamard", val_loss=lambda d: d["val_loss"] * 1.2)
    claim = {"id": "c", "kind": "composition", "margin": "compose", "where": {"rotate": float("nan")}}
    v = evaluate(claim, {}, pd.concat([runs, other], ignore_index=True), {"compose": {"value": 0.01, "source": "test"}})
    per_seed = [mixed_holdout(runs[runs["seed"] == s], "val_loss", FitSettings(n_boot=0))["mean_abs_rel_error"]
                for s in (0, 1)]
    assert v.verdict == verdict and v.replicates == 2 and v.ksir == pytest.approx(np.mean(per_seed))
    assert v.interval[0] < v.ksir < v.interval[1]
    no_margin = evaluate({k: x for k, x in claim.items() if k != "margin"}, {}, runs, {})
    assert no_margin.verdict == "inconclusive" and "needs a declared margin" in no_margin.reason


def test_the_composition_claim_does_not_judge_a_law_its_seeds_cannot_identify(tmp_path):
    """Three sizes per seed (the law's size dependence needs four): the per-seed fits are unidentified, so the
    measured error is reported with its interval but the verdict is inconclusive and says why, even where the
    error is far above the margin (before: "fails" from fits that cannot be trusted)."""
    from ksir.claims import evaluate

    precision_table(tmp_path / "t.csv", 0.05)
    runs = pd.read_csv(tmp_path / "t.csv")
    runs = runs[runs["n_params"].isin(sorted(runs["n_params"].unique())[:3])]
    v = evaluate({"id": "c", "kind": "composition", "margin": "compose"}, {}, runs,
                 {"compose": {"value": 0.01, "source": "test"}})
    assert v.verdict == "inconclusive" and v.ksir > 0.03 and v.interval[0] > 0.01 and v.replicates == 2
    assert "unidentified" in v.reason and "3 distinct n_params values" in v.reason and "seed 0, 1" in v.reason


def test_mixed_runs_with_a_blank_precision_are_predicted(tmp_path):
    """A mixed run that leaves a precision blank (k-bit weights and activations, KV bits never set) is one of the
    configurations predicted, not dropped by the grouping (before: no row, and a crash on the empty errors)."""
    from analysis.compose import mixed_holdout

    precision_table(tmp_path / "t.csv")
    runs = pd.read_csv(tmp_path / "t.csv")
    runs["kv_bits"] = runs["kv_bits"].where(runs["kv_bits"] != 16)  # blank, as records without kv_bits read
    comp = mixed_holdout(runs)
    assert len(comp["predicted"]) == 6 * 4 and {r["kv_bits"] for r in comp["predicted"]} == {2.0, 4.0, 16.0}
