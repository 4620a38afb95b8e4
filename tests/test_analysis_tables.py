"""External run tables (`ksir-fit --table FILE --map theirs=ours`): formats, nested JSON, strict
numbers, one-line errors, and rows left out one by one with their reason."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.collect import clean, load_table, parse_map
from analysis.fit import FitError

REPO = Path(__file__).resolve().parents[1]
CHINCHILLA_MAP = {"params": "n_params", "tokens": "train_tokens", "loss": "val_loss"}


def chinchilla_rows() -> list[dict[str, float]]:
    """A Chinchilla-style table: only params, tokens and loss (L = E + A/N^a + B/D^b)."""
    return [{"params": n, "tokens": 20 * n * f, "loss": 1.7 + 400 * n ** -0.34 + 410 * (20 * n * f) ** -0.28}
            for n in (1e7, 1e8, 1e9) for f in (0.5, 1.0, 2.0)]


def nested_runs() -> list[dict]:
    return [{"args": {"lr": 1e-3 * (i + 1), "model": {"n": n}, "quant": {"bits": k}},
             "metrics": {"loss": 2.0 + 1e3 / n + 0.1 / k}, "tags": ["a", str(k)]}
            for i, (n, k) in enumerate((n, k) for n in (1e6, 4e6) for k in (2, 4, 8))]


NESTED_MAP = {"args.model.n": "n_params", "args.quant.bits": "bits", "metrics.loss": "val_loss", "args.lr": "lr"}


def one_line_error(call) -> str:
    with pytest.raises(FitError) as e:
        call()
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_nested_json_runs_map_into_nested_keys(tmp_path, suffix):
    runs = nested_runs()
    path = tmp_path / f"sweep{suffix}"
    text = json.dumps(runs) if suffix == ".json" else "\n".join(map(json.dumps, runs)) + "\n\n"
    path.write_text(text)
    got = load_table(path, NESTED_MAP)
    df = got.runs
    assert got.skipped == [] and len(df) == 6
    assert df["n_params"].tolist() == [1e6, 1e6, 1e6, 4e6, 4e6, 4e6]
    assert df["bits"].tolist() == [2.0, 4.0, 8.0] * 2
    assert np.allclose(df["val_loss"], [r["metrics"]["loss"] for r in runs])
    assert np.allclose(df["lr"], [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3])
    assert np.allclose(df["total_bits"], df["n_params"] * df["bits"])  # derived: both columns, no total_bits
    assert df["tags"].tolist()[1] == ["a", "4"]  # lists stay lists, rows are not exploded
    assert df["run_key"].tolist() == [f"sweep-{i}" for i in range(1, 7)]
    assert set(df["job"]) == {"quantize"} and set(df["status"]) == {"done"}


def test_json_dict_of_columns(tmp_path):
    path = tmp_path / "cols.json"
    path.write_text(json.dumps({"params": [1e6, 2e6], "loss": [3.0, 2.5]}))
    got = load_table(path, {"params": "n_params", "loss": "val_loss"})
    assert got.runs["n_params"].tolist() == [1e6, 2e6] and got.runs["val_loss"].tolist() == [3.0, 2.5]


def test_csv_tsv_and_parquet_read_the_same_runs(tmp_path):
    table = pd.DataFrame(chinchilla_rows())
    table.to_csv(tmp_path / "runs.csv", index=False)
    table.to_csv(tmp_path / "runs.tsv", index=False, sep="\t")
    table.to_parquet(tmp_path / "runs.parquet", index=False)
    frames = [load_table(tmp_path / f"runs{s}", CHINCHILLA_MAP).runs for s in (".csv", ".tsv", ".parquet")]
    for df in frames:
        assert len(df) == 9 and np.allclose(df["val_loss"], table["loss"])
        assert df["train_tokens"].tolist() == table["tokens"].tolist()
    assert frames[0]["run_key"].tolist() == [f"runs-{i}" for i in range(1, 10)]


def test_a_chinchilla_table_needs_no_bits_column(tmp_path):
    path = tmp_path / "chinchilla.csv"
    pd.DataFrame(chinchilla_rows()).to_csv(path, index=False)
    got = load_table(path, CHINCHILLA_MAP)
    assert len(got.runs) == 9 and got.skipped == []
    assert {"n_params", "train_tokens", "val_loss"} <= set(got.runs)
    assert "bits" not in got.runs and "total_bits" not in got.runs


def test_numeric_strings_are_numbers(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("params,loss\n1e9, 3.5 \n2000000000,3.25\n3e9,\n")
    got = load_table(path, {"params": "n_params", "loss": "val_loss"})
    assert got.runs["n_params"].tolist() == [1e9, 2e9] and got.runs["val_loss"].tolist() == [3.5, 3.25]
    assert got.skipped == [{"source": str(path), "run_key": "runs-3", "reason": "val_loss is missing/NaN"}]


# ----------------------------------------------------------------------------- one-line errors


def test_a_map_typo_names_the_columns_that_exist(tmp_path):
    path = tmp_path / "runs.csv"
    pd.DataFrame(chinchilla_rows()).to_csv(path, index=False)
    msg = one_line_error(lambda: load_table(path, {"parms": "n_params", "loss": "val_loss"}))
    assert msg == f"--map: no column 'parms' in {path}; columns are: loss, params, tokens"
    wide = tmp_path / "wide.csv"
    pd.DataFrame([{f"c{i:02d}": i for i in range(35)}]).to_csv(wide, index=False)
    msg = one_line_error(lambda: load_table(wide, {"x": "n_params", "y": "val_loss"}))
    assert msg.startswith(f"--map: no columns 'x', 'y' in {wide}; columns are: c00, c01,")
    assert msg.endswith("c28, c29, ... (5 more)")


@pytest.mark.parametrize("text, bad", [("params", "params"), ("params=n_params,loss=", "loss="),
                                       ("=n_params", "=n_params"), ("a=b=c", "a=b=c")])
def test_a_malformed_map_is_one_line(text, bad):
    assert one_line_error(lambda: parse_map(text)) == \
        f"--map: {bad!r} is not theirs=ours (e.g. params=n_params,loss=val_loss)"


def test_map_parsing_and_duplicate_targets():
    assert parse_map(" params = n_params , loss=val_loss,") == {"params": "n_params", "loss": "val_loss"}
    assert parse_map("") == {}
    assert one_line_error(lambda: parse_map("p=n_params,q=n_params")) == "--map: 'p' and 'q' both map to 'n_params'"
    with pytest.raises(FitError, match="both map to 'val_loss'"):
        load_table("unused.csv", {"a": "val_loss", "b": "val_loss"})


@pytest.mark.parametrize("cell", ["abc", "1.2.3"])
def test_a_non_numeric_cell_names_file_row_column_and_value(tmp_path, cell):
    path = tmp_path / "runs.csv"
    rows = chinchilla_rows()
    rows[6]["loss"] = cell
    pd.DataFrame(rows).to_csv(path, index=False)
    assert one_line_error(lambda: load_table(path, CHINCHILLA_MAP)) == \
        f"{path} row 7, column 'loss' (val_loss): '{cell}' is not a number"
    path = tmp_path / "runs.jsonl"
    path.write_text('{"val_loss": 3.0}\n{"val_loss": [1, 2]}\n')
    assert one_line_error(lambda: load_table(path)) == f"{path} row 2, column 'val_loss': [1, 2] is not a number"


def test_unreadable_files_are_one_line(tmp_path):
    cases = {"empty.csv": "", "blank.csv": "\n", "empty.json": "", "truncated.json": '[{"loss": 3.0}, {"lo',
             "bad.jsonl": '{"loss": 3.0}\nnot json\n', "scalar.json": "3", "bad.parquet": "not parquet",
             "header.csv": "params,loss\n", "runs.xlsx": "x"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    msgs = {name: one_line_error(lambda n=name: load_table(tmp_path / n)) for name in cases}
    msgs["missing.csv"] = one_line_error(lambda: load_table(tmp_path / "missing.csv"))
    p = str(tmp_path)
    assert msgs["empty.csv"] == f"{p}/empty.csv: the file is empty"
    assert msgs["blank.csv"] == f"{p}/blank.csv: cannot read as CSV: No columns to parse from file"
    assert msgs["empty.json"] == f"{p}/empty.json: the file is empty"
    assert msgs["truncated.json"].startswith(f"{p}/truncated.json: cannot read as JSON: Unterminated string")
    assert msgs["bad.jsonl"].startswith(f"{p}/bad.jsonl: cannot read as JSONL: line 2: Expecting value")
    assert msgs["scalar.json"] == f"{p}/scalar.json: expected a list of runs or a dict of columns, not a JSON int"
    assert msgs["bad.parquet"].startswith(f"{p}/bad.parquet: cannot read as Parquet: ")
    assert msgs["header.csv"] == f"{p}/header.csv: the table has no runs"
    assert msgs["runs.xlsx"] == f"{p}/runs.xlsx: unsupported table format '.xlsx'; " \
                                "supported: .csv, .json, .jsonl, .parquet, .tsv"
    assert msgs["missing.csv"] == f"{p}/missing.csv: no such file"


# ----------------------------------------------------------------------------- rows left out


def test_bad_rows_are_left_out_one_by_one_and_their_group_stays(tmp_path):
    rows = [{"params": n, "precision": k, "loss": 2 + 100 * (n * k) ** -0.25} for n in (1e6, 1e7, 1e8, 1e9)
            for k in (4, 8)]
    rows[0]["loss"] = -0.1  # 1e6, 4-bit
    rows[2]["loss"] = math.inf  # 1e7, 4-bit
    rows[4]["params"] = 0  # 1e8, 4-bit
    path = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    got = load_table(path, {"params": "n_params", "precision": "bits", "loss": "val_loss"})
    assert [(s["run_key"], s["reason"]) for s in got.skipped] == [
        ("runs-1", "val_loss = -0.1 <= 0 (a loss must be positive)"),
        ("runs-3", "val_loss = inf (not finite)"),
        ("runs-5", "n_params = 0 <= 0 (must be positive)")]
    assert got.runs["bits"].tolist() == [8.0, 8.0, 8.0, 4.0, 8.0]  # the rest of the 4-bit group stays
    assert got.runs["run_key"].tolist() == ["runs-2", "runs-4", "runs-6", "runs-7", "runs-8"]


def test_clean_checks_positivity_except_for_accuracies():
    df = pd.DataFrame({"run_key": ["a", "b", "c"], "source": "s", "zs_acc_mean": [0.0, 0.4, 0.5],
                       "val_loss": [2.0, 0.0, 2.1], "train_tokens": [np.nan, 1e9, -1.0]})
    acc = clean(df, metric="zs_acc_mean")
    assert acc.runs["run_key"].tolist() == ["a", "b"]  # an accuracy of 0 is a measurement; tokens may be unknown
    assert [s["reason"] for s in acc.skipped] == ["train_tokens = -1 <= 0 (must be positive)"]
    assert clean(df, metric="zs_acc_mean", positive=True).runs["run_key"].tolist() == ["b"]
    assert [s["reason"] for s in clean(df).skipped] == ["val_loss = 0 <= 0 (a loss must be positive)",
                                                        "train_tokens = -1 <= 0 (must be positive)"]


def test_exact_duplicates_are_collapsed_and_counted_in_the_report(tmp_path):
    rows = chinchilla_rows()
    rows += [rows[0]] * 5 + [rows[4]] * 4  # 9 exact copies
    for i in (1, 2, 3):
        rows[i] = {**rows[i], "loss": -1.0 * i}
    path = tmp_path / "runs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    got = load_table(path, CHINCHILLA_MAP)
    assert len(got.runs) == 9 - 3 and len(got.skipped) == 12
    dups = [(s["run_key"], s["reason"]) for s in got.skipped if "duplicate" in s["reason"]]
    assert dups == [(f"runs-{i}", "exact duplicate of row 1 (collapsed)") for i in range(10, 15)] + \
                   [(f"runs-{i}", "exact duplicate of row 5 (collapsed)") for i in range(15, 19)]
    lines = got.report().splitlines()
    assert lines[:2] == ["6 runs used, 12 left out", "left out 12: 9 exact duplicate, 3 non-positive val_loss"]
    assert "  left out runs-3: val_loss = -2 <= 0 (a loss must be positive)" in lines and len(lines) == 14
    short = clean(pd.DataFrame({"run_key": ["a"], "source": "s", "val_loss": [-1.0]}))
    assert short.report().splitlines() == ["0 runs used, 1 left out",
                                           "  left out a: val_loss = -1 <= 0 (a loss must be positive)"]


# ----------------------------------------------------------------------------- the CLI


def test_ksir_fit_bad_map_and_map_typo_exit_2_with_one_line(tmp_path):
    path = tmp_path / "runs.csv"
    pd.DataFrame(chinchilla_rows()).to_csv(path, index=False)
    exe = Path(sys.executable).with_name("ksir-fit")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "analysis.cli"]
    errors = []
    for mapping in ("params", "parms=n_params,loss=val_loss"):
        r = subprocess.run([*cmd, "--table", str(path), "--map", mapping, "--out", str(tmp_path / "out"),
                            "--no-figures", "--bootstrap", "0"], cwd=REPO, capture_output=True, text=True,
                           timeout=60)
        err = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(err) == 1 and err[0].startswith("ksir-fit: error:"), r.stderr
        errors.append(err[0])
    assert errors == ["ksir-fit: error: --map: 'params' is not theirs=ours (e.g. params=n_params,loss=val_loss)",
                      f"ksir-fit: error: --map: no column 'parms' in {path}; columns are: loss, params, tokens"]
