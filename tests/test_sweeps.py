"""Sweeps that survive faults: identity, skip, failure isolation, resume, launchers."""

from __future__ import annotations

import pytest

from ksir.identity import run_key
from ksir.jobs import execute
from ksir.records import iter_record_files, read_record, record_path

from .helpers import TINY, run_cli, run_here


def test_ptq_jobs_share_one_base_model_and_restore_it(trained_tiny, tiny_cfg):
    base = execute(tiny_cfg("job=quantize", "model.size=xs", "quant.bits=16"))
    q2 = execute(tiny_cfg("job=quantize", "model.size=xs", "quant.bits=2"))
    again = execute(tiny_cfg("job=quantize", "model.size=xs", "quant.bits=16", "force=true"))
    # The 16-bit baseline equals the trained model's own evaluation, before and after a 2-bit job
    # quantized the cached model in place: the full-precision weights were restored exactly.
    assert base["metrics"]["val_loss"] == again["metrics"]["val_loss"] == trained_tiny.record["metrics"]["val_loss"]
    assert q2["metrics"]["val_loss"] > base["metrics"]["val_loss"]


def test_wandb_failure_does_not_fail_the_job(tiny_cfg, trained_tiny, monkeypatch):
    import wandb

    def broken(*a, **k):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken)
    rec = execute(tiny_cfg("job=quantize", "model.size=xs", "quant.bits=8", "seed=0", "eval.sequences=8"))
    assert rec["status"] == "done"
    assert read_record(record_path(rec["config"]["paths"]["results"], rec["run_key"]))["status"] == "done"


def test_corrupt_record_is_reported_and_the_job_reruns(tiny_cfg, trained_tiny, caplog):
    cfg = tiny_cfg("job=quantize", "model.size=xs", "quant.bits=6", "eval.sequences=8")
    path = record_path(cfg.paths.results, run_key(cfg))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"run_key": "trunc')  # e.g. a copy cut short by a full disk
    rec = execute(cfg)
    assert rec["status"] == "done" and read_record(path)["status"] == "done"
    assert "unreadable result record" in caplog.text


def test_failed_dependency_stops_only_the_jobs_that_need_it(tmp_path, cache_dir):
    """Base models train first, once each, as their own jobs; lr=1e9 makes one of them fail for real
    (non-finite loss): the quantize jobs that need it are not launched, the others run, the sweep goes on."""
    r = run_here("ksir-run", "-m", "job=quantize", "model.size=xs", "trainer.lr=3e-3,1e9", "quant.bits=2,16", *TINY,
                f"out_dir={tmp_path}", f"paths.cache={cache_dir}", "logger=none", cwd=tmp_path)
    assert r.returncode != 0
    assert "4 jobs validated" in r.stdout and "2 train job(s) they need run first" in r.stdout
    assert "6 jobs, 3 done, 0 skipped, 3 failed" in r.stdout, r.stdout[-3000:]
    assert r.stdout.count("not run: the train job of its base model") == 2
    assert "[sweep 1/6]" in r.stdout and "[sweep 4/6]" in r.stdout and "[sweep 5/6]" not in r.stdout
    recs = [read_record(p) for p in iter_record_files(tmp_path / "results")]
    train = {x["config"]["trainer"]["lr"]: x for x in recs if x["job"] == "train"}
    quant = [x for x in recs if x["job"] == "quantize"]
    assert train[3e-3]["status"] == "done" and train[1e9]["status"] == "failed"
    assert "FloatingPointError" in train[1e9]["error"] and "Traceback" in train[1e9]["error"]
    assert len(quant) == 2 and {x["config"]["trainer"]["lr"] for x in quant} == {3e-3}
    assert all(x["status"] == "done" and x["started"] >= train[3e-3]["created"] for x in quant)
    assert "1 failed" not in r.stderr and "3 of 6 jobs failed" in r.stderr


def test_dry_run_plans_with_the_keys_the_jobs_will_have(tmp_path):
    """The sweeper's fast pre-flight composition (Hydra once per config-group choice, values applied with
    OmegaConf) gives every job exactly the key that full Hydra composition gives it."""
    from ksir.config import compose_spec

    args = ["-m", "job=quantize", "quant=rtn,gptq", "quant.bits=3,16", "model.size=xs,s", "eval.sequences=16",
            "logger=none", f"out_dir={tmp_path}"]
    r = run_here("ksir-run", *args, "dry_run=true", cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    # 8 jobs, of which the two 16-bit jobs per size are one (rtn == gptq at 16 bits), + the 2 base models they need
    assert "[sweep] 2 of 8 jobs are the same job as another (collapsed)" in r.stdout
    assert "dry run: 8 jobs planned, none run" in r.stdout
    planned = [ln.split(None, 1) for ln in r.stdout.splitlines() if ln.startswith("  ") and ln.strip()[1] == "-"]
    assert len(planned) == 8
    for key, rest in planned:
        overrides = rest.split("  ")[-1].split()
        assert run_key(compose_spec([*overrides, "dry_run=true"])) == key, overrides
    assert len({k for k, _ in planned}) == 8  # every planned job is a job of its own
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()
    # Hydra's own overrides (a launcher's options) apply to every composition the pre-flight makes.
    r = run_here("ksir-run", *args, "launcher=joblib", "hydra.launcher.n_jobs=1", "dry_run=true", cwd=tmp_path,
                timeout=120)
    assert r.returncode == 0 and "dry run: 8 jobs planned" in r.stdout, r.stderr[-2000:]


@pytest.mark.parametrize("launcher", ["joblib", "submitit_local"])
def test_parallel_launchers_run_the_dependency_wave_and_share_one_results_folder(tmp_path, cache_dir, launcher):
    """Through a parallel launcher too, the base model trains once, as its own job, before the jobs that
    need it; the parallel quantize jobs share it and the results folder."""
    r = run_cli("ksir-run", "-m", f"launcher={launcher}", "job=quantize", "model.size=xs", "quant.bits=3,4",
                *TINY, "logger=none", f"out_dir={tmp_path}", f"paths.cache={cache_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "1 train job(s) they need run first" in r.stdout and "3 jobs, 3 done" in r.stdout
    recs = [read_record(p) for p in iter_record_files(tmp_path / "results")]
    (train,) = [x for x in recs if x["job"] == "train"]
    quant = [x for x in recs if x["job"] == "quantize"]
    assert sorted(x["bits"] for x in quant) == [3, 4] and all(x["status"] == "done" for x in recs)
    assert all(x["started"] >= train["created"] and x["checkpoint"] == train["checkpoint"] for x in quant)
    assert not list((tmp_path / "results").glob(".*.tmp")), "no temp files left"


def test_slurm_launcher_config_composes_and_submitit_accepts_it(tmp_path):
    import submitit
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from ksir.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["launcher=slurm", "hydra.launcher.partition=gpu"], return_hydra_config=True)
    lc = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert lc["_target_"].endswith("SlurmLauncher") and lc["partition"] == "gpu" and lc["gpus_per_node"] == 1
    # Map every key exactly as hydra-submitit-launcher does (shared keys plain, the rest slurm_*,
    # max_num_timeout to the executor's constructor); submitit's AutoExecutor checks each name
    # against its executors' real parameters, and its local executor then runs a job with them.
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    base = set(OmegaConf.structured(BaseQueueConf).keys())
    init = {"max_num_timeout": lc.pop("max_num_timeout")}
    for k in ("_target_", "submitit_folder", "name"):
        lc.pop(k)
    params = {k if k in base else f"slurm_{k}": v for k, v in lc.items()}
    assert {"slurm_partition", "slurm_array_parallelism", "gpus_per_node"} <= set(params)
    ex = submitit.AutoExecutor(folder=tmp_path / "submitit", cluster="local", **init)
    ex.update_parameters(**params)
    job = ex.submit(sum, [1, 2, 3])
    assert job.result() == 6
    with pytest.raises(NameError, match="Unknown argument"):
        ex.update_parameters(slurm_no_such_option=1)


def test_relaunch_skips_a_job_finished_on_wandb_when_online(tiny_cfg, trained_tiny, monkeypatch, tmp_path):
    """The local store was lost, but W&B (online) has the finished run: restore, don't rerun."""
    import wandb

    from ksir import tracking

    cfg = tiny_cfg("job=quantize", "model.size=xs", "quant.bits=5", "eval.sequences=8", f"paths.results={tmp_path}")
    key = run_key(cfg)
    asked = []

    class FakeRun:
        state = "finished"
        config = {"quant": {"bits": 5}}
        summary = {"job": "quantize", "family": "llama", "size": "xs", "bits": 5.0, "total_bits": 1.0e6,
                   "n_params": 86336, "val_loss": 3.21, "val_acc": 0.3, "_runtime": 4}

    class FakeApi:
        default_entity = "me"

        def __init__(self, *a, **k):
            pass

        def run(self, path):
            asked.append(path)
            return FakeRun()

    monkeypatch.setattr(tracking, "resolve_mode", lambda mode: "online")
    monkeypatch.setattr(wandb, "Api", FakeApi)
    rec = execute(cfg)
    assert asked == [f"me/ksir/{key}"] and rec["skipped"]
    stored = read_record(record_path(tmp_path, key))
    assert stored["metrics"] == {"val_loss": 3.21, "val_acc": 0.3} and stored["total_bits"] == 1.0e6
    assert stored["source"] == "wandb" and stored["status"] == "done"
    # An unfinished remote run is no reason to skip.
    FakeRun.state = "crashed"
    assert tracking.finished_remote_run(cfg.logger, key, api=FakeApi()) is None


def test_in_process_jobs_get_the_config_hydra_composes(tmp_path, monkeypatch):
    """In-process jobs' configs come from the sweeper's composition once per distinct base; every job of a sweep
    that mixes config-group choices, plain values, a value that interpolations read (out_dir) and a `hydra.*`
    override gets exactly what Hydra's own `load_sweep_config` composes: the hydra node (overrides,
    override_dirname, sweep subdir), the struct flags and the resolved values."""
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    Plugins.instance()  # Hydra's plugin scan executes the plugin modules again: patch what it loaded
    import hydra._internal.core_plugins.basic_launcher as basic

    import hydra_plugins.ksir_sweeper as ks
    from ksir.spec import plain_config

    pairs, real = [], ks._JobConfigs.load_sweep_config

    def both(self, master, overrides):
        fast = self.sweeper.job_config(master, overrides)
        pairs.append((list(overrides), fast, self.loader.load_sweep_config(master, list(overrides))))
        return real(self, master, overrides)

    def no_job(hydra_context, task_function, config, job_dir_key, job_subdir_key):
        ret = JobReturn(overrides=list(config.hydra.overrides.task), cfg=config, hydra_cfg=None)
        ret.status, ret.return_value = JobStatus.COMPLETED, {"status": "done", "run_key": "x"}
        return ret

    monkeypatch.setattr(ks._JobConfigs, "load_sweep_config", both)
    monkeypatch.setattr(basic, "run_job", no_job)
    r = run_here("ksir-run", "-m", "job=quantize", "model.size=xs,s", "quant=rtn,gptq", "quant.bits=2,4",
                 "seed=0,1", "logger=none", f"out_dir={tmp_path}",
                 "hydra.job.config.override_dirname.item_sep=+", *TINY[:4], cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert len(pairs) == 4 + 16  # the train wave (2 sizes x 2 seeds), then the 16 quantize jobs
    assert sum(fast is not None for _, fast, _ in pairs) >= 16  # composed fast, not handed back to Hydra
    for overrides, fast, hydra in pairs:
        if fast is None:
            continue
        assert OmegaConf.to_container(fast, resolve=False) == OmegaConf.to_container(hydra, resolve=False), overrides
        assert plain_config(fast) == plain_config(hydra), overrides
        assert OmegaConf.is_struct(fast) and OmegaConf.is_struct(hydra) and not OmegaConf.is_readonly(fast.hydra)
        assert fast.hydra.job.override_dirname == hydra.hydra.job.override_dirname != ""
