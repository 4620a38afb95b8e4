"""ksir-fit on other people's tables: laws chosen from the columns, an answer that says where it
comes from, parameters at bounds and unidentified laws kept out of it, accuracy from loss."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from analysis import fit_law
from analysis.cli import main as ksir_fit
from tests.helpers import run_here

EFF = {2: 0.16, 3: 0.43, 4: 0.70, 8: 1.0, 16: 1.0}  # QuEST-like: eff(k)/k peaks at k = 4


def chinchilla_table(path, n=120, seed=0, extra=None, flops=False):
    rng = np.random.default_rng(seed)
    N = np.exp(rng.uniform(np.log(4e7), np.log(1.6e10), n))
    D = np.exp(rng.uniform(np.log(5e9), np.log(5e11), n))
    L = (1.82 + 482.01 / N**0.3478 + 2085.43 / D**0.3658) * np.exp(rng.normal(0, 0.005, n))
    df = pd.DataFrame({"Model Size": N, "Tokens": D, "loss": L, **(extra or {})})
    if flops:  # as Chinchilla's released points come: compute, not tokens (D = C / 6N)
        df = df.assign(**{"Training FLOP": 6 * N * D}).drop(columns="Tokens")
    df.to_csv(path, index=False)
    return df


def qat_table(path, seed=0, sizes=None, noise=0.003, acc=False, mid=3.0):
    """QAT runs whose tokens grow with model size (D = 20 N): L = E + A (N eff(k))^-a + B D^-b."""
    sizes = np.geomspace(1e6, 3e8, 7) if sizes is None else sizes
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        for k, e in EFF.items():
            d = 20 * n
            loss = (1.9 + 300 * (n * e) ** -0.3 + 900 * d**-0.28) * np.exp(rng.normal(0, noise))
            row = {"params": n, "tokens": d, "k": float(k), "loss": loss, "bpp": 16.0 if k == 16 else k + 0.25}
            if acc:
                row["acc"] = 0.25 + 0.5 / (1 + np.exp(4.0 * (loss - mid))) + rng.normal(0, 0.003)
            rows.append(row)
    df = pd.DataFrame(rows)
    df["total"] = df["params"] * df["bpp"]
    df.drop(columns="bpp").to_csv(path, index=False)
    return df


QAT_MAP = "params=n_params,tokens=train_tokens,k=bits,loss=val_loss,total=total_bits"


def test_a_chinchilla_table_gets_the_chinchilla_law_and_a_compute_optimal_answer(tmp_path, capsys):
    path = tmp_path / "chin.csv"
    chinchilla_table(path, extra={"bits": 16}, flops=True)  # a constant dummy bits column changes nothing
    out = tmp_path / "fit"
    assert ksir_fit(["--table", str(path), "--map", "Model Size=n_params,Training FLOP=train_flops,loss=val_loss",
                     "--out", str(out), "--bootstrap", "100", "--no-figures"]) == 0
    printed = capsys.readouterr().out
    rep = json.loads((out / "fit.json").read_text())
    assert rep["laws_fitted"] == ["chinchilla"] and rep["question"] == "compute"
    p = {n: v.get("reported_value", v["value"]) for n, v in rep["laws"]["chinchilla"]["params"].items()}
    assert abs(p["e"] - 1.82) < 0.05 and abs(p["alpha"] - 0.3478) < 0.03 and abs(p["beta"] - 0.3658) < 0.03
    h = rep["headline"]
    assert h["trusted"] == "chinchilla"
    a, b = h["exponents"]["a"], h["exponents"]["b"]
    assert a == pytest.approx(p["beta"] / (p["alpha"] + p["beta"])) and a + b == pytest.approx(1.0)
    lo, hi = h["exponents"]["a_ci95"]
    assert lo < 0.3658 / (0.3478 + 0.3658) < hi
    r = h["rows"][3]  # N_opt * D_opt = C / 6 and the predicted loss is the law's
    assert r["n_opt"] * r["d_opt"] == pytest.approx(r["flops"] / 6, rel=1e-9)
    assert "compute-optimal parameters N and tokens D" in printed and "trusted" in printed
    assert not rep["laws"].get("power_bits") and "optimal k" not in printed.lower()


def test_a_law_the_table_cannot_support_is_a_one_line_error_before_fitting(tmp_path):
    path = tmp_path / "chin.csv"
    chinchilla_table(path, n=20)
    r = run_here("ksir-fit", "--table", str(path), "--map", "Model Size=n_params,Tokens=train_tokens,loss=val_loss",
                "--law", "precision", "--out", str(tmp_path / "o"), cwd=tmp_path)
    err = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(err) == 1, r.stderr
    assert err[0].startswith("ksir-fit: error: law precision needs column(s) bits") and "Model Size" not in err[0]
    assert not (tmp_path / "o").exists()  # nothing written before the check


def test_the_headline_comes_from_the_law_that_predicts_held_out_runs_best_and_marks_disagreement(tmp_path, capsys):
    path = tmp_path / "qat.csv"
    qat_table(path)
    out = tmp_path / "fit"
    assert ksir_fit(["--table", str(path), "--map", QAT_MAP, "--out", str(out), "--bootstrap", "60",
                     "--no-figures"]) == 0
    rep = json.loads((out / "fit.json").read_text())
    h = rep["headline"]
    # Tokens follow D = 20 N: no independent information for a data term, so no *_data law is fitted.
    assert rep["laws_fitted"] == ["power_bits", "precision", "efficiency"]
    cands = {c["law"]: c for c in h["candidates"]}
    assert cands[h["trusted"]]["trusted"] and sum(c["trusted"] for c in cands.values()) == 1
    # Checked against the generating law, not against the rule that chose: the trusted law's answer must be
    # the true one at every budget (below), whichever candidate the held-out ranking picked.
    # The generating law's own answer at each budget (tokens follow D = 20 N, so the data term favours the
    # larger N of a lower k: k = 3 wins, not the k = 4 of eff(k)/k alone); the trusted answer is it.
    def true_best(b):
        bpp = {k: 16.0 if k == 16 else k + 0.25 for k in EFF}
        loss = {k: 300 * (b / bpp[k] * e) ** -0.3 + 900 * (20 * b / bpp[k]) ** -0.28 for k, e in EFF.items()}
        return float(min(loss, key=loss.get))

    assert [r["best_k"] for r in h["rows"]] == [true_best(r["budget_bits"]) for r in h["rows"]]
    assert any(r["disagree"] for r in h["rows"])  # the precision laws (poor held-out) answer otherwise
    for r in h["rows"]:  # "disagree" lists exactly the other answers that differ
        others = {n: a.get("best") for n, a in r["answers"].items() if n != r["source"]}
        if r["interpolated"]:
            others["interpolated data"] = r["interpolated"]
        assert r["disagree"] == sorted(n for n, v in others.items() if v is not None and v != r["best"])
    printed = capsys.readouterr().out
    assert f"from {h['trusted']}: lowest held-out error" in printed


def test_parameters_at_a_bound_are_said_and_unidentified_laws_stay_out_of_the_answer(tmp_path):
    rng = np.random.default_rng(1)
    B = np.geomspace(1e6, 1e9, 8)
    pure = pd.DataFrame({"total_bits": B, "n_params": B / 4, "bits": 4.0,
                         "val_loss": 300 * B**-0.3 * np.exp(rng.normal(0, 0.002, B.size))})  # E = 0
    fit = fit_law(pure, "power_bits", n_boot=50)
    assert "e" in fit.at_bound() and fit.summary()["params"]["e"]["at_bound"]
    assert any("at its bound" in w for w in fit.warnings)
    assert fit.verdict()["status"] == "ok"  # E fixed at 0; A and alpha are still identified
    few = pure.iloc[[0, 3, 7]]  # three sizes for a law with three size parameters
    with pytest.raises(Exception, match="too few"):
        fit_law(few, "power_bits", n_boot=0)
    three = pd.DataFrame([{"n_params": n, "bits": float(k), "total_bits": n * k,
                           "val_loss": (1.9 + 300 * (n * EFF[k]) ** -0.3) * np.exp(rng.normal(0, 0.003))}
                          for n in (1e6, 1e7, 1e8) for k in (2, 3, 4, 8, 16)])
    v = fit_law(three, "efficiency", n_boot=30).verdict()  # 15 runs, 7 parameters, but only 3 sizes
    assert v["status"] == "unidentified" and "3 distinct n_params values" in v["reasons"][0], v


def test_an_unidentified_law_is_reported_not_trusted(tmp_path, capsys):
    """Four sizes per curve with noise: E cannot be told apart from its neighbours; the per-k laws are
    listed as unidentified and the headline comes from a law that is identified, or from the data."""
    path = tmp_path / "qat.csv"
    qat_table(path, sizes=np.geomspace(1e6, 1e8, 4), noise=0.02)
    out = tmp_path / "fit"
    assert ksir_fit(["--table", str(path), "--map", QAT_MAP, "--out", str(out), "--bootstrap", "60",
                     "--no-figures"]) == 0
    rep = json.loads((out / "fit.json").read_text())
    cands = {c["law"]: c for c in rep["headline"]["candidates"]}
    assert cands["power_bits"]["status"] == "unidentified" and not cands["power_bits"]["trusted"]
    trusted = rep["headline"]["trusted"]
    assert trusted is None or cands[trusted]["status"] == "ok"
    md = (out / "report.md").read_text()
    assert "| power_bits | unidentified |" in md


def test_accuracy_of_an_unseen_model_from_loss_in_two_steps(tmp_path, capsys):
    path = tmp_path / "qat.csv"
    qat_table(path, acc=True, sizes=np.geomspace(1e8, 3e10, 7), mid=2.5)  # losses 2.3..3.3: through the sigmoid
    out = tmp_path / "fit"
    assert ksir_fit(["--table", str(path), "--map", QAT_MAP + ",acc=zs_acc_mean", "--out", str(out),
                     "--bootstrap", "60", "--no-figures", "--predict", "n_params=3e11,bits=4,train_tokens=6e12"]) == 0
    rep = json.loads((out / "fit.json").read_text())
    acc = rep["accuracy"]
    assert rep["predictions"]["law"] == rep["headline"]["trusted"] is not None  # only a trusted law predicts
    (pred,) = rep["predictions"]["rows"]
    true_loss = 1.9 + 300 * (3e11 * 0.70) ** -0.3 + 900 * 6e12**-0.28
    true_acc = 0.25 + 0.5 / (1 + np.exp(4.0 * (true_loss - 2.5)))
    assert abs(pred["loss"] - true_loss) / true_loss < 0.02  # 10x beyond the largest run
    lo, hi = pred["accuracy_ci95"]
    assert lo - 0.01 <= true_acc <= hi + 0.01 and hi - lo < 0.1
    assert acc["heldout"]["mean_abs_error"] < 0.02  # the ladder check: largest size from the smaller ones
    printed = capsys.readouterr().out
    assert "zs_acc_mean from loss" in printed and "predicted (--predict" in printed
    assert "## Predictions (--predict)" in (out / "report.md").read_text()
    bad = run_here("ksir-fit", "--table", str(path), "--map", QAT_MAP, "--out", str(tmp_path / "o"),
                  "--predict", "n_params=big", cwd=tmp_path)
    assert bad.returncode == 2 and "--predict: 'n_params=big' is not column=number" in bad.stderr


def test_predict_without_an_accuracy_column_predicts_loss_and_says_so(tmp_path, capsys):
    """--predict on a table with no accuracy column: the loss is predicted (with its interval) and the
    terminal says why accuracy is not, instead of dropping the request."""
    path = tmp_path / "qat.csv"
    qat_table(path, sizes=np.geomspace(1e8, 3e10, 7))
    out = tmp_path / "fit"
    assert ksir_fit(["--table", str(path), "--map", QAT_MAP, "--out", str(out), "--bootstrap", "40", "--no-figures",
                     "--predict", "n_params=3e11,bits=4,train_tokens=6e12"]) == 0
    pred = json.loads((out / "fit.json").read_text())["predictions"]
    (row,) = pred["rows"]
    true_loss = 1.9 + 300 * (3e11 * 0.70) ** -0.3 + 900 * 6e12**-0.28
    assert abs(row["loss"] - true_loss) / true_loss < 0.02 and row["loss_ci95"][0] <= row["loss"] <= row["loss_ci95"][1]
    assert "accuracy" not in row and "loss only: zs_acc_mean is measured on 0 runs" in pred["note"]
    printed = capsys.readouterr().out
    assert "N=3e+11 k=4 D=6e+12: loss" in printed and "(loss only" in printed


def test_predict_with_no_trusted_law_is_one_line_and_exit_2(tmp_path):
    """Two sizes: no law can be checked on a held-out size, so none is trusted; --predict refuses in one line
    (after writing the fit) rather than predicting from a law it does not trust."""
    path = tmp_path / "qat.csv"
    qat_table(path, sizes=[1e8, 1e9])
    out = tmp_path / "fit"
    r = run_here("ksir-fit", "--table", str(path), "--map", QAT_MAP, "--out", str(out), "--bootstrap", "0",
                 "--no-figures", "--predict", "n_params=1e10,bits=4,train_tokens=2e11", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["ksir-fit: error: no law is trusted on these runs (report.md says why), "
                                             "so nothing is predicted; the measured runs are in runs.csv"]
    rep = json.loads((out / "fit.json").read_text())
    assert rep["headline"]["trusted"] is None and "error" in rep["predictions"]
