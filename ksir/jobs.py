"""Running one job: its record's lifecycle (skip a finished one, lock, run its kind's body inside one W&B
run, write the record once), and what the kinds of `ksir.kinds` name here: which jobs they need first and
how they are described.

A quantize job of the own family needs the train job that makes its base model; a QAT fine-tune
(`qat.init_from=auto`) needs the full-precision train job. Dependencies are declared, never run inside
the job that needs them: a sweep runs every missing dependency once, as its own job, before the jobs
that need it (hydra_plugins.ksir_sweeper); a single `ksir-run` runs them first and says so
(`run_with_dependencies`). Every job runs under the lock of its identity, so two identical sweeps never
compute the same job twice and never resume from a checkpoint that a live process is writing.
"""

from __future__ import annotations

import logging
from typing import Any

from ksir import identity, records, tracking
from ksir.errors import ConfigError
from ksir.spec import JobSpec

log = logging.getLogger("ksir")


class DependencyMissing(RuntimeError):
    """A job's dependency has no usable result (it failed, or was never run)."""


# ---- the kinds' own behaviour (named by their entries in ksir.kinds) --------------------------------------


def train_requires(spec: JobSpec) -> list[JobSpec]:
    """A QAT fine-tune of ksir's own full-precision model (qat.init_from=auto) needs that model first."""
    return [identity.base_train_spec(spec)] if spec.qat.enabled and spec.qat.init_from == "auto" else []


def quantize_requires(spec: JobSpec) -> list[JobSpec]:
    """A quantize job of ksir's own family needs the train job that makes its base model."""
    return [identity.base_train_spec(spec)] if spec.uses_own_checkpoint else []


def describe_train(spec: JobSpec) -> str:
    q, t = spec.qat, spec.trainer
    how = "".join([f" {spec.model.parametrization}" if spec.model.parametrization != "sp" else "",
                   f" {t.matmul_precision}" if t.matmul_precision != "fp32" else "",
                   " unscaled" if t.matmul_precision.startswith("fp8") and t.matmul_scaling == "none" else ""])
    return f"{spec.model.family}-{spec.model.size} train" + (f" QAT {q.bits:g}-bit {q.dtype}" if q.enabled else "") + how


def describe_quantize(spec: JobSpec) -> str:
    name = f"{spec.model.family}-{spec.model.size}"
    q = spec.quant
    if q.unquantized:
        return f"{name} quantize 16-bit baseline"
    extra = "".join([f" a{q.act.bits:g}" + ("" if q.act.dtype == "int" else f" {q.act.dtype}") if q.act.on else "",
                     f" kv{q.kv.bits:g}" + ("" if q.kv.dtype == "int" else f" {q.kv.dtype}") if q.kv.on else "",
                     (f" attn{q.attention.bits:g} " + ("learned" if q.attention.learn else "fixed")) if q.attention.on else "",
                     " hadamard" if q.rotate != "none" else "",
                     f" {q.smooth.method}" if q.smooth.method != "none" else "",
                     f" layers {q.layer_rule()}" if q.per_layer else ""])
    if not q.weights_quantized:
        return f"{name} quantize w16{extra}"
    scheme = f"b{q.blocksize}" if q.granularity == "block" else q.granularity
    packed = "" if q.backend == "simulated" else f" [{q.backend}]"
    lr = q.lowrank
    low = "" if lr.mode == "none" else f" + {lr.mode} r{lr.rank:g}"
    if q.factorized and q.reference:
        return f"{name} quantize factorize r{lr.rank:g} fp16"
    heal = f" + kd {q.heal.steps} steps" if q.heal.steps else ""
    return f"{name} quantize {q.dtype}{q.bits:g} {scheme} {q.method}{low}{extra}{heal}{packed}"


def describe(spec: JobSpec) -> str:
    """A short human label: `llama-xs train`, `llama-m quantize int4 b64 rtn`."""
    return spec.kind.call("describe", spec)


def satisfied(dep: JobSpec) -> bool:
    """A train dependency is satisfied by its model: an intact checkpoint (today's or a schema-1 one)."""
    return identity.find_checkpoint(dep) is not None


def missing_dependencies(spec: JobSpec) -> list[JobSpec]:
    return [d for d in spec.kind.call("requires", spec) if not satisfied(d)]


def check_dependencies(spec: JobSpec) -> list[JobSpec]:
    """The missing dependencies, or a ConfigError if the config forbids running them (before any compute)."""
    missing = missing_dependencies(spec)
    if missing and not spec.model.train_if_missing:
        raise ConfigError("model.train_if_missing", False, why=f"{describe(spec)} needs the model of "
                          f"{describe(missing[0])}, not trained at {identity.checkpoint_dir(missing[0])}; run "
                          "job=train first or set model.train_if_missing=true")
    return missing


def _usable(spec: JobSpec, rec: dict[str, Any] | None) -> tuple[bool, str]:
    """(skip?, why not) for an existing record: done, finite, and for a train job its checkpoint intact."""
    if rec is None:
        return False, ""
    if not records.is_done(rec):
        return False, "its record is not a finished, finite result" if rec.get("status") == "done" else ""
    if spec.kind.trains_with_qat and not satisfied(spec):  # a train job's result is its model too
        from ksir.integrity import verify_checkpoint

        folder = identity.checkpoint_dir(spec)
        return False, f"its checkpoint is unusable ({verify_checkpoint(folder) if folder.exists() else f'{folder} missing'})"
    return True, ""


def execute(spec: JobSpec) -> dict[str, Any]:
    """Run one job unless its finished record exists (then return it); record failures too."""
    key = identity.run_key(spec)
    results = spec.paths.results_dir
    with records.job_lock(results, key):
        records.remove_stale_tmp(results)
        try:
            rec, path = records.find_record(results, key)
        except records.NewerRecord as e:  # never rerun over, even with force
            print(f"[{spec.job}] {e}", flush=True)
            return {"run_key": key, "status": "done", "skipped": True, "newer": True}
        except ValueError as e:
            log.warning("%s; rerunning", e)
            print(f"[{spec.job}] {key}: {e}; rerunning", flush=True)
            rec, path = None, records.record_path(results, key)
        usable, why = _usable(spec, rec)
        if usable and not spec.force:
            print(f"[{spec.job}] {key} done already, skipped ({path})", flush=True)
            return {**rec, "skipped": True}
        if why:
            print(f"[{spec.job}] {key} rerun: {why}", flush=True)
        if rec is None and not spec.force and (remote := tracking.finished_remote_run(spec.logger, key, out_dir=spec.paths.wandb)) is not None:
            path = records.save_or_rescue(results, remote)
            print(f"[{spec.job}] {key} finished on W&B already, skipped (record restored to {path})", flush=True)
            return {**remote, "skipped": True}
        missing = missing_dependencies(spec)
        if missing:
            raise DependencyMissing(f"{describe(spec)} needs the model of {describe(missing[0])} "
                                    f"({identity.run_key(missing[0])}), which is not trained: its train job failed "
                                    "or was not run (a sweep runs it first; see its record)")
        base = {**records.new_record(spec, key, identity.identity(spec)), "started": records.now()}
        try:
            fields = _run(spec, key)
        except Exception as e:
            records.save_or_rescue(results, records.failed(base, e))
            raise
        rec = records.finish(base, fields)
        path = records.save_or_rescue(results, rec)
    m = rec.get("metrics", {})
    print(f"[{spec.job}] {describe(spec)}: val_loss={m.get('val_loss', float('nan')):.4f} "
          f"total_bits={rec.get('total_bits', 0):.3e}{_measured(rec)} ({rec.get('wall_time_s', 0):.1f}s) -> {path}",
          flush=True)
    return rec


def _run(spec: JobSpec, key: str) -> dict[str, Any]:
    """The job's body (its kind's `run`; torch loads here, not at import) inside the job's one W&B run. If the
    model it builds on proves unloadable (set aside by the job), that model is built again, as a truncated one
    would be, and the job retried once; the rebuild runs between the two attempts, outside this job's W&B run
    (one W&B run per process at a time), and the retry continues the same run (its id is the run key)."""
    from ksir.checkpoints import CheckpointUnusable

    try:
        return _attempt(spec, key)
    except CheckpointUnusable:
        missing = check_dependencies(spec)  # train_if_missing=false: one line, nothing rebuilt
        if not missing:
            raise
        for dep in missing:
            print(f"[{spec.job}] {describe(spec)}: rebuilding {describe(dep)} ({identity.run_key(dep)})", flush=True)
            execute(dep.replace(force=True))
        return _attempt(spec, key)


def _attempt(spec: JobSpec, key: str) -> dict[str, Any]:
    with tracking.job_run(spec, key) as run:  # started here, finished here, whatever the kind
        fields = spec.kind.call("run", spec, run)
        run.summary = records.to_wandb_summary(fields)
    return fields


def _measured(rec: dict[str, Any]) -> str:
    d = rec.get("deploy")
    if not d:
        return ""
    b1 = (d.get("decode_ms_per_token") or {}).get("1")
    r1 = ((d.get("reference") or {}).get("decode_ms_per_token") or {}).get("1")
    speed = f", decode b1 {b1:.2f} ms/token vs 16-bit {r1:.2f}" if b1 and r1 else ""
    return f" measured {d['bytes']:,} B = {d['measured_over_formula']:.3f}x formula{speed}"


def run_with_dependencies(spec: JobSpec) -> dict[str, Any]:
    """One job from the command line: its missing dependencies first (said so), then the job."""
    for dep in check_dependencies(spec):
        print(f"[{spec.job}] {describe(spec)} needs {describe(dep)} ({identity.run_key(dep)}), not trained yet: "
              "running it first", flush=True)
        run_with_dependencies(dep)
    return execute(spec)
