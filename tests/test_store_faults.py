"""What jobs share, and what fills up: one builder per model, unusable checkpoints set aside, records checked
(not trusted), full or unwritable storage in one line with nothing finished lost. Real processes and files; a
real full disk (a tiny tmpfs) where the test runs as root, else a patched write."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from ksir import records
from ksir.checkpoints import read_meta
from ksir.config import compose_spec
from ksir.identity import checkpoint_dir, partial_dir, run_key
from ksir.jobs import execute
from ksir.records import read_record, record_path

from .helpers import BIN, TINY, run_here


def _spec(out: Path, cache_dir: Path, *extra: str):
    return compose_spec([*TINY, "model.size=xs", "logger=none", f"out_dir={out}", f"paths.cache={cache_dir}", *extra])


@contextlib.contextmanager
def tiny_disk(path: Path, kib: int):
    """A real file system of `kib` KiB at `path` (tmpfs; root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(path)],
                                           capture_output=True).returncode != 0:
        yield None
        return
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(folder: Path, leave_kib: int = 0) -> None:
    """Fill a tmpfs to within `leave_kib` of full."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize - leave_kib * 1024
    if free > 0:
        (folder / "filler").write_bytes(b"\0" * free)


# ---- one builder per model ---------------------------------------------------------------------------------


def test_a_model_is_built_once_whichever_train_job_needs_it(tmp_path, cache_dir):
    """Two train jobs of one model (other evaluation settings: two run keys, one model key), one after the other:
    the second evaluates the first's model instead of retraining and overwriting it."""
    first = execute(_spec(tmp_path, cache_dir, "job=train", "eval.sequences=16"))
    folder = Path(first["checkpoint"])
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    second = execute(_spec(tmp_path, cache_dir, "job=train", "eval.sequences=8"))
    assert second["run_key"] != first["run_key"] and second["checkpoint"] == first["checkpoint"]
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp, "the model was rebuilt"
    assert second["built_by"] == first["run_key"] and read_meta(folder)["run_key"] == first["run_key"]
    assert second["metrics"]["train_steps"] == first["metrics"]["train_steps"]
    assert second["metrics"]["eval_tokens"] != first["metrics"]["eval_tokens"]  # its own evaluation


def test_two_live_jobs_of_one_model_never_share_a_checkpoint(tmp_path, cache_dir):
    """Two processes at once, same model, different evaluation settings: one trains, the other waits for the
    model's lock and evaluates the finished model (before: both trained, one resumed from the other's live
    last.ckpt and the last to finish overwrote the model the other's record pointed to)."""
    base = [*TINY, "job=train", "model.size=xs", "trainer.min_steps=80", "trainer.max_steps=80",
            "trainer.checkpoint_every_n_steps=20", "logger=none", f"out_dir={tmp_path}", f"paths.cache={cache_dir}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    procs = [subprocess.Popen([str(BIN / "ksir-run"), *base, f"eval.sequences={n}"], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for n in (8, 16)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("train step" in o for o in outs) == 1, outs  # trained by exactly one
    assert sum("exists (built by" in o for o in outs) == 1, outs
    recs = [read_record(p) for p in records.iter_record_files(tmp_path / "results")]
    assert len(recs) == 2 and all(r["status"] == "done" and r["resumed_from_step"] is None for r in recs)
    assert len({r["checkpoint"] for r in recs}) == 1


# ---- unusable checkpoints ----------------------------------------------------------------------------------


def test_a_resume_checkpoint_that_does_not_load_is_set_aside(tmp_path, cache_dir, capsys):
    """A complete zip that is no Lightning checkpoint of this model (before: every relaunch failed on it)."""
    spec = _spec(tmp_path, cache_dir, "job=train", "trainer.checkpoint_every_n_steps=10")
    part = partial_dir(spec)
    part.mkdir(parents=True)
    torch.save({"state_dict": {"model.other.weight": torch.zeros(3)}, "global_step": 10}, part / "last.ckpt")
    rec = execute(spec)
    out = capsys.readouterr().out
    assert f"corrupt resume checkpoint set aside ({part / 'last.ckpt'}: its weights do not fit this model" in out
    assert rec["status"] == "done" and rec["resumed_from_step"] is None and rec["metrics"]["train_steps"] == 60
    torch.save({"hello": 1}, part.parent / "x.ckpt")  # garbled in another way: no training state
    from ksir.train import checkpoint_problem

    assert "not a Lightning training checkpoint" in checkpoint_problem(part.parent / "x.ckpt")


def test_an_intact_base_model_that_does_not_load_is_set_aside_and_rebuilt(tmp_path, cache_dir, capsys):
    """Files whole, config wrong (before: the quantize job failed on every relaunch)."""
    from ksir.jobs import run_with_dependencies

    run_with_dependencies(_spec(tmp_path, cache_dir, "job=quantize", "quant.bits=4"))
    folder = checkpoint_dir(compose_spec([*TINY, "model.size=xs", "logger=none", f"out_dir={tmp_path}",
                                          f"paths.cache={cache_dir}", "job=train"]))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] *= 2
    (folder / "config.json").write_text(json.dumps(cfg))
    capsys.readouterr()
    rec = execute(_spec(tmp_path, cache_dir, "job=quantize", "quant.bits=3"))
    out = capsys.readouterr().out
    assert "unusable checkpoint set aside" in out and str(folder) in out and "rebuilding llama-xs train" in out
    assert rec["status"] == "done"
    assert json.loads((folder / "config.json").read_text())["hidden_size"] == cfg["hidden_size"] // 2
    assert len(list(folder.parent.glob(f"{folder.name}.unusable-*"))) == 1  # kept, not deleted


# ---- records checked, not trusted --------------------------------------------------------------------------


def test_a_record_from_a_newer_ksir_is_never_rerun_over(tmp_path, trained_tiny, capsys):
    spec = _spec(tmp_path, trained_tiny.cfg.paths.cache_dir, "job=quantize",
                 f"model.checkpoint={trained_tiny.checkpoint}", "quant.bits=5")
    path = record_path(spec.paths.results, run_key(spec))
    path.parent.mkdir(parents=True)
    newer = {"schema": 99, "run_key": run_key(spec), "status": "done", "shape": "of the future"}
    path.write_text(json.dumps(newer))
    for force in (False, True):
        rec = execute(spec.replace(force=force))
        assert rec["skipped"] and rec.get("newer")
        assert "written by a newer ksir (schema 99" in capsys.readouterr().out
    assert json.loads(path.read_text()) == newer
    from analysis.collect import load_records

    got = load_records([spec.paths.results])
    assert got.runs.empty and "written by a newer ksir" in got.skipped[0]["reason"]


def test_a_record_under_another_jobs_name_is_set_aside_and_the_job_runs(tmp_path, trained_tiny, capsys):
    mk = lambda bits: _spec(tmp_path, trained_tiny.cfg.paths.cache_dir, "job=quantize",  # noqa: E731
                            f"model.checkpoint={trained_tiny.checkpoint}", f"quant.bits={bits}")
    done = execute(mk(4))
    other = mk(3)
    path = record_path(other.paths.results, run_key(other))
    planted = {**done}  # a copy of the 4-bit record, renamed as the 3-bit job's
    path.write_text(json.dumps(planted))
    rec = execute(other)
    out = capsys.readouterr().out
    assert "set aside (it is the record of" in out and not rec.get("skipped") and rec["bits"] == 3.0
    assert read_record(path)["run_key"] == run_key(other)
    assert len(list((tmp_path / "results" / ".set-aside").iterdir())) == 1
    # A record whose key is its name but whose identity is another job's: set aside too.
    forged = {**read_record(path), "identity": done["identity"]}
    path.write_text(json.dumps(forged))
    execute(other)
    assert "its stored identity hashes to another key" in capsys.readouterr().out


def test_stale_temp_files_of_killed_writers_are_removed(tmp_path, trained_tiny):
    spec = _spec(tmp_path, trained_tiny.cfg.paths.cache_dir, "job=quantize",
                 f"model.checkpoint={trained_tiny.checkpoint}", "quant.bits=16")
    results = Path(spec.paths.results)
    results.mkdir(parents=True)
    stale, fresh = results / ".q-abc.json.x1.tmp", results / ".q-def.json.x2.tmp"
    stale.write_text("{half")
    fresh.write_text("{half")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    execute(spec)
    assert not stale.exists() and fresh.exists()  # a live writer's file is left alone


def test_record_modes_follow_the_umask(tmp_path):
    prev = os.umask(0o077)
    try:
        records.write_record(tmp_path, {"run_key": "q-1", "status": "done"})
    finally:
        os.umask(prev)
    assert (tmp_path / "q-1.json").stat().st_mode & 0o777 == 0o600
    prev = os.umask(0o002)
    try:
        records.write_record(tmp_path, {"run_key": "q-2", "status": "done"})
    finally:
        os.umask(prev)
    assert (tmp_path / "q-2.json").stat().st_mode & 0o777 == 0o664


# ---- full or unwritable storage ----------------------------------------------------------------------------


def test_full_results_folder_is_one_line_before_any_compute(tmp_path, trained_tiny):
    with tiny_disk(tmp_path / "disk", 64) as disk:
        if disk is None:
            pytest.skip("needs root to mount a tmpfs (the rescue test covers the patched write)")
        fill(disk)
        r = subprocess.run([str(BIN / "ksir-run"), "job=quantize", f"model.checkpoint={trained_tiny.checkpoint}",
                            "quant.bits=4", *TINY, "logger=none", f"out_dir={tmp_path / 'out'}",
                            f"paths.results={disk / 'results'}"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=300, env={**os.environ, "WANDB_MODE": "offline"})
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert r.returncode != 0 and len(lines) == 1, r.stderr[-3000:]
        assert str(disk / "results") in lines[0] and "no space left on the device" in lines[0]
        assert "quantizing" not in r.stdout and "val_loss" not in r.stdout


def test_a_finished_record_the_folder_cannot_take_is_rescued_privately(tmp_path, trained_tiny, capsys):
    """The results folder fills between the job's start and its end: the record goes into a folder made for
    it (mode 0700, a fresh name) and the one line names it. Real tmpfs as root, else a patched write."""
    spec_of = lambda results: _spec(tmp_path, trained_tiny.cfg.paths.cache_dir, "job=quantize",  # noqa: E731
                                    f"model.checkpoint={trained_tiny.checkpoint}", "quant.bits=6",
                                    f"paths.results={results}")
    with tiny_disk(tmp_path / "disk", 64) as disk:
        if disk is None:
            results = tmp_path / "results"
            spec = spec_of(results)
            real = records.write_atomic

            def full(path, text, mode=None):
                if path.parent == results:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return real(path, text, mode)

            with pytest.MonkeyPatch.context() as m:
                m.setattr(records, "write_atomic", full)
                with pytest.raises(records.StorageError) as e:
                    execute(spec)
        else:
            spec = spec_of(disk / "results")
            import ksir.run

            real_eval = ksir.run.evaluate_all

            def fills_up(*a, **k):  # the disk fills while the job computes (after its lock was taken)
                out = real_eval(*a, **k)
                fill(disk)
                return out

            with pytest.MonkeyPatch.context() as m:
                m.setattr(ksir.run, "evaluate_all", fills_up)
                with pytest.raises(records.StorageError) as e:
                    execute(spec)
    msg = str(e.value)
    assert "\n" not in msg and "no space left on the device" in msg and "it was saved to " in msg
    rescued = Path(msg.split("it was saved to ")[1].split(": move it")[0])
    assert rescued.parent.stat().st_mode & 0o777 == 0o700 and rescued.parent.name.startswith("ksir-unsaved-")
    rec = json.loads(rescued.read_text())
    assert rec["status"] == "done" and rec["run_key"] == run_key(spec) and rec["metrics"]["val_loss"] > 0


def test_when_even_the_rescue_fails_the_record_goes_to_stderr(tmp_path, trained_tiny, capsys, monkeypatch):
    spec = _spec(tmp_path, trained_tiny.cfg.paths.cache_dir, "job=quantize",
                 f"model.checkpoint={trained_tiny.checkpoint}", "quant.bits=16")

    def nowhere(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(records, "write_atomic", nowhere)
    monkeypatch.setattr(records.tempfile, "mkdtemp", nowhere)
    with pytest.raises(records.StorageError, match="the record is printed above"):
        execute(spec)
    printed = json.loads(capsys.readouterr().err)
    assert printed["run_key"] == run_key(spec) and printed["status"] == "done"


def test_a_checkpoint_folder_too_small_for_the_model_is_one_line_before_training(tmp_path, cache_dir):
    with tiny_disk(tmp_path / "disk", 512) as disk:
        if disk is None:
            pytest.skip("needs root to mount a tmpfs")
        r = run_here("ksir-run", "job=train", "model.size=xs", *TINY, "logger=none",  # the CLI, in this process
                     "trainer.checkpoint_every_n_steps=10", f"out_dir={tmp_path / 'out'}",
                     f"paths.checkpoints={disk}", f"paths.cache={cache_dir}", cwd=tmp_path)
        lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        assert r.returncode == 1 and len(lines) == 1, r.stderr[-3000:]
        assert lines[0].startswith(f"{disk}: needs about") and "MB free" in lines[0]
        assert "train step" not in r.stdout
