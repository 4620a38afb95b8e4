"""Collecting runs (records, W&B, external tables), the optimal-k report and the ksir-fit CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analysis import load_records, load_table, load_wandb
from analysis.cli import main as ksir_fit
from analysis.fit import FitError
from ksir.records import write_record
from tests.helpers import run_here

EFF = {2: 0.16, 3: 0.43, 4: 0.70, 5: 0.80, 6: 0.86, 8: 1.0, 16: 1.0}  # QuEST-like: eff(k)/k peaks at k=4


SIZES = np.geomspace(2e5, 5e7, 6)


def synthetic_records(folder, noise=0.004, seed=0, sizes=SIZES, ks=(2, 3, 4, 5, 6, 8, 16)):
    """Quantize-job records whose loss follows L = E + A (N eff(k))^-alpha, bits/param = k + 0.25."""
    rng = np.random.default_rng(seed)
    for n in sizes:
        for k in ks:
            loss = (1.9 + 300 * (n * EFF[k]) ** -0.3) * np.exp(rng.normal(0, noise))
            bpp = 16.0 if k == 16 else k + 0.25
            write_record(folder, {"run_key": f"q-{int(n)}-{k}", "status": "done", "job": "quantize",
                                  "family": "synthetic", "size": str(int(n)), "method": "rtn", "dtype": "int",
                                  "blocksize": 64, "bits": float(k), "n_params": int(n), "total_bits": n * bpp,
                                  "bits_per_param": bpp, "created": "2026-01-01T00:00:00",
                                  "metrics": {"val_loss": loss}})


def test_records_duplicates_failed_nan_and_corrupt_files_are_reported(tmp_path):
    base = {"job": "quantize", "bits": 4.0, "n_params": 10, "total_bits": 42.5, "status": "done"}
    write_record(tmp_path / "a", {**base, "run_key": "q-1", "created": "2026-01-01", "metrics": {"val_loss": 3.0}})
    write_record(tmp_path / "b", {**base, "run_key": "q-1", "created": "2026-01-02", "metrics": {"val_loss": 2.9}})
    write_record(tmp_path / "a", {**base, "run_key": "q-2", "status": "failed", "metrics": {}})
    write_record(tmp_path / "a", {**base, "run_key": "q-3", "metrics": {"val_loss": float("nan")}})
    (tmp_path / "a" / "q-4.json").write_text('{"run_key": "q-4", "schema": 1, "metr')  # truncated
    got = load_records([tmp_path / "a", str(tmp_path / "b" / "*.json")])
    assert got.runs["run_key"].tolist() == ["q-1"] and got.runs["val_loss"].tolist() == [2.9]  # newest wins
    reasons = " | ".join(s["reason"] for s in got.skipped)
    assert "status=failed" in reasons and "NaN" in reasons and "duplicate" in reasons and "unreadable" in reasons
    assert got.runs["regime"].tolist() == ["ptq"]


def test_ksir_fit_finds_the_optimal_k_and_writes_everything(tmp_path, capsys):
    synthetic_records(tmp_path / "results")
    out = tmp_path / "fit"
    assert ksir_fit([str(tmp_path / "results"), "--out", str(out), "--bootstrap", "60", "--law", "efficiency"]) == 0
    printed = capsys.readouterr().out
    assert "42 runs used" in printed and "Answer: the bit-width k" in printed
    for name in ("runs.csv", "fit.json", "report.md", "bit_scaling.png", "bit_scaling.pdf", "optimal_k.png",
                 "residuals.png"):
        assert (out / name).stat().st_size > 0, name
    rep = json.loads((out / "fit.json").read_text())
    assert len(rep["laws"]["power_bits"]) == 7
    for s in rep["laws"]["power_bits"]:
        assert s["goodness_of_fit"]["r2"] > 0.98 and s["params"]["alpha"]["ci95"] is not None
    # eff(k)/k peaks at 4 bits: inside the measured range (large budgets), 4-bit wins, and the
    # model-free interpolation agrees with the laws.
    inside = [r for r in rep["optimal"] if not r["extrapolated"] and r["budget_bits"] > 1e8]
    assert inside and all(r["best_k"] == 4.0 for r in inside)
    assert all(r["law_agrees_with_data"] in (True, None) for r in inside)
    eff = {r["k"]: r for r in rep["laws"]["efficiency"]["efficiency"]}
    assert max(eff, key=lambda k: eff[k]["eff_per_bit"]) == 4.0
    assert rep["laws_fitted"] == ["power_bits", "efficiency"]
    cont = rep["optimal_continuous"]["efficiency"]
    assert all(2.0 <= r["k_star"] <= 16 and "k_star_ci95" in r for r in cont)
    head = rep["headline"]
    assert head["trusted"] in ("power_bits", "efficiency") and "held-out" in head["why"]
    assert all(r["best_k"] == 4.0 for r in head["rows"] if not r["extrapolated"] and r["budget_bits"] > 1e8)
    assert (out / "report.md").read_text().startswith("# ksir scaling-law report\n\nMeasured:")
    assert "## Answer" in (out / "report.md").read_text()


def test_ksir_fit_bad_input_is_one_line_and_nonzero(tmp_path, capsys):
    assert ksir_fit([str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ksir-fit: error:")
    synthetic_records(tmp_path / "one", sizes=[1e6])  # a single model size
    assert ksir_fit([str(tmp_path / "one"), "--out", str(tmp_path / "o"), "--bootstrap", "0"]) == 2
    assert "no law could be fitted" in capsys.readouterr().err


def test_external_table_with_a_column_mapping(tmp_path):
    rng = np.random.default_rng(0)
    rows = [{"params": n, "precision": k, "loss": (2 + 100 * (n * k) ** -0.25) * np.exp(rng.normal(0, 0.002))}
            for n in np.geomspace(1e6, 1e9, 5) for k in (3, 4, 8)]
    path = tmp_path / "released.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    got = load_table(path, {"params": "n_params", "precision": "bits", "loss": "val_loss"})
    assert len(got.runs) == 15 and np.allclose(got.runs.total_bits, got.runs.n_params * got.runs.bits)
    out = tmp_path / "refit"
    assert ksir_fit(["--table", str(path), "--map", "params=n_params,precision=bits,loss=val_loss", "--out", str(out),
                     "--bootstrap", "20", "--no-figures"]) == 0
    assert len(json.loads((out / "fit.json").read_text())["laws"]["power_bits"]) == 3


def test_wandb_source_through_a_faked_public_api():
    runs = [SimpleNamespace(id=f"q-{i}", state="finished" if i < 3 else "crashed", created_at=f"2026-01-0{i + 1}",
                            config={"job": "quantize", "model": {"family": "llama", "size": "xs"},
                                    "quant": {"bits": 4, "dtype": "nf", "blocksize": 64}},
                            summary={"val_loss": 3.0 - i * 0.1, "total_bits": 1e6 * (i + 1), "n_params": 2.5e5 * (i + 1),
                                     "_runtime": 3})
            for i in range(4)]
    calls = []

    class Api:
        def runs(self, path, filters=None):
            calls.append((path, filters))
            return runs

    got = load_wandb("me/ksir", {"config.quant.dtype": "nf"}, group="sweep-1", api=Api())
    assert calls == [("me/ksir", {"config.quant.dtype": "nf", "group": "sweep-1"})]
    assert got.runs["run_key"].tolist() == ["q-0", "q-1", "q-2"]
    assert set(got.runs["dtype"]) == {"nf"} and set(got.runs["bits"]) == {4}
    assert [s["reason"] for s in got.skipped] == ["status=crashed"]


def test_wandb_source_user_errors_are_one_line_exit_2(tmp_path, monkeypatch):
    """Not logged in, server unreachable, a malformed project, an API that fails: each a one-line error naming
    --wandb and what to do, exit 2, in seconds (W&B's own client retries for a minute, then a traceback)."""
    import time

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    r = run_here("ksir-fit", "--wandb", "me/ksir", "--out", "o", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.splitlines() == [
        "ksir-fit: error: --wandb me/ksir: not logged in to W&B (run `wandb login` or set WANDB_API_KEY); "
        "local result folders and --table need no login"]
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens there
    t0 = time.monotonic()
    r = run_here("ksir-fit", "--wandb", "me/ksir", "--out", "o", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
    assert "--wandb me/ksir: W&B server 127.0.0.1:9 unreachable" in r.stderr and time.monotonic() - t0 < 10
    r = run_here("ksir-fit", "--wandb", "ksir", "--out", "o", cwd=tmp_path)
    assert r.returncode == 2 and "expected entity/project" in r.stderr
    assert not (tmp_path / "o").exists()  # nothing written for a failed source

    class Failing:
        def runs(self, path, filters=None):
            raise ValueError("Could not find project ksir\n(traceback follows)")

    with pytest.raises(FitError, match=r"^--wandb me/ksir: the W&B API refused or failed \(Could not find project "
                                       r"ksir\)$"):
        load_wandb("me/ksir", api=Failing())


def test_filters_select_runs(tmp_path):
    synthetic_records(tmp_path / "r", ks=(3, 4), sizes=[2e5, 1e6, 5e6, 2.5e7, 1e8])
    with pytest.raises(SystemExit):
        ksir_fit([str(tmp_path / "r")])  # --out is required: argparse's own error
    out = tmp_path / "o"
    assert ksir_fit([str(tmp_path / "r"), "--out", str(out), "--bootstrap", "0", "--no-figures", "--dtype", "int",
                     "--size", "200000", "--size", "1000000", "--size", "5000000", "--size", "25000000"]) == 0
    assert len(pd.read_csv(out / "runs.csv")) == 8


def test_schemes_regimes_and_zero_shot_accuracy_in_one_report(tmp_path):
    """nf beats int and QAT beats PTQ by construction: the report says which scheme wins at each
    budget, draws the comparison figures, and fits the accuracy laws on zero-shot accuracy."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "r"
    shift = {("int", "ptq"): 1.0, ("nf", "ptq"): 1.3, ("int", "qat"): 1.8}  # effective-parameter multipliers
    for (dtype, regime), m in shift.items():
        for n in np.geomspace(2e5, 5e7, 5):
            for k in (3, 4):
                loss = (1.9 + 300 * (n * m * EFF[k]) ** -0.3) * np.exp(rng.normal(0, 0.002))
                write_record(folder, {
                    "run_key": f"{dtype}-{regime}-{int(n)}-{k}", "status": "done",
                    "job": "quantize" if regime == "ptq" else "train", "regime": regime, "family": "synthetic",
                    "method": "rtn" if regime == "ptq" else "qat", "dtype": dtype, "blocksize": 64, "bits": float(k),
                    "n_params": int(n), "total_bits": n * (k + 0.25),
                    "metrics": {"val_loss": loss, "zs_acc_mean": 0.25 + 0.5 / (1 + np.exp(-(np.log(n * k) - 16)))}})
    write_record(folder, {"run_key": "fp", "status": "done", "job": "train", "regime": "fp", "method": "none",
                          "bits": 16.0, "n_params": 1e6, "total_bits": 1.6e7, "metrics": {"val_loss": 3.0}})
    out = tmp_path / "fit"
    assert ksir_fit([str(folder), "--out", str(out), "--bootstrap", "20"]) == 0
    rep = json.loads((out / "fit.json").read_text())
    assert rep["n_runs"] == 30, "the plain full-precision train record is left out by default"
    assert set(rep["curve_keys"]) == {"bits", "dtype", "method", "regime"}
    assert len(rep["laws"]["power_bits"]) == 6
    inside = [r for r in rep["optimal"] if not r["extrapolated"]]
    assert all(r["best"].split(",")[1:] == ["int", "qat", "qat"] for r in inside)  # the QAT scheme wins everywhere
    acc = rep["accuracy"]
    assert acc["acc_law"]["law"] == "sigmoid_loss" and acc["predictions"] and "mean_abs_error" in acc["heldout"]
    for name in ("schemes_at_fixed_k", "ptq_vs_qat", "zeroshot_accuracy"):
        assert (out / f"{name}.png").stat().st_size > 10_000 and (out / f"{name}.pdf").exists()


def test_low_rank_schemes_are_curves_of_their_own(tmp_path):
    """k-bit RTN, k-bit + a low-rank correction and 16-bit factor pairs in one folder: each scheme is its own
    curve, the unquantized baseline is attached to the k-bit schemes only (a 16-bit factor pair is not it),
    and the answer names the scheme that wins (the correction, by construction)."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "r"
    schemes = {  # (bits, lowrank fields, bits/param overhead, effective-parameter multiplier)
        "rtn3": (3.0, {}, 0.25, 0.55), "rtn4": (4.0, {}, 0.25, 0.8),
        "corr3": (3.0, {"lowrank_mode": "correct", "lowrank_rank": 8.0}, 0.75, 0.9),
        "fact": (16.0, {"lowrank_mode": "factorize", "lowrank_rank": 0.25}, -8.0, 0.3),
    }
    for n in np.geomspace(2e5, 5e7, 5):
        for name, (k, lr, extra, m) in schemes.items():
            loss = (1.9 + 300 * (n * m) ** -0.3) * np.exp(rng.normal(0, 0.002))
            write_record(folder, {"run_key": f"{name}-{int(n)}", "status": "done", "job": "quantize", "regime": "ptq",
                                  "family": "synthetic", "method": "rtn", "dtype": "int", "blocksize": 64, "bits": k,
                                  "n_params": int(n), "total_bits": n * (k + extra), "checkpoint": f"m{int(n)}",
                                  **lr, "metrics": {"val_loss": loss}})
        write_record(folder, {"run_key": f"base-{int(n)}", "status": "done", "job": "quantize", "regime": "ptq",
                              "family": "synthetic", "method": "none", "dtype": "none", "bits": 16.0,
                              "n_params": int(n), "total_bits": 16 * n, "checkpoint": f"m{int(n)}",
                              "metrics": {"val_loss": 1.9 + 300 * n ** -0.3}})
    out = tmp_path / "fit"
    assert ksir_fit([str(folder), "--out", str(out), "--bootstrap", "10", "--no-figures"]) == 0
    rep = json.loads((out / "fit.json").read_text())
    assert {"lowrank_mode", "lowrank_rank"} <= set(rep["curve_keys"])
    groups = {json.dumps(s["group"], sort_keys=True): s["n_points"] for s in rep["laws"]["power_bits"]}
    fact = [v for g, v in groups.items() if "factorize" in g]
    assert fact == [5], groups  # the factor pairs' own 5 runs, no baseline copied in
    base = [v for g, v in groups.items() if '"bits": 16' in g and "factorize" not in g]
    assert base and all(v == 5 for v in base)
    labels = {r["best"] for r in rep["optimal"] if r["best"]}
    assert not any("factorize" in lab and lab.startswith("16 (unquantized)") for lab in labels)
    inside = [r for r in rep["headline"]["rows"] if not r.get("extrapolated") and r.get("best")]
    assert inside and all("correct" in r["best"] for r in inside), [r["best"] for r in inside]
    # each scheme at its best k, on one axis: the correction wins, by a margin whose interval excludes 0
    front = [r for r in rep["scheme_frontiers"] if not r["extrapolated"]]
    assert front and all(r["best_scheme"].startswith("lowrank_mode=correct") for r in front)
    assert {"lowrank_mode=correct, lowrank_rank=8", "lowrank_mode=factorize, lowrank_rank=0.25"} <= set(front[0]["loss"])
    assert sum(r.get("significant", False) for r in front) >= len(front) // 2
    assert all(r["measured_best_scheme"] in (None, r["best_scheme"]) for r in front)
    assert "## Best scheme per budget" in (out / "report.md").read_text()


def test_a_baseline_joins_only_the_curves_of_its_own_base_model():
    """PTQ sweeps over models trained two ways (sp and u-muP): each 16-bit baseline is copied to the quantized
    curves of its own base model, never to the other's."""
    import pandas as pd

    from analysis.report import attach_baselines, fill_scheme_gaps

    rows = [{"n_params": n, "bits": b, "regime": "ptq", "method": "rtn" if b < 16 else "none",
             "dtype": "int" if b < 16 else "none", "parametrization": p, "matmul_precision": "fp32",
             "val_loss": 3.0 + (b < 16) * 0.1 + (p == "umup") * 0.5}
            for p in ("sp", "umup") for n in (1e5, 2e5) for b in (4, 16)]
    df = attach_baselines(fill_scheme_gaps(pd.DataFrame(rows)))
    at16 = df[(df["bits"] == 16) & (df["dtype"] == "int")]
    assert len(at16) == 4  # one baseline per base model, attached once to its own int curve
    assert (at16.groupby("parametrization")["val_loss"].first() == pd.Series({"sp": 3.0, "umup": 3.5})).all()
