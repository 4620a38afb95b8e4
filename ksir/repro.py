"""`ksir-repro`: one command per published result (sweep -> fit -> figures -> claims).

A study is a folder `experiments/<study>/`: a README (the question, the source and its numbers,
what is reproduced, hardware, time), `study.yaml` (sweeps, fit, margins, claims), its data if it ships any,
and the last full run's `claims.md` / `claims.json` / `claims_runs.csv`, committed with `--update`, so that the
the table of every study's claims in docs/studies.md is regenerated from them (`ksir-repro --table`) and `--check` recomputes every
claim from the committed runs without running a job.

    ksir-repro --list                      # studies, hardware, expected time
    ksir-repro chinchilla_epoch            # run (finished runs are reused), fit, check its claims -> outputs/repro/...
    ksir-repro demo --smoke                # the whole path on tiny settings (< 1 min)
    ksir-repro kbit_own_family --update    # ... and commit its claims and runs into experiments/kbit_own_family/
    ksir-repro kbit_own_family --check     # recompute fit and claims from the committed runs; say what differs
    ksir-repro --table                     # docs/studies.md's table of every claim, from the committed claims.json
    ksir-repro qat_vs_ptq --with trainer=gpu --with model.size=xl,2xl,3xl,4xl --out outputs/qat_gpu   # scaled up

Verdicts are holds / fails / inconclusive, from intervals against the study's declared margins
(`ksir.claims`). A run writes only under its `--out` folder (default `outputs/repro/<study>` in the working
directory). Exit status: 0 when every claim the study expects to hold holds; 1 when one does not (or
`--check` finds a difference); 2 for bad input. A smoke run checks the path, not the science: its claims are
reported, never fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ksir import quiet
from ksir.paths import REPO_ROOT

STUDIES = REPO_ROOT / "experiments"
PLAN_KEYS = ("start", "rounds", "args", "run_with")
PLAN_DIR, ROUNDS_FILE = "plan", "rounds.json"  # <out>/plan/: the loop's records; which round ran each job
CLAIMS_DOC = REPO_ROOT / "docs" / "studies.md"  # the table of every study's committed claims
MARKERS = ("<!-- studies:start (ksir-repro --table) -->", "<!-- studies:end -->")


@dataclass(frozen=True)
class Study:
    """A study as `study.yaml` declares it."""

    name: str
    folder: Path
    title: str
    source: str
    hardware: str
    expected_time: str
    sweeps: list[list[str]] = field(default_factory=list)  # ksir-run -m argument lists
    smoke_sweeps: list[list[str]] = field(default_factory=list)
    fit: dict[str, Any] = field(default_factory=dict)  # table, map, exclude_largest, args, runs
    # fit.runs: "trained" = a study of training itself (full-precision train jobs): its claims read every train
    # run, and no bits law is fitted (all runs are 16-bit).
    smoke_fit_args: list[str] = field(default_factory=list)
    claims: list[dict[str, Any]] = field(default_factory=list)
    # Margins declared once, each with its source (the paper's effect size, the study's own noise floor, a
    # numerical tolerance): {name: {value, source[, relative]}}; claims name the one they use.
    margins: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Smoke runs of hub families without a hub: random-weight copies of the architecture, one per size
    # ({model_type, sizes: {size: config overrides}}); each smoke sweep then runs once per size on its copy.
    local_copies: dict[str, Any] = field(default_factory=dict)
    # ksir-plan's loop beside the grid (`run_plan`): {start: [sweeps], rounds: R, args: [ksir-plan options],
    # run_with: [overrides of every planned sweep], smoke: {the same keys, for --smoke}}.
    plan: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str) -> Study:
        folder = STUDIES / name
        path = folder / "study.yaml"
        if not path.is_file():
            raise StudyError(f"no study {name!r} (studies: {', '.join(names()) or 'none'})")
        raw = yaml.safe_load(path.read_text()) or {}
        known = {f for f in cls.__dataclass_fields__ if f not in ("name", "folder")}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise StudyError(f"{path}: unknown key(s) {unknown} (allowed: {sorted(known)})")
        from ksir.claims import check

        plan = raw.get("plan") or {}
        for part in (plan, plan.get("smoke") or {}):
            bad = sorted(set(part) - set(PLAN_KEYS) - ({"smoke"} if part is plan else set()))
            if bad:
                raise StudyError(f"{path}: unknown plan key(s) {bad} (allowed: {list(PLAN_KEYS)} and smoke)")
        if plan and not all(k in plan for k in ("start", "rounds", "args")):
            raise StudyError(f"{path}: plan needs start (sweeps), rounds and args (ksir-plan's options)")
        for margin, m in (raw.get("margins") or {}).items():
            if not isinstance(m, dict) or "value" not in m or not m.get("source"):
                raise StudyError(f"{path}: margins.{margin} needs a value and its source")
        for i, c in enumerate(raw.get("claims", [])):
            missing = [k for k in ("id", "text", "kind") if k not in c]
            problem = f"lacks {missing}" if missing else check(c, raw.get("margins") or {})
            if problem:
                raise StudyError(f"{path}: claims[{i}] ({c.get('id', '?')}): {problem}")
        return cls(name=name, folder=folder, **raw)


class StudyError(ValueError):
    """A study that cannot run as declared (one line)."""


def names() -> list[str]:
    return sorted(p.parent.name for p in STUDIES.glob("*/study.yaml"))


# ---- running a study -------------------------------------------------------------------------------------


def local_copies(study: Study, out: Path) -> dict[str, Path]:
    """Random-weight copies of a hub family's architecture (scaled down), saved like a hub download with
    ksir's byte-level tokenizer: the smoke path of a study whose models the hub would provide."""
    import torch
    import transformers

    from ksir.data.tokenizer import train_byte_bpe

    spec = study.local_copies
    tok = train_byte_bpe(["a local copy"])  # 257 tokens: every byte and end-of-text, whatever the text
    paths = {}
    for size, arch in spec["sizes"].items():
        path = out / "local_copies" / size
        if not (path / "config.json").is_file():
            cfg = transformers.AutoConfig.for_model(spec["model_type"], vocab_size=len(tok), **arch)
            torch.manual_seed(0)
            transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
            tok.save_pretrained(path)
        paths[size] = path
    return paths


def run_sweeps(study: Study, out: Path, smoke: bool, checkpoints: Path | None = None,
               extra: list[str] | None = None, in_process: bool = False) -> None:
    """Each sweep through the real CLI (`ksir-run -m`, a process of its own, or with `in_process` the same
    entry point called in this process: no second start-up); finished jobs are skipped by their identity, and
    base models already in `checkpoints` (shared between studies) are not trained again."""
    sweeps = study.smoke_sweeps if smoke else study.sweeps
    if smoke and study.local_copies:
        copies = local_copies(study, out)  # one folder per size: model.checkpoint names the mirror
        mirror = next(iter(copies.values())).parent
        sweeps = [[*a, f"model.size={','.join(copies)}", f"model.checkpoint={mirror}"] for a in sweeps]
    for args in sweeps:
        sweep(study, out, [*args, *(extra or []), *([f"paths.checkpoints={checkpoints}"] if checkpoints else [])],
              in_process)


def sweep(study: Study, out: Path, args: list[str], in_process: bool) -> None:
    """`ksir-run -m ARGS out_dir=OUT`, as a study runs it (in this process with `in_process`)."""
    cmd = [str(Path(sys.executable).with_name("ksir-run")), "-m", *args, f"out_dir={out}"]
    print(f"[{study.name}] {' '.join(cmd[1:])}", flush=True)
    saved = os.environ.get("KSIR_IN_STUDY")
    os.environ["KSIR_IN_STUDY"] = "1"  # ksir.cli.STUDY_ENV (not imported here: ksir-repro --list stays light)
    try:
        code = _ksir_run_here(cmd[1:]) if in_process else subprocess.run(cmd).returncode
    finally:
        if saved is None:
            os.environ.pop("KSIR_IN_STUDY", None)
        else:
            os.environ["KSIR_IN_STUDY"] = saved
    if code != 0:
        raise StudyError(f"sweep {' '.join(args)} exited {code} (see its output above; records in {out}/results)")


def plan_settings(study: Study, smoke: bool) -> dict[str, Any]:
    plan = {k: v for k, v in study.plan.items() if k != "smoke"}
    return {**plan, **(study.plan.get("smoke") or {})} if smoke else plan


def run_plan(study: Study, out: Path, smoke: bool, checkpoints: Path | None = None, extra: list[str] | None = None,
             in_process: bool = False) -> None:
    """ksir-plan's loop, beside the grid, in <out>/plan/: its starting sweeps, then each round ksir-plan fits the
    records of the rounds before it and chooses the next runs, and ksir-run runs the preset it wrote; base models
    are shared with the grid. <out>/plan/rounds.json keeps the round that first ran each job, so a relaunch
    replays the loop: each round's ksir-plan (seeded) reads the same records as before and chooses the same
    runs, which are skipped as finished."""
    from ksir.records import iter_record_files, read_record, record_path

    ps = plan_settings(study, smoke)
    home = out / PLAN_DIR
    home.mkdir(parents=True, exist_ok=True)
    shared = [*(extra or []), f"paths.checkpoints={checkpoints or out / 'checkpoints'}"]
    path = home / ROUNDS_FILE
    rounds: dict[str, int] = json.loads(path.read_text()) if path.exists() else {}

    def run(args: list[str], r: int) -> None:
        sweep(study, home, [*args, *shared], in_process)
        for f in iter_record_files(home / "results"):
            rounds.setdefault(read_record(f)["run_key"], r)
        path.write_text(json.dumps(rounds, indent=1, sort_keys=True))

    for args in ps["start"]:
        run(list(args), 0)
    for r in range(1, int(ps["rounds"]) + 1):
        name, where = f"{study.name}_r{r}", home / f"round{r}"
        before = [str(f) for k, done_in in sorted(rounds.items())
                  if done_in < r and (f := record_path(home / "results", k)).exists()]
        argv = [*before, *map(str, ps["args"]), "--name", name, "--out", str(where)]
        print(f"[{study.name}] round {r}: ksir-plan <the {len(before)} records of rounds 0-{r - 1}> "
              f"{' '.join(argv[len(before):])}", flush=True)
        if in_process:
            from analysis.plan_cli import main as plan_main

            code = plan_main(argv)
        else:
            code = subprocess.run([str(Path(sys.executable).with_name("ksir-plan")), *argv]).returncode
        if code != 0:
            raise StudyError(f"round {r}: ksir-plan exited {code} (see its output above)")
        preset = where / "conf" / "experiment" / f"plan_{name}.yaml"
        if not preset.exists():
            print(f"[{study.name}] round {r}: ksir-plan chose no run (nothing left narrows the answer)", flush=True)
            break
        run(["--config-dir", str(where / "conf"), f"experiment=plan_{name}", *map(str, ps.get("run_with") or [])], r)


def _ksir_run_here(argv: list[str]) -> int:
    """`ksir-run ARGV` in this process: its exit status."""
    from ksir import cli

    saved = sys.argv
    sys.argv = ["ksir-run", *argv]
    try:
        cli.main()
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = saved


def collect(study: Study, out: Path) -> Any:
    """The runs the study fits: its shipped table (with its declared exclusions) or its sweep's records."""
    from analysis.collect import load_records, load_table, parse_map

    fit = study.fit
    if "table" in fit:
        runs = load_table(study.folder / fit["table"], parse_map(fit.get("map", "")), metric=fit.get("metric", "val_loss"))
    else:
        from analysis.cli import quantized_only

        runs = load_records([out / "results"], metric=fit.get("metric", "val_loss"))
        if fit.get("runs") != "trained":
            runs.runs = quantized_only(runs.runs)  # as ksir-fit does
    if study.plan:
        runs.runs = with_plan_rounds(runs.runs, out)
    for col, n in (fit.get("exclude_largest") or {}).items():
        df = runs.runs
        drop = df[col].nlargest(int(n)).index
        runs.skipped += [{"source": str(r.get("source", "")), "run_key": str(r.get("run_key", "")),
                          "reason": f"one of the {n} largest {col} (excluded by the study: {fit.get('exclude_why', '')})"}
                         for _, r in df.loc[drop].iterrows()]
        runs.runs = df.drop(index=drop).reset_index(drop=True)
    return runs


def with_plan_rounds(runs: pd.DataFrame, out: Path) -> pd.DataFrame:
    """The grid's runs with `plan_round`: the round of the plan's loop that ran the same job (0: its start;
    empty: the grid's only). A planned run the grid does not have is an error: the claim compares subsets of
    one grid."""
    from analysis.cli import quantized_only
    from analysis.collect import load_records

    path = out / PLAN_DIR / ROUNDS_FILE
    if not path.exists():
        raise StudyError(f"{path}: the plan's loop has not run (no rounds.json)")
    rounds = json.loads(path.read_text())
    planned = quantized_only(load_records([out / PLAN_DIR / "results"]).runs)
    missing = sorted(set(planned["run_key"]) - set(runs["run_key"]))
    if missing:
        raise StudyError(f"{len(missing)} planned run(s) are not in the grid (e.g. {missing[0]}): the plan's "
                         "candidates must be jobs of the grid")
    keys = set(planned["run_key"])
    return runs.assign(plan_round=[rounds.get(k) if k in keys else None for k in runs["run_key"]])


def fit_args(study: Study, smoke: bool) -> dict[str, Any]:
    """ksir-fit's options for this study (the CLI's own parser, so both accept the same words)."""
    from analysis.cli import parser, settings
    from analysis.laws import load_law_file

    args = parser().parse_args(["--out", "x", *study.fit.get("args", []), *(study.smoke_fit_args if smoke else [])])
    return {"metric": args.metric, "laws": tuple(args.law), "settings": settings(args),
            "figures": not args.no_figures, "acc_metric": args.acc_metric,
            "user_laws": tuple(load_law_file(f) for f in args.law_file)}


def judge(study: Study, report: dict[str, Any], runs: Any) -> list[dict[str, Any]]:
    """Every claim's verdict, interval and margin."""
    from ksir.claims import evaluate

    rows = []
    for c in study.claims:
        v = evaluate(c, report, runs, study.margins)
        rows.append({"id": c["id"], "claim": c["text"], "paper": c.get("paper_text", c.get("paper")),
                     "ksir": v.ksir, "interval": list(v.interval) if v.interval else None, "level": v.level,
                     "replicates": v.replicates, "share": v.share, "verdict": v.verdict, "reason": v.reason,
                     "margin": v.margin, "expect": c.get("expect", "unknown"), "source": c.get("source", study.source)})
    return rows


def markdown(study: Study, rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# {study.title}: claims", "",
             f"Measured {meta['date']} on {meta['machine']} by `ksir-repro {study.name}"
             f"{' --smoke' if meta['smoke'] else ''}` in {meta['seconds']:.0f} s (finished jobs are reused) "
             f"from {meta['n_runs']} runs ({meta.get('seeds') or 1} seed(s) per configuration). Source: {study.source}.",
             "", *claims_table(study, rows)]
    return "\n".join(lines) + "\n"


def claims_table(study: Study, rows: list[dict[str, Any]]) -> list[str]:
    """The claims (verdict, measured value and interval, why) and the margins they are judged against."""
    out = ["| claim | paper | ksir [interval] | verdict | why |", "|---|---|---|---|---|"]
    for r in rows:
        ci = r.get("interval")
        shown = _fmt(r["ksir"]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "") + \
            (f" ({r['share']:.0%} of resamples)" if r.get("share") is not None else "")
        out.append(f"| {r['claim']} | {_fmt(r['paper'])} | {shown} | **{r['verdict']}** | {r['reason']} |")
    if study.margins:
        out += ["", "Margins (declared in study.yaml before the runs, with their source):", "",
                "| margin | value | source |", "|---|---|---|"]
        out += [f"| {n} | {m['value']:g}{' (relative)' if m.get('relative') else ''} | {m['source']} |"
                for n, m in study.margins.items()]
    out += ["", "Verdicts: superiority holds when the 95% interval of the measured difference lies wholly on the "
            "claimed side of its margin, fails when wholly on the other; equivalence holds when the 90% interval "
            "lies inside (-margin, margin) (two one-sided tests), fails when wholly outside; an exact choice holds "
            "when >= 95% of seed resamples agree with the paper, fails at <= 5%; anything else is inconclusive. "
            "Intervals come from seeds (replicates); one seed gives none."]
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


# Columns of the committed runs table: what the fits and claims read (no paths, hosts or timestamps).
DROP_COLUMNS = ("source", "checkpoint", "created", "started", "git_commit", "host", "error", "upgrade_note",
                "legacy_run_keys", "init_from", "built_by")


def runs_table(runs: Any) -> pd.DataFrame:
    """The study's runs as the compact table committed beside its claims, with each record's sha256 (the
    file it came from), so a claim is tied to the exact records it was computed from."""
    import hashlib

    df = runs.runs.copy()
    if "source" in df:
        def digest(src: Any) -> str | None:
            try:
                return hashlib.sha256(Path(str(src)).read_bytes()).hexdigest()[:16]
            except OSError:
                return None

        df["record_sha256"] = df["source"].map(digest)
    return df.drop(columns=[c for c in DROP_COLUMNS if c in df])


def conclude(study: Study, runs: Any, out: Path, smoke: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Fit (when the study fits a law) and judge every claim: the part `--check` redoes from committed runs."""
    from analysis.cli import summary
    from analysis.fit import FitError
    from analysis.report import analyse

    try:
        if study.fit.get("runs") == "trained":
            raise FitError("a study of training (fit.runs: trained): its claims read the runs; no bits law to fit")
        report = analyse(runs, out, **fit_args(study, smoke))
        print(summary(report))
    except FitError as e:  # no law fits these runs: claims on laws are then inconclusive, and say why
        print(f"[{study.name}] no fit: {e}")
        report = {"laws": {}, "headline": {}, "n_runs": len(runs.runs), "fit_error": str(e)}
        (out / "fit.json").write_text(json.dumps(report, indent=2))  # says why there is no law, in place of one
    report["by_budget"] = _other_budgets(study, runs, out, smoke)
    return report, judge(study, report, runs.runs)


def provenance(study: Study, smoke: bool, table: Path | None) -> dict[str, Any]:
    """What produced these claims: the code (commit, dirty tree), the libraries, the machine, the fit
    settings, and the digest of the runs table they were computed from."""
    import hashlib

    from ksir import environment

    env = environment.collect()
    return {"git": env["git"], "python": env["python"], "packages": env["packages"], "cpu": env["cpu"],
            "lock": env["lock"], "fit_settings": fit_args(study, smoke)["settings"].as_dict(),
            "runs_sha256": hashlib.sha256(table.read_bytes()).hexdigest()[:16] if table and table.exists() else None}


def reproduce(study: Study, out: Path, smoke: bool, checkpoints: Path | None = None,
              extra: list[str] | None = None, in_process: bool = False) -> tuple[list[dict[str, Any]], int]:
    """Sweep, fit, figures, claims, all under `out`. Returns the claim rows and the exit status. `extra`
    overrides go to every sweep (e.g. a GPU-scale version of a CPU study)."""
    t0 = time.perf_counter()
    run_sweeps(study, out, smoke, checkpoints, extra, in_process)
    if study.plan:
        run_plan(study, out, smoke, checkpoints, extra, in_process)
    runs = collect(study, out)
    print(runs.report())
    table = out / "claims_runs.csv"
    if "table" not in study.fit:  # a study of a shipped table commits that table, not a copy
        runs_table(runs).to_csv(table, index=False)
    report, rows = conclude(study, runs, out, smoke)
    meta = {"study": study.name, "smoke": smoke, "date": time.strftime("%Y-%m-%d"), "machine": _machine(),
            "seconds": time.perf_counter() - t0, "n_runs": report["n_runs"], "with": extra or [],
            "seeds": int(runs.runs["seed"].nunique()) if "seed" in runs.runs else None,
            "provenance": provenance(study, smoke, table if table.exists() else None)}
    payload = json.dumps({**meta, "claims": rows}, indent=2, default=_json_default)
    md = markdown(study, rows, meta)
    (out / "claims.json").write_text(payload)
    (out / "claims.md").write_text(md)
    print("\n" + md)
    failed = [r for r in rows if r["expect"] == "hold" and r["verdict"] != "holds"]
    status = 0
    if failed and not smoke:
        print(f"ksir-repro: {len(failed)} claim(s) expected to hold here do not: "
              f"{', '.join(r['id'] for r in failed)}", file=sys.stderr)
        status = 1
    print(f"[{study.name}] outputs in {out}: claims.md, claims.json, claims_runs.csv, report.md, fit.json, figures")
    return rows, status


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    return float(o)


def update(study: Study, out: Path) -> list[Path]:
    """Copy a full run's claims (and runs table) into the study's folder and regenerate its README section:
    the only way a study writes into the checkout, and only when asked."""
    import shutil

    data = json.loads((out / "claims.json").read_text())
    if data.get("smoke") or data.get("with"):
        raise StudyError(f"{out}: a smoke or --with run is not the study's result; run the study itself to --update")
    written = []
    for name in ("claims.json", "claims.md", "claims_runs.csv"):
        if (out / name).exists():
            shutil.copyfile(out / name, study.folder / name)
            written.append(study.folder / name)
    readme = study.folder / "README.md"
    if readme.exists():
        text = readme.read_text()
        block = "\n".join([CLAIM_MARKERS[0], *claims_table(study, data["claims"]), CLAIM_MARKERS[1]])
        a, b = (text.find(m) for m in CLAIM_MARKERS)
        text = text[:a] + block + text[b + len(CLAIM_MARKERS[1]):] if 0 <= a < b else text.rstrip() + "\n\n" + block + "\n"
        readme.write_text(text)
        written.append(readme)
    return written


CLAIM_MARKERS = ("<!-- claims:start (ksir-repro --update) -->", "<!-- claims:end -->")


def check_committed(study: Study, out: Path, tolerance: float = 1e-6) -> list[str]:
    """Recompute the fit and every claim from the committed runs (no job runs) and list what differs from the
    committed claims.json: verdicts, values and intervals beyond `tolerance` (relative)."""
    from analysis.collect import Collected

    committed = study.folder / "claims.json"
    if not committed.exists():
        raise StudyError(f"{study.name}: no committed claims.json to check (run it with --update first)")
    if "table" in study.fit:
        runs = collect(study, out)
    else:
        path = study.folder / "claims_runs.csv"
        if not path.exists():
            raise StudyError(f"{study.name}: no committed claims_runs.csv to recompute from (run it with --update)")
        runs = Collected(pd.read_csv(path))
    _, rows = conclude(study, runs, out, smoke=False)
    old = {r["id"]: r for r in json.loads(committed.read_text())["claims"]}
    diffs = []
    for r in rows:
        was = old.get(r["id"])
        if was is None:
            diffs.append(f"{r['id']}: not in the committed claims")
            continue
        for key in ("verdict", "ksir", "interval", "share"):
            if not _close(was.get(key), r.get(key), tolerance):
                diffs.append(f"{r['id']}.{key}: committed {was.get(key)!r}, recomputed {r.get(key)!r}")
    diffs += [f"{i}: committed, no longer a claim" for i in old if i not in {r['id'] for r in rows}]
    return diffs


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return abs(a - b) <= tol * max(abs(a), abs(b), 1e-12) or a == b
    return a == b


def _other_budgets(study: Study, runs: Any, out: Path, smoke: bool) -> dict[str, Any]:
    """The same fit on each other memory axis a claim names (`budget: measured_bytes`), in out/<axis>/."""
    from analysis.cli import summary
    from analysis.fit import FitError
    from analysis.memory import use_measured
    from analysis.report import analyse

    axes = {c["budget"] for c in study.claims if c.get("budget") not in (None, "total_bits")}
    got: dict[str, Any] = {}
    for axis in sorted(axes):
        try:
            got[axis] = analyse(use_measured(runs), out / axis, **fit_args(study, smoke), budget=axis)
            print(f"[{study.name}] on {axis}:\n" + summary(got[axis]))
        except FitError as e:
            print(f"[{study.name}] no fit on {axis}: {e}")
    return got


def _machine() -> str:
    import os
    import platform

    return f"{os.cpu_count()}-core {platform.machine()} {platform.system()}"


# ---- the catalogue --------------------------------------------------------------------------------------


def listing() -> str:
    lines = [f"{'study':20} {'hardware':10} {'time':>10}  title"]
    for n in names():
        s = Study.load(n)
        lines.append(f"{n:20} {s.hardware:10} {s.expected_time:>10}  {s.title}")
    return "\n".join(lines)


def claims_overview() -> str:
    """Every study's committed claims, one row each (links relative to docs/)."""
    """The studies and their claims, from the committed claims.json files."""
    lines = ["| study | claim | paper | ksir [interval] | verdict |", "|---|---|---|---|---|"]
    for n in names():
        path = STUDIES / n / "claims.json"
        if not path.is_file():
            lines.append(f"| [{n}](../experiments/{n}/) | (not run yet) | | | |")
            continue
        data = json.loads(path.read_text())
        for r in data["claims"]:
            ci = r.get("interval")
            shown = _fmt(r["ksir"]) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if ci else "")
            lines.append(f"| [{n}](../experiments/{n}/) | {r['claim']} | {_fmt(r['paper'])} | {shown} | "
                         f"{r.get('verdict', r.get('holds'))} |")
    return "\n".join(lines)


def update_overview(path: Path = CLAIMS_DOC) -> None:
    text = path.read_text()
    a, b = (text.find(m) for m in MARKERS)
    if a < 0 or b < a:
        raise StudyError(f"{path}: the markers {MARKERS[0]!r} ... {MARKERS[1]!r} are missing")
    path.write_text(text[:a + len(MARKERS[0])] + "\n" + claims_overview() + "\n" + text[b:])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ksir-repro", description="Reproduce a published result and check its claims.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("study", nargs="?", help="a folder of experiments/ (see --list)")
    p.add_argument("--list", action="store_true", help="the studies, their hardware and expected time")
    p.add_argument("--smoke", action="store_true", help="tiny settings, the whole path, under a minute")
    p.add_argument("--out", help="output folder (default: outputs/repro/<study>[-smoke])")
    p.add_argument("--checkpoints", help="trained base models, shared between studies (default: <out>/checkpoints)")
    p.add_argument("--with", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="an override added to every sweep (repeatable), e.g. --with trainer=gpu; the claims are "
                        "written to --out only")
    p.add_argument("--in-process", action="store_true",
                   help="run the sweeps in this process rather than one ksir-run process each (no second start-up)")
    p.add_argument("--table", "--readme", dest="table", action="store_true",
                   help="rewrite docs/studies.md's table of every study's claims from the committed claims.json")
    p.add_argument("--update", action="store_true",
                   help="after a full run, copy claims.md/json and claims_runs.csv into experiments/<study>/ and regenerate "
                        "its README's claims section (the only write into the checkout)")
    p.add_argument("--check", action="store_true",
                   help="recompute the fit and the claims from the committed runs (no job runs); exit 1 if anything "
                        "differs from the committed claims.json")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the libraries' own logs, tips and progress bars (quiet by default)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.verbose:
        os.environ[quiet.VERBOSE_ENV] = "1"
    quiet.apply()
    try:
        if a.update and (a.smoke or a.extra or a.check):
            flag = "--smoke" if a.smoke else "--check" if a.check else "--with"
            raise StudyError(f"--update commits a full run's claims into experiments/<study>/; not with {flag} "
                             "(its claims stay in --out)")
        for o in a.extra:
            if "=" not in o and not o.startswith("~"):
                raise StudyError(f"--with {o!r}: expected KEY=VALUE (e.g. --with trainer=gpu)")
        if a.list:
            print(listing())
            return 0
        if a.table:
            update_overview()
            print(f"updated {CLAIMS_DOC}")
            return 0
        if not a.study:
            raise StudyError(f"name a study (studies: {', '.join(names())}) or pass --list")
        study = Study.load(a.study)
        kind = "check" if a.check else "smoke" if a.smoke else ""
        out = Path(a.out or Path("outputs") / "repro" / (study.name + (f"-{kind}" if kind else ""))).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        out = out.resolve()
        if a.check:
            diffs = check_committed(study, out)
            for d in diffs:
                print(f"  differs: {d}")
            print(f"[{study.name}] --check: {'the committed claims are reproduced' if not diffs else f'{len(diffs)} difference(s)'}"
                  f" (recomputed from {study.folder / study.fit.get('table', 'claims_runs.csv')}"
                  f"; outputs in {out})")
            return 1 if diffs else 0
        _, status = reproduce(study, out, a.smoke, Path(a.checkpoints).expanduser().resolve() if a.checkpoints else None,
                              a.extra, a.in_process)
        if a.update:
            for path in update(study, out):
                print(f"[{study.name}] updated {path}")
        return status
    except (StudyError, ValueError, KeyError) as e:
        print(f"ksir-repro: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
