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


# Record fields mirrored into the W&B summary next to the metrics, so that a finished run can be
# turned back into a local record (idempotent relaunch when the local store was lost).
RECORD_SCALARS = ("job", "family", "size", "checkpoint", "n_params", "n_params_nonembedding", "n_quantized_params",
                  "method", "regime", "bits", "dtype", "blocksize", "granularity", "total_bits", "bits_per_param",
                  "train_tokens", "git_commit")


def summary_of(rec: dict[str, Any]) -> dict[str, Any]:
    return {**{k: rec[k] for k in RECORD_SCALARS if rec.get(k) is not None}, **rec.get("metrics", {})}


def finished_remote_run(logger_cfg: Any, run_key: str, api: Any = None) -> dict[str, Any] | None:
    """The record of a finished W&B run with this identity, or None (offline, absent, or unreachable)."""
    if not logger_cfg.enabled or (api is None and resolve_mode(logger_cfg.mode) != "online"):
        return None
    try:
        if api is None:
            import wandb

            api = wandb.Api(timeout=20)
        entity = logger_cfg.entity or api.default_entity
        run = api.run(f"{entity}/{logger_cfg.project}/{run_key}")
        if getattr(run, "state", None) != "finished":
            return None
        summary = dict(run.summary)
        if "val_loss" not in summary:
            return None
        rec = {k: summary[k] for k in RECORD_SCALARS if k in summary}
        rec.update(run_key=run_key, status="done", error=None, config=dict(run.config), source="wandb",
                   metrics={k: v for k, v in summary.items() if k not in RECORD_SCALARS and not k.startswith("_")})
        return rec
    except Exception as e:  # noqa: BLE001 - a missing or unreachable run just means "run it"
        log.info("no finished W&B run %s (%s)", run_key, e)
        return None
