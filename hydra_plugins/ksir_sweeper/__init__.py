"""ksir's sweeper (a Hydra plugin, hence this namespace): Hydra's basic sweeper, plus

- every job of a sweep is validated before the first one runs: without this, a typo in the 30th
  value of a sweep would surface only after 29 jobs of compute;
- a failed job never stops the sweep; at the end a table of done / skipped / failed jobs is
  printed and the command exits non-zero if anything failed.

Launchers are independent of the sweeper, so this holds for basic, joblib and submitit alike.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf

from ksir.config import validate
from ksir.errors import ConfigError


class SweepFailed(CompactHydraException):
    pass


def job_row(overrides: Sequence[str], ret: JobReturn) -> dict[str, Any]:
    row: dict[str, Any] = {"job": " ".join(overrides)}
    if ret.status == JobStatus.COMPLETED and isinstance(ret._return_value, dict):
        rv = ret._return_value
        row.update(status="skipped" if rv.get("skipped") else rv.get("status", "done"),
                   run_key=rv.get("run_key", ""), val_loss=rv.get("val_loss"))
    else:
        err = ret._return_value
        row.update(status="failed", run_key="", val_loss=None, error=f"{type(err).__name__}: {err}"[:160])
    return row


def summary_table(rows: list[dict[str, Any]], wall_s: float) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    width = min(70, max(len(r["job"]) for r in rows))
    lines = [f"{'#':>3}  {'status':8} {'val_loss':>9}  {'job':{width}}  run_key / error"]
    for i, r in enumerate(rows):
        vl = f"{r['val_loss']:.4f}" if isinstance(r.get("val_loss"), float) else "-"
        lines.append(f"{i:>3}  {r['status']:8} {vl:>9}  {r['job'][:width]:{width}}  {r.get('error') or r['run_key']}")
    lines.append(f"sweep: {len(rows)} jobs, {counts['done']} done, {counts['skipped']} skipped, "
                 f"{counts['failed']} failed in {wall_s:.0f}s")
    return "\n".join(lines)


class ValidatingSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(batch)
        assert self.hydra_context is not None and self.config is not None
        for overrides in batch:
            full = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            # The job sees its config without the `hydra` node (whose job-time values are unset here).
            cfg = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])
            try:
                validate(cfg)
            except ConfigError as e:
                raise ConfigError(e.key, e.value, why=f"{e} [in sweep job: {' '.join(overrides)}]") from None

    def sweep(self, arguments: list[str]) -> Any:
        """BasicSweeper.sweep, but every batch is validated before any runs, and failures are
        collected into the summary instead of being raised at the first failed job."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params_conf), self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

        for batch in self.overrides:
            self.validate_batch_is_legal(batch)
        n_jobs = sum(len(b) for b in self.overrides)
        print(f"[sweep] {n_jobs} jobs validated; launching", flush=True)
        t0, rows, returns, idx = time.time(), [], [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            results = self.launcher.launch(batch, initial_job_idx=idx)
            rows += [job_row(o, r) for o, r in zip(batch, results, strict=True)]
            idx += len(batch)
            returns.append(results)
        table = summary_table(rows, time.time() - t0)
        (sweep_dir / "summary.txt").write_text(table + "\n")
        print(table, flush=True)
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:
            raise SweepFailed(f"{len(failed)} of {len(rows)} jobs failed (records with status=failed hold the "
                              f"tracebacks); first: {failed[0]['error']}")
        return returns
