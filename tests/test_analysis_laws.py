"""The laws the quantization-scaling literature fits, each recovering its constants from noisy data drawn
from it: Ouyang et al.'s and Kumar et al.'s degradation laws (on paired differences), Quartet's forward and
backward precisions, Kumar et al.'s N_eff with one factor per precision, Kaplan et al.'s L(N, D), and a user's
law from a file."""

from __future__ import annotations

import json
from itertools import product

import numpy as np
import pandas as pd
import pytest

from analysis.cli import main as ksir_fit
from analysis.fit import fit_law
from tests.helpers import run_here

SIZES = (3e7, 6e7, 1.1e8, 2.2e8, 4e8)
TOKENS_PER_PARAM = (10, 30, 90, 270)  # D varies on its own: degradation laws need it


def chinchilla_loss(n, d):
    return 1.8 + 480 * n ** -0.35 + 2085 * d ** -0.37


def paired_table(delta, seed: int = 0, noise: float = 0.01) -> pd.DataFrame:
    """Baselines (16-bit) and k-bit runs of the same base models, the k-bit loss = baseline + delta(N, D, k)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n, tpp in product(SIZES, TOKENS_PER_PARAM):
        d = n * tpp
        base = chinchilla_loss(n, d) * np.exp(rng.normal(0, 0.002))
        rows.append({"params": n, "tokens": d, "bits": 16, "method": "none", "loss": base})
        for k in (2, 3, 4):
            rows.append({"params": n, "tokens": d, "bits": k, "method": "gptq",
                         "loss": base + delta(n, d, k) * np.exp(rng.normal(0, noise))})
    return pd.DataFrame(rows)


def fit_table(tmp_path, df: pd.DataFrame, *args: str) -> dict:
    (tmp_path / "t.csv").write_text(df.to_csv(index=False))
    rc = ksir_fit(["--table", str(tmp_path / "t.csv"), "--map", "params=n_params,tokens=train_tokens,loss=val_loss",
                   "--out", str(tmp_path / "o"), "--no-figures", "--bootstrap", "100", *args])
    assert rc == 0
    return json.loads((tmp_path / "o" / "fit.json").read_text())


def reported(summary: dict) -> dict[str, float]:
    return {p.get("reported", n): p.get("reported_value", p["value"]) for n, p in summary["params"].items()}


def test_quantization_induced_degradation_recovers_ouyang_constants(tmp_path):
    """dL = k D^beta / (N^alpha P^gamma), Ouyang et al. (2024): k 0.017, alpha 0.2261, beta 0.5251, gamma 5.4967."""
    c, alpha, beta, gamma = 0.017, 0.2261, 0.5251, 5.4967
    fit = fit_table(tmp_path, paired_table(lambda n, d, k: c * d**beta / (n**alpha * k**gamma)),
                    "--law", "quant_degradation")
    s = fit["laws"]["quant_degradation"]
    got = reported(s)
    assert got["c"] == pytest.approx(c, rel=0.25)
    assert got["alpha"] == pytest.approx(alpha, abs=0.02) and got["beta"] == pytest.approx(beta, abs=0.02)
    assert got["gamma"] == pytest.approx(gamma, abs=0.05)
    for name, want in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        lo, hi = s["params"][name]["ci95"]
        assert lo < want < hi, (name, lo, hi)
    assert s["verdict"]["status"] == "ok" and s["n_points"] == len(SIZES) * len(TOKENS_PER_PARAM) * 3
    assert fit["paired"]["n_pairs"] == 60 and fit["paired"]["unpaired"] == []


def test_post_training_degradation_recovers_kumar_constants(tmp_path):
    """delta = C_T D^gamma_D / N^gamma_N exp(-P / gamma_post), Kumar et al. (2025): C_T 0.0598, gamma_D 0.5068,
    gamma_N 0.3439, gamma_post 0.5907."""
    ct, gd, gn, gp = 0.0598, 0.5068, 0.3439, 0.5907
    fit = fit_table(tmp_path, paired_table(lambda n, d, k: ct * d**gd / n**gn * np.exp(-k / gp), seed=1),
                    "--law", "ptq_degradation")
    got = reported(fit["laws"]["ptq_degradation"])
    assert got["C_T"] == pytest.approx(ct, rel=0.3)
    assert got["gamma_d"] == pytest.approx(gd, abs=0.02) and got["gamma_n"] == pytest.approx(gn, abs=0.02)
    assert got["gamma_post"] == pytest.approx(gp, rel=0.03)
    assert fit["laws"]["ptq_degradation"]["verdict"]["status"] == "ok"


def test_degradation_laws_are_chosen_when_tokens_vary_on_their_own(tmp_path):
    fit = fit_table(tmp_path, paired_table(lambda n, d, k: 0.05 * d**0.5 / (n**0.3 * k**5)))
    assert {"quant_degradation", "ptq_degradation"} <= set(fit["laws_fitted"])


def test_unpaired_runs_and_non_positive_differences_are_counted_not_hidden(tmp_path):
    df = paired_table(lambda n, d, k: 0.05 * d**0.5 / (n**0.3 * k**5))
    df = df.drop(index=df.index[0])  # the first base model's baseline: its three k-bit runs have none
    df.loc[df.index[-1], "loss"] = df.loc[df.index[-4], "loss"] - 0.01  # a 4-bit run below its baseline
    fit = fit_table(tmp_path, df, "--law", "quant_degradation")
    assert len(fit["paired"]["unpaired"]) == 3 and fit["paired"]["not_positive"] == 1
    assert fit["laws"]["quant_degradation"]["n_points"] == 60 - 3 - 1
    assert any("<= 0 left out" in w for w in fit["laws"]["quant_degradation"]["warnings"])


def test_kaplan_recovers_its_published_constants_and_its_compute_optimal_size():
    """L(N, D) = ((N_c / N)^(alpha_N / alpha_D) + D_c / D)^alpha_D with Kaplan et al.'s (2020) eq. 1.5 constants:
    the fit gives them back, the law's Jacobian equals central differences, and the closed-form N_opt at a FLOP
    budget is where the loss along C = 6 N D is lowest (a grid search)."""
    from analysis.headline import log_n_opt_kaplan
    from analysis.laws import get_law

    nc, dc, an, ad = 8.8e13, 5.4e13, 0.076, 0.095
    rng = np.random.default_rng(5)
    rows = [{"n_params": n, "train_tokens": n * tpp, "val_loss": ((nc / n) ** (an / ad) + dc / (n * tpp)) ** ad *
             np.exp(rng.normal(0, 0.002))} for n, tpp in product(SIZES, TOKENS_PER_PARAM)]
    fit = fit_law(pd.DataFrame(rows), "kaplan", n_boot=40, holdout=1)
    p = fit.params
    assert p["alpha_n"] == pytest.approx(an, rel=0.1) and p["alpha_d"] == pytest.approx(ad, rel=0.1)
    assert p["log_nc"] == pytest.approx(np.log(nc), abs=1.5) and p["log_dc"] == pytest.approx(np.log(dc), abs=1.5)
    assert fit.verdict()["status"] == "ok", fit.verdict()
    law, x = get_law("kaplan"), {"n_params": np.array(SIZES, float), "train_tokens": 20 * np.array(SIZES, float)}
    q = np.array([[np.log(nc), np.log(dc), an, ad], [25.0, 28.0, 0.3, 0.2]])
    _, jac = law.fn(q, x, {}, True)
    for i in range(4):
        step = np.zeros(4)
        step[i] = 1e-5
        (hi, _), (lo, _) = law.fn(q + step, x, {}, False), law.fn(q - step, x, {}, False)
        np.testing.assert_allclose(jac[..., i], (hi - lo) / 2e-5, rtol=1e-5, atol=1e-9)
    for c in (1e20, 1e23):
        n = np.geomspace(1e6, 1e14, 200001)
        loss = law.predict(q[0], {"n_params": n, "train_tokens": c / (6 * n)}, {})
        assert log_n_opt_kaplan(q[0], c) == pytest.approx(np.log(n[np.argmin(loss)]), abs=1e-3)
    # ksir-fit's report answers any (N, D) law numerically: the same N_opt, and intervals in order (lo <= hi).
    from analysis.headline import numeric_compute_optimal

    for row in numeric_compute_optimal(fit, np.array([1e19, 1e21])):
        assert row["n_opt"] == pytest.approx(np.exp(log_n_opt_kaplan(fit.vector(), row["flops"])), rel=0.02)
        for key in ("n_opt_ci95", "d_opt_ci95", "loss_ci95"):
            assert row[key][0] <= row[key][1], (key, row[key])
        assert row["d_opt_ci95"][0] <= row["d_opt"] <= row["d_opt_ci95"][1]


def test_quartet_recovers_forward_and_backward_efficiencies():
    """L = E + A / (N effN(P_fwd))^alpha + B / (D effD(P_bwd))^beta (Castro et al. 2025)."""
    rng = np.random.default_rng(3)
    E, A, alpha, B, beta = 1.7, 500.0, 0.34, 2000.0, 0.36
    eff_n, eff_d = {16: 1.0, 8: 0.95, 4: 0.7}, {16: 1.0, 8: 0.9, 4: 0.5}
    rows = [{"n_params": n, "train_tokens": n * tpp, "fwd_bits": f, "bwd_bits": b,
             "val_loss": (E + A / (n * eff_n[f]) ** alpha + B / (n * tpp * eff_d[b]) ** beta) *
             np.exp(rng.normal(0, 0.002))}
            for n, tpp in product(SIZES, TOKENS_PER_PARAM) for f, b in ((16, 16), (8, 16), (4, 16), (8, 8), (4, 4),
                                                                        (16, 4))]
    fit = fit_law(pd.DataFrame(rows), "quartet", n_boot=60, holdout=1)
    p = fit.params
    assert np.exp(p["e"]) == pytest.approx(E, rel=0.03)
    assert p["alpha"] == pytest.approx(alpha, abs=0.03) and p["beta"] == pytest.approx(beta, abs=0.03)
    for k in (8, 4):
        assert np.exp(p[f"log_effn_{k}"]) == pytest.approx(eff_n[k], rel=0.05)
        assert np.exp(p[f"log_effd_{k}"]) == pytest.approx(eff_d[k], rel=0.05)
    assert fit.verdict()["status"] == "ok", fit.verdict()


def test_quartet_reads_one_bits_column_as_qat_forward_and_backward(tmp_path):
    """A table with only `bits`: QAT runs train both passes at k, PTQ runs have a 16-bit backward."""
    rng = np.random.default_rng(4)
    eff_n, eff_d = {16: 1.0, 4: 0.7}, {16: 1.0, 4: 0.5}
    rows = []
    for n, tpp in product(SIZES, TOKENS_PER_PARAM):
        for k, regime in ((16, "fp"), (4, "qat"), (4, "ptq")):
            b = k if regime == "qat" else 16
            rows.append({"params": n, "tokens": n * tpp, "bits": k, "regime": regime,
                         "loss": (1.7 + 500 / (n * eff_n[k]) ** 0.34 + 2000 / (n * tpp * eff_d[b]) ** 0.36)
                         * np.exp(rng.normal(0, 0.002))})
    fit = fit_table(tmp_path, pd.DataFrame(rows), "--law", "quartet")
    s = next(v for t, v in fit["laws"].items() if t.startswith("quartet"))
    got = {n: np.exp(p["value"]) for n, p in s["params"].items() if n.startswith("log_eff")}
    assert got["log_effn_4"] == pytest.approx(0.7, rel=0.05) and got["log_effd_4"] == pytest.approx(0.5, rel=0.05)


def test_precision_law_with_activation_and_kv_precisions_recovers_each_gamma():
    """N_eff = N prod_x (1 - exp(-P_x / gamma_x)) over weights, activations, KV cache (Kumar et al. 2025)."""
    rng = np.random.default_rng(5)
    g = {"bits": 2.67, "act_bits": 1.6, "kv_bits": 1.1}
    rows = []
    for n, w, a, kv in product(SIZES, (3, 4, 8, 16), (4, 8, 16), (3, 16)):
        neff = n * np.prod([1 - np.exp(-p / g[c]) for c, p in (("bits", w), ("act_bits", a), ("kv_bits", kv))])
        rows.append({"n_params": n, "bits": w, "act_bits": a, "kv_bits": kv,
                     "val_loss": (1.8 + 450 * neff ** -0.33) * np.exp(rng.normal(0, 0.002))})
    fit = fit_law(pd.DataFrame(rows), "precision_multi", n_boot=60)
    for name, col in (("log_gamma_w", "bits"), ("log_gamma_act", "act_bits"), ("log_gamma_kv", "kv_bits")):
        assert np.exp(fit.params[name]) == pytest.approx(g[col], rel=0.06), name
    assert fit.verdict()["status"] == "ok", fit.verdict()
    # A run that does not say its activation precision has 16-bit activations (the default of every run).
    one = pd.DataFrame([{"n_params": 1e8, "bits": 4.0, "kv_bits": 16.0}])
    both = one.assign(act_bits=16.0)
    assert fit.predict(one)[0] == pytest.approx(fit.predict(both)[0])


def test_a_law_whose_columns_are_absent_is_one_line_before_any_fit(tmp_path, capsys):
    df = paired_table(lambda n, d, k: 0.01).drop(columns=["tokens"])
    (tmp_path / "t.csv").write_text(df.to_csv(index=False))
    rc = ksir_fit(["--table", str(tmp_path / "t.csv"), "--map", "params=n_params,loss=val_loss", "--out",
                   str(tmp_path / "o"), "--law", "quant_degradation"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "train_tokens (training tokens)" in err[0]
    assert not (tmp_path / "o").exists()
    rc = ksir_fit(["--table", str(tmp_path / "t.csv"), "--map", "params=n_params,loss=val_loss", "--out",
                   str(tmp_path / "o"), "--law", "precision_multi"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "act_bits, kv_bits" in err[0]


LAW_FILE = '''
NAME = "my_chinchilla"
FORMULA = "L = E + A / N^alpha + B / D^beta (written by a user)"
COLUMNS = ["n_params", "train_tokens"]
PARAMS = {
    "log_e": {"bounds": (-2, 2), "grid": [0.0, 0.5]},
    "log_a": {"bounds": (0, 12), "grid": [4, 6, 8]},
    "alpha": {"bounds": (0, 2), "grid": [0.3, 0.6]},
    "log_b": {"bounds": (0, 12), "grid": [6, 8]},
    "beta": {"bounds": (0, 2), "grid": [0.3, 0.6]},
}


def law(p, x):
    return p["log_e"].exp() + p["log_a"].exp() * x["n_params"] ** -p["alpha"] + \\
        p["log_b"].exp() * x["train_tokens"] ** -p["beta"]
'''


def test_a_users_law_from_a_file_is_fitted_bootstrapped_and_judged(tmp_path):
    """ksir-fit --law-file, as a user runs it (its entry point, in this process): the file's law recovers the
    constants of the data drawn from it."""
    rng = np.random.default_rng(6)
    rows = [{"params": n, "tokens": n * tpp, "loss": chinchilla_loss(n, n * tpp) * np.exp(rng.normal(0, 0.003))}
            for n, tpp in product(np.geomspace(3e7, 3e9, 7), (5, 20, 80))]
    (tmp_path / "t.csv").write_text(pd.DataFrame(rows).to_csv(index=False))
    (tmp_path / "mylaw.py").write_text(LAW_FILE)
    r = run_here("ksir-fit", "--table", "t.csv", "--map", "params=n_params,tokens=train_tokens,loss=val_loss",
                 "--out", "o", "--law-file", "mylaw.py", "--bootstrap", "60", "--no-figures", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    fit = json.loads((tmp_path / "o" / "fit.json").read_text())
    s = fit["laws"]["my_chinchilla"]
    p = {n: v["value"] for n, v in s["params"].items()}
    assert np.exp(p["log_e"]) == pytest.approx(1.8, rel=0.05)
    assert p["alpha"] == pytest.approx(0.35, abs=0.03) and p["beta"] == pytest.approx(0.37, abs=0.03)
    assert s["formula"].endswith("(written by a user)") and s["verdict"]["status"] in ("ok", "unidentified", "poor")
    assert s["bootstrap"]["converged"] > 50 and s["params"]["alpha"]["ci95"][0] < 0.35 < s["params"]["alpha"]["ci95"][1]
    cand = {c["law"]: c for c in fit["headline"]["candidates"]}
    assert "my_chinchilla" in cand and "chinchilla" in cand  # judged beside the built-in law
    bad = tmp_path / "bad.py"
    bad.write_text("NAME = 'x'\nCOLUMNS = ['n_params']\nPARAMS = {'a': {'bounds': (0, 1)}}\ndef law(p, x):\n    return p['a']\n")
    r = run_here("ksir-fit", "--table", "t.csv", "--map", "params=n_params,tokens=train_tokens,loss=val_loss",
                 "--out", "o2", "--law-file", "bad.py", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "PARAMS['a'] needs 'bounds'" in r.stderr
