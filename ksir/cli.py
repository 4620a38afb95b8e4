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
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ksir import resolvers  # noqa: F401 - registers ${ksir_path:...} and ${ksir_dirname:...}
from ksir.errors import ConfigError
from ksir.locks import StorageError
from ksir.paths import CONF_DIR
from ksir.resolvers import short_dirname  # noqa: F401 - kept importable as ksir.cli.short_dirname

SWEEP_TOTAL_ENV, SWEEP_START_ENV = "KSIR_SWEEP_TOTAL", "KSIR_SWEEP_START"  # set by the sweeper for progress
STUDY_ENV = "KSIR_IN_STUDY"  # set by ksir-repro: its sweeps do not end with "next: ksir-fit" (it fits them itself)


# Specs validated before their job runs, by the overrides that made them: the job of the same process (a single
# run, or a sweep through the basic launcher) takes its spec from here instead of parsing and checking it again.
_VALIDATED: dict[tuple[str, ...], Any] = {}


def validated(overrides: Any, spec: Any = None) -> Any:
    """Remember a validated spec under its job's overrides (with `spec`), or the one remembered (None)."""
    key = tuple(str(o) for o in overrides)
    if spec is not None:
        _VALIDATED[key] = spec
    return _VALIDATED.get(key)


class ValidateFirst(Callback):
    """A single job's config is parsed and checked as soon as Hydra has composed it, before Hydra creates the
    job's run folder, saves its config there and sets up logging: a bad value writes nothing and costs only
    composition (conf/config.yaml registers this under hydra.callbacks; sweeps check every job in the sweeper).
    The spec is handed to the job: it is built once per process."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from ksir import preflight
        from ksir.spec import JobSpec

        try:
            validated(config.hydra.overrides.task, preflight.check(JobSpec.from_config(config)))
        except ConfigError as e:
            print(e, file=sys.stderr)
            sys.exit(2)


@hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")
def _app(cfg: DictConfig) -> Any:
    single = HydraConfig.get().mode == RunMode.RUN
    try:
        from ksir import preflight
        from ksir.spec import JobSpec

        spec = validated(HydraConfig.get().overrides.task) or preflight.check(JobSpec.from_config(cfg))
        from ksir import startup

        startup.prepare(spec.logger)  # before any job module imports torch or transformers
        from ksir import jobs

        if single and spec.dry_run:
            from ksir.identity import run_key

            for dep in jobs.missing_dependencies(spec):
                print(f"  {run_key(dep)}  {jobs.describe(dep)}  (dependency, not trained yet)")
            print(f"  {run_key(spec)}  {jobs.describe(spec)}\ndry run: nothing was run")
            return {"status": "planned", "run_key": run_key(spec)}
        if single:
            from ksir import tracking

            before = len(tracking.offline_runs())
            rec = jobs.run_with_dependencies(spec)
            if offline := tracking.offline_runs()[before:]:
                print(tracking.offline_note(offline), flush=True)
        else:
            _progress_line(jobs.describe(spec))
            rec = jobs.execute(spec)
    except ConfigError as e:
        if single:  # one job: one line, exit 2 (no Hydra banner, no traceback)
            print(e, file=sys.stderr)
            sys.exit(2)
        raise  # in a sweep the job is recorded as failed and the others go on
    except StorageError as e:
        if single:  # a full or unwritable folder: one line naming it (and where a finished record went), exit 1
            print(e, file=sys.stderr)
            sys.exit(1)
        raise
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


HELP = """ksir-run: train or post-training-quantize one model, or sweep any config key with -m.

  ksir-run [KEY=VALUE ...]                one job (job=train by default)
  ksir-run -m KEY=A,B,C ...               a sweep: every job validated first, dependencies run first
  ksir-run -m experiment=demo             a named preset (conf/experiment/)
  ksir-run ... dry_run=true               print the plan (keys, dependencies), run nothing
  ksir-run -v ...                         verbose: the libraries' own logs, tips and progress bars too
  ksir-run [KEY=VALUE ...] --cfg job      print the composed config of a job
  ksir-run [KEY=VALUE ...] --help         this help; with overrides, Hydra's help for that config
  ksir-run --hydra-help                   Hydra's own options (launchers, sweepers, logging)

Config groups (choose with GROUP=OPTION, e.g. quant=gptq model=pythia):
{groups}

Every value: ksir-run --cfg job. Details: README.md and docs/runs.md.
"""


def _fast_help() -> str:
    """The help text from the config folder alone: Hydra's --help deep-copies its config repository once per
    group option (~1 s here), which is most of what `ksir-run --help` would otherwise cost."""
    from pathlib import Path

    import yaml

    conf = Path(CONF_DIR)
    defaults = {}
    for item in yaml.safe_load((conf / "config.yaml").read_text()).get("defaults", []):
        if isinstance(item, dict):
            defaults.update({str(k): str(v) for k, v in item.items()})
    lines = []
    for group in sorted(p for p in conf.iterdir() if p.is_dir()):
        options = sorted(f.stem for f in group.glob("*.yaml"))
        default = defaults.get(group.name)
        shown = ", ".join(f"{o} (default)" if o == default else o for o in options)
        lines.append(f"  {group.name:11} {shown}")
    return HELP.format(groups="\n".join(lines))


def check_overrides(args: list[str]) -> None:
    """Every KEY=VALUE on the command line parsed by Hydra's override grammar first: a malformed one
    (`quant.bits=4,`, `quant.bits=[4`) is one line naming it and exit 2, not Hydra's three lines without it."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        overrides = get_args_parser().parse_known_args(args)[0].overrides
    except SystemExit:
        return  # Hydra's own flags are Hydra's to report
    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_overrides([o])
        except OverrideParseException as e:
            first = str(e).splitlines()[0] if str(e) else "not an override"
            key, _, value = o.partition("=")
            hint = f"a value with ~ needs quotes: {key}='{value}'" if "~" in value else \
                "KEY=VALUE, a sweep KEY=A,B,C"
            print(f"invalid override {o!r}: {first} ({hint}; grammar: "
                  "https://hydra.cc/docs/advanced/override_grammar/basic/)", file=sys.stderr)
            sys.exit(2)


def main() -> None:
    from ksir import quiet

    args = quiet.take_flag(sys.argv[1:])
    sys.argv[1:] = args
    quiet.apply()
    if args and all(a in ("--help", "-h") for a in args):
        print(_fast_help())
        return
    check_overrides(args)
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
    from pathlib import Path

    for folder in args.results:
        if not Path(folder).expanduser().is_dir():
            print(f"ksir-migrate: error: {folder}: no such results folder", file=sys.stderr)
            return 2
    for folder in (str(Path(f).expanduser()) for f in args.results):
        merged = migrate(folder)
        n_old = sum(len(v) for v in merged.values())
        print(f"{folder}: {n_old} schema-1 record(s) -> {len(merged)} schema-2 record(s); originals in {folder}/.v1/")
    return 0


if __name__ == "__main__":
    main()
