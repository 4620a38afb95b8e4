"""A sweep writes nothing before every job validates, and what a user types is taken as typed: unknown keys,
duplicate values, malformed overrides, `~`, brackets in folder names, missing folders, concurrent sweeps."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .helpers import TINY, run_cli, run_here


def _one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_a_sweep_with_an_invalid_job_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = run_here("ksir-run", "-m", "job=quantize", "quant.bits=4,99", f"out_dir={out}", cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    line = _one_line(r)
    assert line.startswith("invalid quant.bits=") and line.count("invalid quant.bits") == 1 and "[in sweep job:" in line
    assert not out.exists(), "multirun.yaml (or anything) was written before validation"


@pytest.mark.parametrize("where", ["proc", "read-only"])
def test_a_sweep_into_a_folder_it_cannot_write_is_one_line(tmp_path, where):
    if where == "proc":
        out = Path("/proc/ksir-nowhere")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        if os.geteuid() == 0:
            if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)]).returncode:
                pytest.skip("cannot mount a read-only tmpfs here")
        else:
            ro.chmod(0o555)
        out = ro / "out"
    try:
        r = run_cli("ksir-run", "-m", "job=quantize", "quant.bits=4,8", f"out_dir={out}", cwd=tmp_path, timeout=120)
    finally:
        if where == "read-only" and os.geteuid() == 0:
            subprocess.run(["umount", "-l", str(tmp_path / "ro")])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert _one_line(r).startswith(f"invalid out_dir='{out}'") and "not writable" in r.stderr


def test_an_unknown_top_level_key_is_refused_with_the_closest_one(tmp_path):
    r = run_here("ksir-run", "+sed=3", f"out_dir={tmp_path / 'out'}", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "did you mean 'seed'?" in _one_line(r) and _one_line(r).startswith("invalid sed=3")
    r = run_here("ksir-run", "-m", "+sed=3,4", f"out_dir={tmp_path / 'out'}", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "did you mean 'seed'?" in _one_line(r)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override", ["quant.bits=4,", "quant.bits=[4", "model.size=(xs"])
def test_a_malformed_override_is_one_line_naming_it(tmp_path, override):
    r = run_here("ksir-run", "-m", "job=quantize", override, f"out_dir={tmp_path / 'out'}", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and _one_line(r).startswith(f"invalid override {override!r}:")
    assert not (tmp_path / "out").exists()


def test_identical_values_collapse_into_one_job_and_the_plan_says_so(tmp_path, cache_dir):
    r = run_here("ksir-run", "-m", "job=quantize", "model.size=xs,xs", "quant.bits=4,4.0,8", *TINY, "dry_run=true",
                f"out_dir={tmp_path / 'out'}", f"paths.cache={cache_dir}", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "[sweep] 4 of 6 jobs are the same job as another (collapsed)" in r.stdout
    assert "[sweep] 2 jobs validated" in r.stdout and "2 jobs planned" not in r.stdout
    planned = [ln for ln in r.stdout.splitlines() if ln.startswith("  q-") or ln.startswith("  t-")]
    assert len(planned) == 3 and len({ln.split()[0] for ln in planned}) == 3  # 1 train + 2 distinct quantize jobs


def test_out_dir_with_a_tilde_is_the_home_folder(tmp_path, trained_tiny, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    r = run_here("ksir-run", "job=quantize", f"model.checkpoint={trained_tiny.checkpoint}", "quant.bits=16", *TINY,
                 "logger=none", "out_dir='~/runs'", f"paths.cache={trained_tiny.cfg.paths.cache}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (tmp_path / "~").exists(), "a folder named ~ was created"
    assert list((home / "runs" / "results").glob("q-*.json")) and (home / "runs" / "hydra").is_dir()


def test_ksir_fit_takes_an_existing_folder_literally_and_refuses_a_missing_one(tmp_path, trained_tiny, capsys):
    from analysis.cli import main as ksir_fit
    from analysis.collect import load_records
    from ksir.config import compose_spec
    from ksir.jobs import execute

    out = tmp_path / "runs[1]"  # a glob would read [1] as a character class and find nothing
    for bits in (16, 4):
        execute(compose_spec([*TINY, "job=quantize", f"model.checkpoint={trained_tiny.checkpoint}", f"quant.bits={bits}",
                              "logger=none", f"out_dir='{out}'", f"paths.cache={trained_tiny.cfg.paths.cache}"]))
    assert len(load_records([str(out / "results")]).runs) == 2
    rc = ksir_fit([str(tmp_path / "no-such-folder"), "--out", str(tmp_path / "fit2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no-such-folder: no such results folder" in err[0]


def test_ksir_migrate_on_a_missing_folder_fails_in_one_line(tmp_path):
    r = run_cli("ksir-migrate", str(tmp_path / "nope"), cwd=tmp_path, timeout=60)
    assert r.returncode == 2 and _one_line(r).endswith("nope: no such results folder")
