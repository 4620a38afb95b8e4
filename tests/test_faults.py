"""Nothing lost, ever: fault injection on the real job path (failing reruns, NaN results, truncated
checkpoints, unwritable stores, parallel identical sweeps, Ctrl-C, an unreachable W&B server).

Each of these failed on the version before typed identities (v1): it overwrote the done record, skipped
NaN results forever, crashed on truncated files with tracebacks naming no file, lost the record of a
finished job, let two sweeps train the same model, and exited without its table on Ctrl-C."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from ksir import records
from ksir.config import compose_spec
from ksir.errors import ConfigError
from ksir.identity import checkpoint_dir, partial_dir, run_key
from ksir.jobs import execute
from ksir.records import FAILED_SUFFIX, read_record, record_path

from .helpers import BIN, TINY, run_cli, run_here


def _spec(out: Path, cache_dir: Path, *overrides: str):
    return compose_spec([*TINY, f"out_dir={out}", f"paths.cache={cache_dir}", "logger=none", *overrides])


def test_failed_force_rerun_keeps_the_done_record(tiny_cfg, trained_tiny, monkeypatch):
    spec = tiny_cfg("job=quantize", "model.size=xs", "quant.bits=3", "eval.sequences=8", "logger=none")
    done = execute(spec)
    path = record_path(spec.paths.results, done["run_key"])
    import ksir.run

    def broken(*a, **k):
        raise RuntimeError("injected evaluation failure")

    monkeypatch.setattr(ksir.run, "evaluate_lm", broken)
    with pytest.raises(RuntimeError, match="injected"):
        execute(spec.replace(force=True))
    kept = read_record(path)
    assert kept["status"] == "done" and kept["metrics"] == done["metrics"]
    failed = read_record(path.with_name(path.stem + FAILED_SUFFIX))
    assert failed["status"] == "failed" and "injected evaluation failure" in failed["error"]


def test_done_record_with_nan_metrics_is_rerun(tiny_cfg, trained_tiny):
    spec = tiny_cfg("job=quantize", "model.size=xs", "quant.bits=5", "eval.sequences=8", "logger=none")
    key = run_key(spec)
    records.write_record(spec.paths.results, {"run_key": key, "status": "done", "job": "quantize",
                                              "metrics": {"val_loss": float("nan")}})
    rec = execute(spec)
    assert not rec.get("skipped") and rec["metrics"]["val_loss"] > 0
    assert read_record(record_path(spec.paths.results, key))["metrics"]["val_loss"] == rec["metrics"]["val_loss"]


def test_records_are_group_readable(tiny_cfg, trained_tiny):
    rec = execute(tiny_cfg("job=quantize", "model.size=xs", "quant.bits=16", "logger=none"))
    mode = record_path(rec["config"]["paths"]["results"], rec["run_key"]).stat().st_mode
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH


def test_unwritable_store_at_the_end_rescues_the_finished_record(tiny_cfg, trained_tiny, monkeypatch):
    spec = tiny_cfg("job=quantize", "model.size=xs", "quant.bits=7", "eval.sequences=8", "logger=none")

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(records, "write_record", disk_full)
    with pytest.raises(OSError, match="it was saved to (\\S+): move it") as e:
        execute(spec)
    rescued = Path(str(e.value).split("it was saved to ")[1].split(":")[0])
    rec = json.loads(rescued.read_text())
    assert rec["status"] == "done" and rec["metrics"]["val_loss"] > 0 and rec["run_key"] == run_key(spec)
    rescued.unlink()


def test_too_few_validation_blocks_fail_before_training(tmp_path, cache_dir, capsys):
    # The embedded corpus: bounded from its file sizes in pre-flight, before anything is read.
    with pytest.raises(ConfigError, match="eval.sequences"):
        _spec(tmp_path, cache_dir, "job=train", "model.size=s", "eval.sequences=100000")
    # A local corpus: its size is known once tokenized, which is still before any training.
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"document {i}: " + "some words " * 30 for i in range(300)))
    spec = compose_spec(["job=train", "model.size=s", "data=files", f"data.files.train={corpus}", "data.seq_len=64",
                         "eval.sequences=100000", "trainer.tokens_per_param=1", "logger=none", f"out_dir={tmp_path}",
                         f"paths.cache={cache_dir}"])
    with pytest.raises(ConfigError, match="eval.sequences"):
        execute(spec)
    assert "train step" not in capsys.readouterr().out
    assert not checkpoint_dir(spec).exists() and not partial_dir(spec).exists()


def test_corrupt_resume_checkpoint_falls_back_to_a_fresh_start(tmp_path, cache_dir, capsys):
    spec = _spec(tmp_path, cache_dir, "job=train", "model.size=xs", "trainer.checkpoint_every_n_steps=10")
    part = partial_dir(spec)
    part.mkdir(parents=True)
    (part / "last.ckpt").write_bytes(b"PK\x03\x04 truncated by a full disk")
    rec = execute(spec)
    out = capsys.readouterr().out
    assert f"corrupt resume checkpoint set aside ({part / 'last.ckpt'}" in out
    assert rec["status"] == "done" and rec["resumed_from_step"] is None and rec["metrics"]["train_steps"] == 60


def test_corrupt_own_base_checkpoint_is_retrained(tmp_path, cache_dir):
    args = ["job=quantize", "model.size=xs", *TINY, "logger=none", f"out_dir={tmp_path}", f"paths.cache={cache_dir}"]
    r = run_here("ksir-run", *args, "quant.bits=4", cwd=tmp_path)  # ksir-run's process boundary: tests below
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not trained yet: running it first" in r.stdout  # a single job runs its dependency first, and says so
    weights = checkpoint_dir(compose_spec(args + ["quant.bits=4"])) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated
    r = run_here("ksir-run", *args, "quant.bits=3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "not trained yet: running it first" in r.stdout
    from ksir.integrity import verify_checkpoint

    assert verify_checkpoint(weights.parent) is None


def test_corrupt_hub_family_checkpoint_is_one_line(tmp_path, trained_tiny):
    copy = tmp_path / "pythia-copy"
    shutil.copytree(trained_tiny.checkpoint, copy)  # any HF folder: a local copy of a "hub" model
    w = copy / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    r = run_cli("ksir-run", "job=quantize", "model=pythia", f"model.checkpoint={copy}", "quant.bits=4",
                f"out_dir={tmp_path}", cwd=tmp_path, timeout=120)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "model.checkpoint" in lines[0] and "corrupt" in lines[0] and str(w) in lines[0]


def test_two_sweeps_at_once_in_one_out_dir_train_each_model_once_and_keep_their_summaries(tmp_path, cache_dir):
    """Two sweeps start at once in one out_dir, both with seed=0 first (the same job at the same moment), then
    seed=1 and seed=2: each model is trained by exactly one of them (the other skips seed 0), and each sweep
    keeps its own summary of its own jobs in the shared multirun folder (summary.txt is the last finished)."""
    args = ["job=train", "model.size=xs", *TINY, "trainer.max_steps=80", "trainer.min_steps=80", "logger=none",
            f"out_dir={tmp_path}", f"paths.cache={cache_dir}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    procs = [subprocess.Popen([str(BIN / "ksir-run"), "-m", *args, f"seed=0,{i}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in (1, 2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    trained = sum(o.count("[train] llama-xs: N=") for o in outs)
    assert trained == 3, outs  # three models, each trained by exactly one of the two sweeps
    assert sum(o.count("done already, skipped") for o in outs) == 1
    recs = [read_record(p) for p in records.iter_record_files(tmp_path / "results")]
    assert len(recs) == 3 and all(r["status"] == "done" and r["resumed_from_step"] is None for r in recs)
    key = {r["seed"]: r["run_key"] for r in recs}
    summaries = sorted((tmp_path / "multirun").glob("summary-*.txt"))
    texts = [s.read_text() for s in summaries]
    keys = {frozenset(w for w in t.split() if w.startswith("t-")) for t in texts}  # each summary: its own jobs
    assert len(summaries) == 2 and all("sweep: 2 jobs" in t for t in texts)
    assert keys == {frozenset({key[0], key[1]}), frozenset({key[0], key[2]})}
    assert (tmp_path / "multirun" / "summary.txt").read_text() in texts


def test_ctrl_c_ends_a_sweep_with_its_table_and_exit_130(tmp_path, cache_dir):
    job = ["job=train", "model.size=xs", *TINY, "trainer.min_steps=200", "trainer.max_steps=200", "logger=none",
           f"out_dir={tmp_path}", f"paths.cache={cache_dir}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    first = execute(compose_spec([*job, "seed=0"]))  # in this process: the sweep's process is the one under test
    assert first["status"] == "done"  # seed=0 is done before the sweep: its table must show it as skipped
    # A terminal's Ctrl-C: SIGINT at its default disposition (a shell's background job, as CI may be, would
    # otherwise hand the child an ignored SIGINT, and Python keeps an inherited "ignore").
    proc = subprocess.Popen([str(BIN / "ksir-run"), "-m", *job, "seed=0,1,2"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    for line in proc.stdout:  # once the second job trains, press Ctrl-C (SIGINT to the process group)
        lines.append(line)
        if "train step" in line:
            os.killpg(proc.pid, signal.SIGINT)
            break
    out = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=120) == 130, out[-3000:]
    assert "interrupted: the rest did not run" in out and " skipped " in out, out[-3000:]
    assert "1 jobs, 0 done, 1 skipped" in out, out[-3000:]  # the table so far: seed=0 (seed=1 was cut short)
    assert len(records.iter_record_files(tmp_path / "results")) == 1, "no record for the interrupted job"


def test_unreachable_wandb_costs_one_timeout_per_sweep(tmp_path, trained_tiny, cache_dir):
    """An online W&B whose server does not answer: the sweep goes offline after the first failure."""
    env_over = {"WANDB_MODE": "", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    t0 = time.time()
    env = {**os.environ, **env_over, "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([str(BIN / "ksir-run"), "-m", "job=quantize", f"model.checkpoint={trained_tiny.checkpoint}",
                        "quant.bits=2,3,4", *TINY, "logger.mode=online", f"out_dir={tmp_path}",
                        f"paths.cache={cache_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    wall = time.time() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / ".wandb-unreachable").exists() and r.stdout.count("W&B server unreachable") == 1
    recs = [read_record(p) for p in records.iter_record_files(tmp_path / "results")]
    assert len(recs) == 3 and all(x["wall_time_s"] < 10 for x in recs)  # logging stalls are not compute
    assert wall < 90, wall
