"""Optimal k for a budget, accuracy laws and figures, on synthetic runs from known parameters."""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis import fit_law
from analysis.optimal import continuous_optimum, interpolated_optimum, per_k_optimum
from analysis.plot import curves


def precision_runs(gamma=2.0, E=2.0, A=400.0, alpha=0.33, noise=0.004, seed=0):
    rng = np.random.default_rng(seed)
    N, k = (a.ravel() for a in np.meshgrid(np.geomspace(3e5, 3e8, 6), np.array([2, 3, 4, 6, 8, 16.0])))
    y = (E + A * (N * (1 - np.exp(-k / gamma))) ** -alpha) * np.exp(rng.normal(0, noise, N.size))
    return pd.DataFrame({"n_params": N, "bits": k, "total_bits": N * k, "val_loss": y})


def test_continuous_optimal_k_matches_the_true_law_within_its_interval():
    gamma, E, A, alpha = 2.0, 2.0, 400.0, 0.33
    fit = fit_law(precision_runs(gamma, E, A, alpha), "precision", n_boot=100, seed=0)
    budgets = np.array([1e7, 1e9, 1e11])  # the last is far beyond the runs (extrapolated)
    rows = continuous_optimum(fit, budgets, (1.0, 16.0), overhead=0.0)
    ks = np.arange(1.0, 16.0001, 0.01)
    for r, b in zip(rows, budgets, strict=True):
        true_loss = E + A * (b / ks * (1 - np.exp(-ks / gamma))) ** -alpha
        k_true = ks[np.argmin(true_loss)]
        lo, hi = r["k_star_ci95"]
        assert lo - 0.02 <= k_true <= hi + 0.02 and abs(r["k_star"] - k_true) < 0.5, (b, r, k_true)


def test_per_k_optimum_and_model_free_interpolation_agree_with_the_truth():
    rng = np.random.default_rng(1)
    rows = []
    for k, eff in ((2, 0.2), (4, 0.75), (8, 0.97)):
        for n in np.geomspace(1e5, 1e8, 7):
            rows.append({"bits": float(k), "n_params": n, "total_bits": n * k,
                         "val_loss": (2 + 300 * (n * eff) ** -0.3) * np.exp(rng.normal(0, 0.002))})
    df = pd.DataFrame(rows)
    fits = {(k,): fit_law(g, "power_bits", n_boot=50, seed=0, group={"bits": k}) for k, g in df.groupby("bits")}
    budgets = np.array([3e6, 3e7, 3e8])
    per_k = per_k_optimum(fits, budgets, df.total_bits.max())
    # Truth: at budget B the loss at k is E + A (B / k * eff(k))^-alpha; eff/k is largest for k = 4.
    assert [r["best_k"] for r in per_k] == [4.0, 4.0, 4.0]
    assert all(r["best_frequency"] > 0.9 and r["best_k_ci95"] == (4.0, 4.0) for r in per_k)
    interp = interpolated_optimum(df, "val_loss", ["bits"], budgets)
    assert [r["best"] for r in interp] == ["4", "4", "4"]
    assert set(interp[1]["interpolated"]) == {"2", "4", "8"}  # each curve read where it was measured


def test_sigmoid_accuracy_law_recovers_known_parameters():
    rng = np.random.default_rng(2)
    lb = np.linspace(12, 24, 30)
    lo, hi, s, m = 0.25, 0.75, 0.8, 18.0
    acc = lo + (hi - lo) / (1 + np.exp(-s * (lb - m))) + rng.normal(0, 0.005, lb.size)
    df = pd.DataFrame({"total_bits": np.exp(lb), "n_params": np.exp(lb) / 4, "zs_acc_mean": acc})
    fit = fit_law(df, "sigmoid_bits", "zs_acc_mean", n_boot=100, delta=0.05)
    ci = fit.intervals()
    for name, true in (("lo", lo), ("hi", hi), ("m", m), ("log_s", np.log(s))):
        assert ci[name][0] <= true <= ci[name][1], (name, fit.params[name], ci[name])
    assert fit.gof["space"] == "linear" and fit.gof["r2"] > 0.99


def test_accuracy_as_a_function_of_loss():
    rng = np.random.default_rng(3)
    loss = np.linspace(2.0, 5.0, 25)
    acc = 0.25 + 0.5 / (1 + np.exp(2.0 * (loss - 3.2))) + rng.normal(0, 0.004, loss.size)
    fit = fit_law(pd.DataFrame({"val_loss": loss, "zs_acc_mean": acc}), "sigmoid_loss", "zs_acc_mean", n_boot=0,
                  delta=0.05, holdout=0)
    assert abs(fit.params["m"] - 3.2) < 0.05 and abs(np.exp(fit.params["log_s"]) - 2.0) < 0.2


def test_figure_states_what_was_measured_and_how_many_runs(tmp_path):
    from PIL import Image

    df = precision_runs()
    fits = {(k,): fit_law(g, "power_bits", n_boot=20) for k, g in df.groupby("bits")}
    files = curves(df, "val_loss", ["bits"], tmp_path / "bits", "Bit-level scaling", "val_loss of 36 runs",
                   fits=fits)
    assert sorted(p.rsplit(".", 1)[1] for p in files) == ["pdf", "png"]
    caption = Image.open(tmp_path / "bits.png").text["Title"]
    assert caption.startswith("Bit-level scaling. val_loss of 36 runs. n = 36 runs; law power_bits")
    assert b"36 runs" in (tmp_path / "bits.pdf").read_bytes()  # PDF /Title metadata
