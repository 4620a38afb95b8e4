"""ksir's sweeper (a Hydra plugin, hence this namespace): Hydra's basic sweeper, plus

- every job of a sweep is parsed into a `JobSpec` (validated, files checked) before the first one runs:
  a typo in the 30th value fails at once, not after 29 jobs of compute;
- declared dependencies run first, once each, as their own jobs (`ksir.jobs`): the train jobs whose models
  the quantize jobs need form a first wave, launched through the same launcher (on SLURM: a first array),
  and only jobs whose dependencies succeeded are launched after it; no job trains inside another;
- progress: each job prints `[sweep i/n] ... ETA`; the basic launcher runs jobs one by one so that Ctrl-C
  ends the sweep with the table so far (exit 130);
- a failed job never stops the sweep; at the end a table of done / skipped / failed jobs is printed and the
  command exits non-zero if anything failed.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from omegaconf import OmegaConf, open_dict

from ksir import preflight
from ksir.cli import STUDY_ENV, SWEEP_START_ENV, SWEEP_TOTAL_ENV, validated
from ksir.errors import ConfigError
from ksir.paths import CONF_DIR
from ksir.spec import JobSpec, plain_config  # torch-free; the job modules load only when a sweep runs


class SweepFailed(CompactHydraException):
    pass


def job_row(overrides: Sequence[str], ret: JobReturn) -> dict[str, Any]:
    row: dict[str, Any] = {"job": list(overrides)}
    if ret.status == JobStatus.COMPLETED and isinstance(ret._return_value, dict):
        rv = ret._return_value
        row.update(status="skipped" if rv.get("skipped") else rv.get("status", "done"),
                   run_key=rv.get("run_key", ""), val_loss=rv.get("val_loss"))
    else:
        err = ret._return_value
        row.update(status="failed", run_key="", val_loss=None, error=f"{type(err).__name__}: {err}"[:300])
    return row


def summary_table(rows: list[dict[str, Any]], wall_s: float, note: str = "") -> str:
    """One line per job: status, val_loss, run key and the overrides that tell it from the other jobs (those
    common to every job are said once above the table), never cut; a failed job's error on the line below."""
    counts = {s: sum(r["status"] == s for r in rows) for s in ("done", "skipped", "failed")}
    common = [o for o in (rows[0]["job"] if rows else []) if all(o in r["job"] for r in rows[1:])] \
        if len(rows) > 1 else []
    lines = [f"every job: {' '.join(common)}"] if common else []
    lines.append(f"{'#':>3}  {'status':8} {'val_loss':>9}  {'run_key':18}  job")
    for i, r in enumerate(rows):
        vl = f"{r['val_loss']:.4f}" if isinstance(r.get("val_loss"), float) else "-"
        own = " ".join(o for o in r["job"] if o not in common) or "(the overrides above)"
        lines.append(f"{i:>3}  {r['status']:8} {vl:>9}  {r['run_key'] or '-':18}  {own}")
        if r.get("error"):
            lines.append(f"{'':>5}error: {r['error']}")
    lines.append(f"sweep: {len(rows)} jobs, {counts['done']} done, {counts['skipped']} skipped, "
                 f"{counts['failed']} failed in {wall_s:.0f}s{note}")
    return "\n".join(lines)


def _quantized(spec: JobSpec) -> bool:
    """The job's record is a quantized run (PTQ or QAT), as ksir-fit selects by default: read from the record."""
    from ksir import identity, records

    try:
        rec, _ = records.find_record(spec.paths.results_dir, identity.run_key(spec), adopt_old=False)
    except (records.NewerRecord, ValueError):
        return False
    return bool(rec) and rec.get("regime") not in (None, "fp")


def with_job(overrides: Sequence[str], job: str, extra: Sequence[str] = (), drop: Sequence[str] = ()) -> list[str]:
    """The overrides of a sibling job, turned into the overrides of its dependency (less the config groups in
    `drop`, which the dependency's identity does not read: a train job is not labelled `quant.bits=2`)."""
    def group(o: str) -> str:
        return o.lstrip("+~").partition("=")[0].split(".")[0]

    return [o for o in overrides if group(o) != "job" and group(o) not in drop] + [f"job={job}", *extra]


DEPENDENCY_IRRELEVANT = ("quant",)  # what a quantize job adds to the model it needs

CONFIG_GROUPS = frozenset(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir())


INTERPOLATED = re.compile(r"\$\{([\w.]+)\}")  # ${out_dir}: a key that other values are computed from


def interpolation_sources(cfg: Any) -> frozenset[str]:
    return frozenset(INTERPOLATED.findall(json.dumps(OmegaConf.to_container(cfg, resolve=False))))


class _JobConfigs:
    """Hydra's config loader as an in-process launcher sees it: `load_sweep_config` (one call per job, 0.3-0.5 s
    of defaults-tree composition each, the largest cost of a short job after the imports) is the sweeper's
    `job_config`, which composes once per distinct base; everything else is Hydra's."""

    def __init__(self, loader: Any, sweeper: ValidatingSweeper):
        self.loader, self.sweeper = loader, sweeper

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> Any:
        cfg = self.sweeper.job_config(master_config, sweep_overrides)
        return cfg if cfg is not None else self.loader.load_sweep_config(master_config, sweep_overrides)


class ValidatingSweeper(BasicSweeper):
    _specs: dict[tuple[str, ...], JobSpec]
    _bases: dict[tuple[str, ...], tuple[Any, dict[str, Any], frozenset[str]]]
    _parsed: dict[str, Any]
    _sources: frozenset[str]

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        if isinstance(self.launcher, BasicLauncher):  # jobs in this process: their configs composed by job_config
            self.launcher.hydra_context = dataclasses.replace(
                hydra_context, config_loader=_JobConfigs(hydra_context.config_loader, self))

    def job_config(self, master: Any, overrides: Sequence[str]) -> Any:
        """A job's full config (hydra node included) as Hydra's `load_sweep_config` composes it, or None where
        only Hydra can say. Hydra composes once per distinct base (config-group choices, `hydra.*`, the values
        that interpolations read); the job's plain values are set on a copy by Hydra's own override step, and
        the fields Hydra derives from the job's overrides (`hydra.overrides.task`, `override_dirname`) are
        derived the same way. tests/test_sweeps.py compares every job of a varied sweep with Hydra's config."""
        from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname

        assert self.hydra_context is not None
        parsed = [self._parse(o) for o in overrides]
        fast = [o for o in parsed if self._is_plain(o, self._sources)]
        keys = [o.key_or_group for o in parsed]
        if not fast or len(set(keys)) < len(keys):
            return None
        base, _, sources = self._base(tuple(o.input_line for o in parsed if o not in fast))
        if not all(self._is_plain(o, sources) for o in fast):
            return None
        cfg = copy.deepcopy(base)
        ConfigLoaderImpl._apply_overrides_to_config(fast, cfg)
        task = [o for o in parsed if not o.is_hydra_override()]
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in task]
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=task, kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
        OmegaConf.copy_cache(from_config=master, to_config=cfg)
        return cfg

    def compose(self, overrides: Sequence[str]) -> dict[str, Any]:
        """The job's resolved config as Hydra composes it, fast. Hydra composes (and OmegaConf resolves) once
        per distinct base: the config-group choices (model=..., quant=gptq, hydra/...) and the values that
        interpolations read (out_dir=...). Every other override (quant.bits=4, seed=3) is a plain value, set
        on a copy of the resolved dict. A 1,000-job sweep is checked in seconds; a test checks that every
        job gets the key that full composition gives it."""
        assert self.hydra_context is not None and self.config is not None
        parsed = [self._parse(o) for o in overrides]
        fast = [o for o in parsed if self._is_plain(o, self._sources)]
        _, base, sources = self._base(tuple(o.input_line for o in parsed if o not in fast))
        if not all(self._is_plain(o, sources) for o in fast):  # this base computes a value from a key the job sets
            return self._full(overrides)
        cfg = copy.deepcopy(base)
        for o in fast:
            *path, last = o.key_or_group.split(".")
            node = cfg
            for part in path:
                node = node.get(part) if isinstance(node, dict) else None
            if not isinstance(node, dict) or (last not in node and not o.is_add()):
                return self._full(overrides)  # not a plain value override after all: Hydra decides
            node[last] = o.value()
        return cfg

    def _parse(self, line: str) -> Any:
        if line not in self._parsed:
            assert self.hydra_context is not None
            parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
            (self._parsed[line],) = parser.parse_overrides([line])
        return self._parsed[line]

    @staticmethod
    def _is_plain(o: Any, sources: frozenset[str]) -> bool:
        key = o.key_or_group
        return (key.split("/")[0] not in CONFIG_GROUPS and not key.startswith("hydra") and not o.is_delete()
                and not o.is_force_add() and "${" not in str(o.get_value_element_as_str())
                and not any(s == key or s.startswith(key + ".") or key.startswith(s + ".") for s in sources))

    def _base(self, lines: tuple[str, ...]) -> tuple[Any, dict[str, Any], frozenset[str]]:
        """Hydra's composition of a base (the overrides that are not plain values), once per sweep for both the
        checks (`compose`) and the in-process jobs (`job_config`): the full config, hydra node included; its
        resolved plain dict without hydra; the keys its interpolations read."""
        if lines not in self._bases:
            assert self.hydra_context is not None and self.config is not None
            full = self.hydra_context.config_loader.load_sweep_config(self.config, list(lines))
            cfg = OmegaConf.masked_copy(full, [k for k in full if k != "hydra"])
            self._bases[lines] = (full, plain_config(cfg), interpolation_sources(cfg))
        return self._bases[lines]

    def _full(self, overrides: Sequence[str]) -> dict[str, Any]:
        assert self.hydra_context is not None and self.config is not None
        full = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        return plain_config(OmegaConf.masked_copy(full, [k for k in full if k != "hydra"]))

    def spec_of(self, overrides: Sequence[str]) -> JobSpec:
        key = tuple(overrides)
        if key not in self._specs:
            try:
                self._specs[key] = validated(overrides, preflight.check(JobSpec.from_config(self.compose(overrides))))
            except ConfigError as e:
                raise e.within(f"in sweep job: {' '.join(overrides)}") from None
        return self._specs[key]

    def distinct(self, jobs: list[list[str]]) -> list[list[str]]:
        """Every job validated; jobs that are one job (`quant.bits=4,4.0`, `model.size=xs,xs`: the same run key)
        collapse into the first, and the plan says so."""
        from ksir import identity

        seen: dict[str, list[str]] = {}
        out, dropped = [], []
        for o in jobs:
            key = identity.run_key(self.spec_of(o))
            if key in seen:
                dropped.append((o, seen[key]))
            else:
                seen[key] = o
                out.append(o)
        if dropped:
            print(f"[sweep] {len(dropped)} of {len(jobs)} jobs are the same job as another (collapsed): "
                  + "; ".join(f"{' '.join(o)} = {' '.join(first)}" for o, first in dropped[:3])
                  + (" ..." if len(dropped) > 3 else ""), flush=True)
        return out

    def plan(self, jobs: list[list[str]]) -> tuple[dict[str, list[str]], dict[int, str]]:
        """({model key: overrides of the train job to run first}, {job index: model key it needs}) for the jobs
        not yet done."""
        from ksir import identity
        from ksir import jobs as registry

        deps: dict[str, list[str]] = {}
        needs: dict[int, str] = {}
        ready: dict[str, bool] = {}
        for i, overrides in enumerate(jobs):
            spec = self.spec_of(overrides)
            for dep in spec.kind.call("requires", spec):
                mkey = identity.model_key(dep)
                if mkey not in ready:
                    ready[mkey] = registry.satisfied(dep)
                if ready[mkey] or self.finished(spec):
                    continue  # the model exists, or the job's result does: nothing to train for it
                if not spec.model.train_if_missing:
                    try:
                        registry.check_dependencies(spec)
                    except ConfigError as e:
                        raise e.within(f"in sweep job: {' '.join(overrides)}") from None
                needs[i] = mkey
                if mkey not in deps:
                    deps[mkey] = self._dependency(overrides, dep.job, spec.kind.dependency_overrides, mkey)
        return deps, needs

    def _dependency(self, overrides: list[str], job: str, extra: Sequence[str], mkey: str) -> list[str]:
        """The overrides of the train job `overrides` needs: without the quantization settings when that composes
        to the same model (the usual case), else with them; never a different model."""
        from ksir import identity

        for drop in (DEPENDENCY_IRRELEVANT, ()):
            candidate = with_job(overrides, job, extra, drop)
            try:
                if identity.model_key(self.spec_of(candidate)) == mkey:
                    return candidate
            except ConfigError:
                continue
        raise RuntimeError(f"the dependency of {' '.join(overrides)} does not compose to {mkey}")

    @staticmethod
    def finished(spec: JobSpec) -> bool:
        """The job's result exists (read only: schema-1 records are adopted by the job itself, not here)."""
        from ksir import identity, records

        if spec.force:
            return False
        try:
            rec, _ = records.find_record(spec.paths.results_dir, identity.run_key(spec), adopt_old=False)
        except records.NewerRecord:
            return True  # a newer ksir's result: never rerun over
        except ValueError:
            return False  # a corrupt record: the job reruns, and needs its model
        return records.is_done(rec)

    def sweep(self, arguments: list[str]) -> Any:
        """BasicSweeper.sweep, plus pre-flight validation, dependency waves, progress and a summary table."""
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        self._specs, self._bases, self._parsed = {}, {}, {}
        # Keys that interpolations read in the config as composed from the command line (`hydra.*` overrides
        # apply to every composition, so no composition without this sweep's launcher may be tried).
        self._sources = interpolation_sources(OmegaConf.masked_copy(self.config, [k for k in self.config
                                                                                   if k != "hydra"]))
        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(params_conf), self.max_batch_size)
        sweep_dir = Path(self.config.hydra.sweep.dir)

        t_check = time.time()
        try:
            jobs = self.distinct([list(o) for batch in self.overrides for o in batch])
            deps, needs = self.plan(jobs)
        except ConfigError as e:  # one line, exit 2, as for a single job (not Hydra's banner and hint)
            print(e, file=sys.stderr, flush=True)
            sys.exit(2)
        dep_jobs = list(deps.values())
        print(f"[sweep] {len(jobs)} jobs validated in {time.time() - t_check:.1f}s"
              + (f"; {len(dep_jobs)} train job(s) they need run first" if dep_jobs else "")
              + ("" if self.config.get("dry_run") else "; launching"), flush=True)
        if not self.config.get("dry_run"):  # written only once every job is valid
            try:
                sweep_dir.mkdir(parents=True, exist_ok=True)
                OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
            except OSError as e:
                print(ConfigError("hydra.sweep.dir", str(sweep_dir), why=f"cannot be written ({e.strerror or e})"),
                      file=sys.stderr, flush=True)
                sys.exit(2)
        if self.config.get("dry_run"):
            from ksir import identity
            from ksir import jobs as registry

            for o in dep_jobs + jobs:
                spec = self.spec_of(o)
                print(f"  {identity.run_key(spec)}  {registry.describe(spec):40}  {' '.join(o)}")
            print(f"[sweep] dry run: {len(dep_jobs) + len(jobs)} jobs planned, none run", flush=True)
            return []
        os.environ[SWEEP_TOTAL_ENV] = str(len(dep_jobs) + len(jobs))
        os.environ[SWEEP_START_ENV] = str(time.time())
        t0, rows, returns, idx = time.time(), [], [], 0
        one_by_one = isinstance(self.launcher, BasicLauncher)  # in-process: no parallelism to lose
        try:
            failed_deps: set[str] = set()
            if dep_jobs:
                results = self._launch(dep_jobs, idx, one_by_one, rows, returns)
                idx += len(dep_jobs)
                failed_deps = {k for k, r in zip(deps, results, strict=True) if job_row([], r)["status"] == "failed"}
            runnable = []
            for i, o in enumerate(jobs):
                if needs.get(i) in failed_deps:
                    rows.append({"job": o, "status": "failed", "run_key": "", "val_loss": None,
                                 "error": f"not run: the train job of its base model ({needs[i]}) failed"})
                else:
                    runnable.append(o)
            batch_size = self.max_batch_size or len(runnable) or 1
            for start in range(0, len(runnable), batch_size):
                self._launch(runnable[start:start + batch_size], idx, one_by_one, rows, returns)
                idx += len(runnable[start:start + batch_size])
        except KeyboardInterrupt:
            self._report(sweep_dir, summary_table(rows, time.time() - t0, note=" (interrupted: the rest did not run)"))
            sys.exit(130)
        self._report(sweep_dir, summary_table(rows, time.time() - t0))
        if steps := self.next_steps(dep_jobs + jobs, sweep_dir):
            print(steps, flush=True)
        failed = [r for r in rows if r["status"] == "failed"]
        if failed:
            raise SweepFailed(f"{len(failed)} of {len(rows)} jobs failed (records with status=failed hold the "
                              f"tracebacks); first: {failed[0]['error']}")
        return returns

    def next_steps(self, jobs: list[list[str]], sweep_dir: Path) -> str:
        """Where the sweep's outputs are and what to do with them: the results folder(s) and the ksir-fit
        command that fits them, and the W&B runs it logged offline with the command that uploads them."""
        from ksir import identity

        specs = [self.spec_of(o) for o in jobs]
        folders = sorted({str(s.paths.results_dir) for s in specs})
        curves = any(_quantized(s) for s in specs)  # else ksir-fit needs --all-jobs (it fits quantized runs)
        lines = []
        if os.environ.get(STUDY_ENV) != "1":  # ksir-repro fits its sweeps itself and says where
            lines.append(f"results: {', '.join(folders)} (one record per job); this table: {sweep_dir / 'summary.txt'}")
            fit_out = Path(folders[0]).parent / "fit" if len(folders) == 1 else "fit"
            lines.append(f"next: ksir-fit {' '.join(folders)} --out {fit_out}" + ("" if curves else " --all-jobs")
                         + "   (scaling laws, the best k per budget, figures)")
        offline: dict[str, int] = {}
        keys_by_folder: dict[Path, set[str]] = {}
        for s in specs:
            keys_by_folder.setdefault(Path(s.paths.wandb) / "wandb", set()).add(identity.run_key(s))
        for folder, keys in keys_by_folder.items():  # one listing per folder, not one glob per job
            logged = {"-".join(p.name.rsplit("-", 2)[-2:]) for p in folder.glob("offline-run-*")}  # ...-<run key>
            if n := len(keys & logged):
                offline[str(folder)] = n
        for folder, n in offline.items():
            lines.append(f"W&B: {n} run(s) logged offline in {folder}; upload with: wandb sync {folder}/offline-run-*")
        return "\n".join(lines)

    @staticmethod
    def _report(sweep_dir: Path, table: str) -> None:
        """The table on the terminal and in a file of this sweep's own (`summary-<time>-<pid>.txt`: concurrent
        sweeps of one out_dir do not overwrite each other's); `summary.txt` is the last one finished."""
        from ksir.records import write_atomic

        own = sweep_dir / f"summary-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
        in_study = os.environ.get(STUDY_ENV) == "1"  # ksir-repro: the counts, and where the table is
        print(f"{table.splitlines()[-1]} (one line per job in {sweep_dir / 'summary.txt'})" if in_study
              else "\n" + table, flush=True)
        try:
            write_atomic(own, table + "\n")
            write_atomic(sweep_dir / "summary.txt", table + "\n")
        except OSError as e:
            print(f"[sweep] could not write {own} ({e.strerror or e}); the table above is the summary", flush=True)

    def _launch(self, batch: list[list[str]], idx: int, one_by_one: bool, rows: list, returns: list) -> list[JobReturn]:
        assert self.launcher is not None
        results: list[JobReturn] = []
        for part in ([[o] for o in batch] if one_by_one else [batch]):
            res = list(self.launcher.launch(part, initial_job_idx=idx + len(results)))
            rows += [job_row(o, r) for o, r in zip(part, res, strict=True)]
            results += res
        returns.append(results)
        return results
