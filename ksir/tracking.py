"""Weights & Biases for one job: offline unless the user is logged in; never fatal, never slow.

W&B is a mirror of the local record (`ksir.records.to_wandb_summary`), so a W&B failure is logged and the
job goes on. An unreachable server costs one timeout (`INIT_TIMEOUT_S`) per sweep: the first failure leaves
a marker in the W&B folder, and every later job of any process that shares the folder goes offline at
once. Every job ends with `wandb.finish()`: Hydra's basic launcher runs all jobs of a sweep in one process
and a leftover `wandb.run` would swallow the next job's logs. Each run keeps W&B's `requirements.txt` (the
installed packages), read once per process rather than by W&B for every run (0.13 s a job here).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import netrc
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
INIT_TIMEOUT_S = 10.0
UNREACHABLE_MARKER = ".wandb-unreachable"  # in the W&B folder; honoured for MARKER_TTL_S
MARKER_TTL_S = 3600.0


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: str) -> str:
    if os.environ.get("WANDB_MODE") in ("offline", "online", "disabled") and mode == "auto":
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if has_credentials() else "offline"
    return mode


def _marker(out_dir: str | Path) -> Path:
    return Path(out_dir) / UNREACHABLE_MARKER


def server_unreachable(out_dir: str | Path) -> bool:
    m = _marker(out_dir)
    return m.exists() and time.time() - m.stat().st_mtime < MARKER_TTL_S


def _mark_unreachable(out_dir: str | Path, why: object) -> None:
    try:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        _marker(out_dir).write_text(f"{why}\n")
    except OSError:
        pass
    print(f"W&B server unreachable ({str(why)[:160]}): logging offline for the next hour "
          f"(delete {_marker(out_dir)} to retry)", flush=True)


def start_run(logger: Any, run_key: str, job: str, group: str, config: dict[str, Any], out_dir: str | Path) -> Any:
    """A wandb Run, or None when disabled or when W&B fails to start."""
    if not logger.enabled or resolve_mode(logger.mode) == "disabled":
        return None
    mode = resolve_mode(logger.mode)
    if mode == "online" and server_unreachable(out_dir):
        mode = "offline"
    try:
        import wandb

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        settings = {"silent": True, "console": "off", "init_timeout": INIT_TIMEOUT_S}
        own_requirements = "x_save_requirements" in getattr(wandb.Settings, "model_fields", {})
        if own_requirements:
            settings["x_save_requirements"] = False  # saved below, from the list read once per process
        # id=run_key + resume="allow": a relaunched job continues the same W&B run.
        run = wandb.init(project=logger.project, entity=logger.entity, group=logger.group or group,
                         job_type=job, id=run_key, name=run_key, resume="allow", config=config,
                         dir=str(out_dir), mode=mode, reinit="finish_previous", settings=wandb.Settings(**settings))
        if own_requirements:
            _save_requirements(run)
        if mode == "offline":
            _OFFLINE.append(Path(run.dir).parent)
        return run
    except Exception as e:  # noqa: BLE001 - W&B must never take the job down
        if mode == "online":
            _mark_unreachable(out_dir, e)
            return start_run(logger, run_key, job, group, config, out_dir)  # now offline
        log.warning("W&B unavailable, continuing with the local record only: %s", e)
        return None


_OFFLINE: list[Path] = []  # the offline runs this process started, for the job's closing lines


def offline_runs() -> list[Path]:
    """Folders of the W&B runs this process logged offline (each uploadable with `wandb sync FOLDER`)."""
    return list(_OFFLINE)


def offline_note(folders: list[Path]) -> str:
    """The closing line of a job logged offline: where its W&B run is and the command that uploads it."""
    if len(folders) == 1:
        return f"W&B: logged offline to {folders[0]}; upload with: wandb sync {folders[0]}"
    parent = folders[0].parent
    return f"W&B: {len(folders)} runs logged offline in {parent}; upload with: wandb sync " + \
        " ".join(str(f) for f in folders)


@functools.lru_cache(maxsize=1)
def installed_packages() -> str:
    """`name==version` of every installed distribution, sorted (what W&B's requirements.txt holds)."""
    from importlib.metadata import distributions

    lines = set()
    for d in distributions():
        try:
            lines.add(f"{d.metadata['Name']}=={d.version}")
        except (KeyError, TypeError, UnicodeDecodeError):  # a distribution with broken metadata: left out
            continue
    return "\n".join(sorted(lines, key=str.lower)) + "\n"


def _save_requirements(run: Any) -> None:
    try:
        path = Path(run.dir) / "requirements.txt"
        path.write_text(installed_packages())
        run.save(str(path), base_path=run.dir, policy="now")
    except Exception as e:  # noqa: BLE001 - provenance, never worth the job
        log.warning("W&B: could not save requirements.txt: %s", e)


class JobRun:
    """A job's W&B run (or none: disabled, or W&B failed to start), for the job's body: Lightning's loggers,
    and the summary the lifecycle (`job_run`) writes when the body has finished."""

    def __init__(self, run: Any, key: str = ""):
        self.run = run
        self.key = key  # the job's run key (its W&B run id)
        self.summary: dict[str, Any] = {}

    def loggers(self) -> list[Any]:
        if self.run is None:
            return []
        from pytorch_lightning.loggers import WandbLogger

        return [WandbLogger(experiment=self.run)]


@contextlib.contextmanager
def job_run(spec: Any, run_key: str) -> Iterator[JobRun]:
    """The one W&B lifecycle of every job (`ksir.jobs.execute`): started before the body, finished after it
    with the body's summary, or with exit code 1 when the body raised. The run's config is the normalised job
    (`JobSpec.as_dict`), its id the run key (a relaunched job continues its run)."""
    handle = JobRun(start_run(spec.logger, run_key, spec.job, f"{spec.model.family}/{spec.job}", spec.as_dict(),
                              spec.paths.wandb), run_key)
    try:
        yield handle
    except BaseException:
        finish_run(handle.run, {}, exit_code=1)
        raise
    finish_run(handle.run, handle.summary)


def finish_run(run: Any, summary: dict[str, Any], exit_code: int = 0) -> None:
    if run is None:
        return
    try:
        run.summary.update(summary)
        run.finish(exit_code=exit_code)
    except Exception as e:  # noqa: BLE001
        log.warning("W&B failed while finishing the run: %s", e)


def finished_remote_run(logger: Any, run_key: str, api: Any = None, out_dir: str | Path | None = None) -> dict[str, Any] | None:
    """The record of a finished W&B run with this identity, or None (offline, absent, or unreachable)."""
    from ksir.records import from_wandb_summary

    if not logger.enabled or (api is None and resolve_mode(logger.mode) != "online"):
        return None
    if api is None and out_dir is not None and server_unreachable(out_dir):
        return None
    try:
        if api is None:
            import wandb

            api = wandb.Api(timeout=int(INIT_TIMEOUT_S))
        entity = logger.entity or api.default_entity
        run = api.run(f"{entity}/{logger.project}/{run_key}")
        if getattr(run, "state", None) != "finished":
            return None
        return from_wandb_summary(run_key, dict(run.summary), dict(run.config))
    except Exception as e:  # noqa: BLE001 - a missing or unreachable run just means "run it"
        if out_dir is not None and "404" not in str(e) and "not found" not in str(e).lower():
            _mark_unreachable(out_dir, e)
        log.info("no finished W&B run %s (%s)", run_key, e)
        return None
