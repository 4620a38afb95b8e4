"""`launcher=slurm` against a real scheduler: a single-node SLURM cluster on this machine
(`bash scripts/slurm-local.sh start`, as root; `make slurm-test` starts it and runs these tests).

Checked: a sweep whose quantize jobs need base models runs the train jobs as a first array and the
quantize jobs as a second one submitted after it (no job trains inside another, no GPU would wait);
every record is written; a job preempted mid-training (SIGUSR2, as SLURM signals before a time limit or
a preemption) is requeued by submitit and resumes from its last checkpoint."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from ksir import records
from ksir.config import compose_spec
from ksir.identity import partial_dir

from .helpers import BIN, TINY, run_cli

pytestmark = pytest.mark.slurm

SLURM = ["launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.gpus_per_node=0",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=4", "trainer=cpu"]


def _cluster_idle() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture(autouse=True)
def _need_cluster():
    if not _cluster_idle():
        pytest.skip("no SLURM cluster here: `make slurm-test` starts a single-node one (root, Debian)")


def _job_ids(sweep_dir: Path) -> list[int]:
    """SLURM job ids of the sweep's submissions (submitit folders: <id> or <id>_<task>), in order."""
    ids = {int(m.group(1)) for p in (sweep_dir / ".submitit").iterdir() if (m := re.match(r"(\d+)", p.name))}
    return sorted(ids)


def test_sweep_runs_base_models_as_a_first_array(tmp_path, cache_dir):
    out = tmp_path / "out"
    r = run_cli("ksir-run", "-m", *SLURM, "job=quantize", "model.size=xs,s", "quant.bits=2,16", *TINY, "logger=none",
                f"out_dir={out}", f"paths.cache={cache_dir}", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "4 jobs validated" in r.stdout and "2 train job(s) they need run first" in r.stdout
    assert "6 jobs, 6 done, 0 skipped, 0 failed" in r.stdout
    recs = [records.read_record(p) for p in records.iter_record_files(out / "results")]
    train = [x for x in recs if x["job"] == "train"]
    quant = [x for x in recs if x["job"] == "quantize"]
    assert len(train) == 2 and len(quant) == 4 and all(x["status"] == "done" for x in recs)
    assert max(x["created"] for x in train) <= min(x["started"] for x in quant)  # order
    arrays = _job_ids(out / "multirun")
    assert len(arrays) == 2 and arrays[0] < arrays[1], arrays  # train array first, quantize array after it
    for _ in range(30):  # the scheduler accounts a task's end a moment after its result reached the launcher
        acct = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(map(str, arrays))],
                              capture_output=True, text=True, timeout=30).stdout.split()
        if acct and all(line.endswith("|COMPLETED") for line in acct):
            break
        time.sleep(1)
    assert len(acct) == 6 and all(line.endswith("|COMPLETED") for line in acct), acct


def test_preempted_train_job_is_requeued_and_resumes(tmp_path, cache_dir):
    out = tmp_path / "out"
    args = ["job=train", "model.size=s", *TINY, "trainer.min_steps=600", "trainer.max_steps=600",
            "trainer.checkpoint_every_n_steps=20", "logger=none", f"out_dir={out}", f"paths.cache={cache_dir}"]
    last = partial_dir(compose_spec(args)) / "last.ckpt"
    proc = subprocess.Popen([str(BIN / "ksir-run"), "-m", *SLURM, *args], cwd=tmp_path,
                            env={**os.environ, "WANDB_MODE": "offline"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    assert last.exists(), "the job wrote a resume checkpoint"
    (job,) = _job_ids(out / "multirun")
    subprocess.run(["scancel", "--signal=USR2", str(job)], check=True, timeout=30)  # preemption notice
    output = proc.communicate(timeout=900)[0]
    assert proc.returncode == 0, output[-3000:]
    rec = records.read_record(next(iter(records.iter_record_files(out / "results"))))
    assert rec["status"] == "done" and rec["resumed_from_step"] >= 20 and rec["metrics"]["train_steps"] == 600
    show = subprocess.run(["scontrol", "show", "job", str(job)], capture_output=True, text=True, timeout=30).stdout
    assert "Restarts=1" in show, show
    log = "".join(p.read_text() for p in (out / "multirun" / ".submitit").rglob("*_log.out"))
    assert "Requeued job" in log and "resuming from" in log
