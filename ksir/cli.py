"""`ksir-run`: the Hydra app. One job, or a sweep with `-m` (any config key, any launcher).

Only Hydra is imported before the config is parsed: `--help` and a config error cost Hydra's start-up,
not torch's (`ksir.spec` imports no torch, transformers, datasets or lm-eval).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ksir.errors import ConfigError
from ksir.paths import CONF_DIR

SWEEP_TOTAL_ENV, SWEEP_START_ENV = "KSIR_SWEEP_TOTAL", "KSIR_SWEEP_START"  # set by the sweeper for progress


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> Any:
    single = HydraConfig.get().mode == RunMode.RUN
    try:
        from ksir.spec import JobSpec

        spec = JobSpec.from_config(cfg)
        _quiet_libraries()
        from ksir import jobs

        if single and spec.raw.get("dry_run"):
            from ksir.identity import run_key

            for dep in jobs.missing_dependencies(spec):
                print(f"  {run_key(dep)}  {jobs.describe(dep)}  (dependency, not trained yet)")
            print(f"  {run_key(spec)}  {jobs.describe(spec)}\ndry run: nothing was run")
            return {"status": "planned", "run_key": run_key(spec)}
        if single:
            rec = jobs.run_with_dependencies(spec)
        else:
            _progress_line(jobs.describe(spec))
            rec = jobs.execute(spec)
    except ConfigError as e:
        if single:  # one job: one line, exit 2 (no Hydra banner, no traceback)
            print(e, file=sys.stderr)
            sys.exit(2)
        raise  # in a sweep the job is recorded as failed and the others go on
    except KeyboardInterrupt:
        if single:
            print("interrupted: no record was written for the unfinished job (a train job resumes from its last "
                  "checkpoint when relaunched)", file=sys.stderr)
            sys.exit(130)
        raise
    # A small summary for the sweeper's end-of-sweep table (must pickle across launchers).
    return {"status": rec["status"], "skipped": rec.get("skipped", False), "run_key": rec["run_key"],
            "val_loss": rec.get("metrics", {}).get("val_loss")}


def _progress_line(what: str) -> None:
    """`[sweep 12/84] llama-m quantize int4 b64 rtn (4m 10s elapsed, ETA ~6 min)`: jobs of a sweep say where it is."""
    total, start = os.environ.get(SWEEP_TOTAL_ENV), os.environ.get(SWEEP_START_ENV)
    if not total or not start:
        return
    idx = HydraConfig.get().job.num
    elapsed = time.time() - float(start)
    eta = f", ETA ~{elapsed / idx * (int(total) - idx) / 60:.0f} min" if idx else ""
    print(f"[sweep {idx + 1}/{total}] {what} ({elapsed / 60:.1f} min elapsed{eta})", flush=True)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    _app()


def migrate_main(argv: list[str] | None = None) -> int:
    """`ksir-migrate RESULTS_DIR ...`: upgrade schema-1 records in place (old files kept in RESULTS_DIR/.v1/).

    Not needed to relaunch (jobs adopt old records themselves); useful before sharing a folder or fitting it
    with other tools, since two old records of one job (bits 4 and 4.0) become one."""
    import argparse

    from ksir.records import migrate

    p = argparse.ArgumentParser(prog="ksir-migrate", description=migrate_main.__doc__)
    p.add_argument("results", nargs="+", help="results folders (<out_dir>/results)")
    args = p.parse_args(argv)
    for folder in args.results:
        merged = migrate(folder)
        n_old = sum(len(v) for v in merged.values())
        print(f"{folder}: {n_old} schema-1 record(s) -> {len(merged)} schema-2 record(s); originals in {folder}/.v1/")
    return 0


if __name__ == "__main__":
    main()
