"""Weights & Biases for one job: offline unless the user is logged in; never fatal.

W&B is a mirror of the local record, so a W&B failure is logged and the job goes on. Every
job ends with `wandb.finish()`: Hydra's basic launcher runs all jobs of a sweep in one process
and a leftover `wandb.run` would swallow the next job's logs.
"""

from __future__ import annotations

import logging
import netrc
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


def start_run(logger_cfg: Any, run_key: str, job: str, group: str, config: dict[str, Any], out_dir: str | Path) -> Any:
    """A wandb Run, or None when disabled or when W&B fails to start."""
    if not logger_cfg.enabled or resolve_mode(logger_cfg.mode) == "disabled":
        return None
    try:
        import wandb

        Path(out_dir).mkdir(parents=True, exist_ok=True)
        # id=run_key + resume="allow": a relaunched job continues the same W&B run.
        return wandb.init(project=logger_cfg.project, entity=logger_cfg.entity, group=logger_cfg.group or group,
                          job_type=job, id=run_key, name=run_key, resume="allow", config=config,
                          dir=str(out_dir), mode=resolve_mode(logger_cfg.mode), reinit="finish_previous",
                          settings=wandb.Settings(silent=True, console="off"))
    except Exception as e:  # noqa: BLE001 - W&B must never take the job down
        log.warning("W&B unavailable, continuing with the local record only: %s", e)
        return None


def finish_run(run: Any, summary: dict[str, Any], exit_code: int = 0) -> None:
    if run is None:
        return
    try:
        run.summary.update(summary)
        run.finish(exit_code=exit_code)
    except Exception as e:  # noqa: BLE001
        log.warning("W&B failed while finishing the run: %s", e)
