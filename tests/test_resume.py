"""Exact resume: a train job interrupted after a checkpoint and relaunched ends with the weights and loss of an
uninterrupted run (the data order and random state are part of the checkpoint; no batch is seen twice)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from ksir.config import compose_spec
from ksir.identity import checkpoint_dir, partial_dir, run_key
from ksir.jobs import execute
from ksir.records import read_record, record_path

from .helpers import BIN, TINY

STEPS = ["trainer.min_steps=50", "trainer.max_steps=50", "trainer.checkpoint_every_n_steps=10"]


def _spec(out: Path, cache_dir: Path, *extra: str):
    return compose_spec([*TINY, *STEPS, "job=train", "model.size=xs", "logger=none", f"out_dir={out}",
                         f"paths.cache={cache_dir}", *extra])


def _weights(spec) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    folder = checkpoint_dir(spec)
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


class Interrupt(Exception):
    pass


def _interrupt_at(monkeypatch, step: int) -> None:
    """Fail the job right after `step` optimizer steps (between two checkpoints), as a kill would."""
    import ksir.train

    real = ksir.train.ProgressPrinter.on_train_batch_end

    def cut(self, trainer, *args):
        real(self, trainer, *args)
        if trainer.global_step == step:
            raise Interrupt(f"interrupted at step {step}")

    monkeypatch.setattr(ksir.train.ProgressPrinter, "on_train_batch_end", cut)


@pytest.mark.parametrize("variant", [
    [],                                                                          # plain training (a PTQ base)
    ["model.parametrization=mup"],
    ["model.parametrization=umup", "trainer.lr=1.0"],
    ["qat=lsq", "qat.bits=3", "qat.init_from=null"],                             # QAT from scratch
], ids=["sp", "mup", "umup", "qat"])
def test_interrupted_train_job_resumes_exactly(tmp_path, cache_dir, monkeypatch, variant):
    whole = _spec(tmp_path / "whole", cache_dir, *variant)
    ref = execute(whole)
    cut = _spec(tmp_path / "cut", cache_dir, *variant)
    with monkeypatch.context() as m:
        _interrupt_at(m, 27)  # 7 steps past the step-20 checkpoint: they are redone, on the same batches
        with pytest.raises(Interrupt):
            execute(cut)
    assert (partial_dir(cut) / "last.ckpt").exists()
    rec = execute(cut)
    assert rec["resumed_from_step"] == 20
    assert rec["metrics"]["val_loss"] == pytest.approx(ref["metrics"]["val_loss"], rel=1e-6, abs=1e-7)
    a, b = _weights(whole), _weights(cut)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


def test_sigkilled_process_resumes_to_the_uninterrupted_weights(tmp_path, cache_dir):
    """A real process killed by SIGKILL after a checkpoint, relaunched by the CLI: same weights as a run that was
    never interrupted (before, the relaunch retrained the first batches and never saw the last: 0.0054 nats off),
    no record before it finishes, and its throughput counts the time trained before the kill. The uninterrupted
    run is a job in this process: only the killed one's process boundary is under test."""
    from ksir import records

    args = [*TINY, "trainer.min_steps=100", "trainer.max_steps=100", "trainer.checkpoint_every_n_steps=20", "job=train",
            "model.size=xs", "logger=none", f"paths.cache={cache_dir}"]
    env = {**os.environ, "WANDB_MODE": "offline"}
    whole = compose_spec([*args, f"out_dir={tmp_path / 'whole'}"])
    a = execute(whole)
    cut_args = [*args, f"out_dir={tmp_path / 'cut'}"]
    spec = compose_spec(cut_args)
    last = partial_dir(spec) / "last.ckpt"
    proc = subprocess.Popen([str(BIN / "ksir-run"), *cut_args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists():
            step = torch.load(last, map_location="cpu", weights_only=False)["global_step"]
            if step >= 40:
                break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    state = torch.load(last, map_location="cpu", weights_only=False)
    step_at_kill = state["global_step"]
    trained_before = next(v["elapsed_s"] for k, v in state["callbacks"].items() if "ProgressPrinter" in k)
    assert 40 <= step_at_kill < 100 and trained_before > 0
    assert not (tmp_path / "cut" / "results").exists() or not records.iter_record_files(tmp_path / "cut" / "results")
    r = subprocess.run([str(BIN / "ksir-run"), *cut_args], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from {last}" in r.stdout
    b = read_record(record_path(spec.paths.results, run_key(spec)))
    m = b["metrics"]
    assert b["status"] == "done" and m["train_steps"] == 100 and b["resumed_from_step"] >= step_at_kill
    assert m["train_time_s"] > trained_before  # the time before the kill counts
    assert m["train_tokens_per_s"] == pytest.approx(m["train_tokens"] / m["train_time_s"])
    assert not partial_dir(spec).exists(), "resume state is removed once the job is done"
    assert m["val_loss"] == pytest.approx(a["metrics"]["val_loss"], rel=1e-6)
    wa, wb = _weights(whole), _weights(spec)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)
