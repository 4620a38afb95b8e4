"""Every command the docs show is run here as written, or with a substitution this file states, and its exit
status and a line of its output are checked: a documented command that breaks fails CI.

Commands are read from the fenced and indented code blocks of README.md and docs/*.md (and the `ksir-run -m`
examples in conf/ comments). Each must have a plan in PLANS: run as written; run with `add` (tiny settings
or `dry_run=true` for a sweep that would take minutes or hours; a key the command sets is replaced, any other
appended) or `replace` (one token for another); or a declared skip with its reason (a GPU, the hub, a SLURM
cluster, or a command that writes into this checkout). A command added to the docs without a plan, or a plan
whose command left the docs, fails `test_every_documented_command_has_a_plan`.

They run in one workspace (cwd) per module, in the entry points' in-process form (`tests.helpers.run_here`:
the same argv, folder, exit status and output); the workspace holds what the docs assume exists, made here:
synthetic result records under outputs/demo and outputs/tiny, a nested runs.jsonl, and `experiments/`.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ksir.paths import REPO_ROOT
from tests.helpers import TINY, run_here
from tests.test_analysis_report import synthetic_records

PROGRAMS = ("ksir-run", "ksir-fit", "ksir-repro", "ksir-migrate", "make", "python", "pip")
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
SHORT = ("trainer.min_steps=10", "trainer.max_steps=10")  # that a job runs, not what it learns
QUICK = ("trainer.min_steps=5", "trainer.max_steps=5", "logger=none")  # QAT recipes: that they run, not learn
DRY = ("dry_run=true",)
# Offline, a Pythia sweep stops at the weights, in one line naming them (a user with them cached plans it).
OFFLINE_PYTHIA = "invalid model.checkpoint='EleutherAI/pythia-70m': not in the local Hugging Face cache"


@dataclass(frozen=True)
class Plan:
    add: tuple[str, ...] = ()  # overrides substituted (same key replaced) or appended
    replace: tuple[tuple[str, str], ...] = ()  # (token as documented, token run)
    code: int = 0  # expected exit status
    says: str = ""  # a text the output must contain (stdout or stderr)
    skip: str = ""  # not run, and why


def tiny(*more: str) -> tuple[str, ...]:
    return (*TINY, *more)


PLANS: dict[str, Plan] = {
    # README.md
    "make demo": Plan(skip="CI runs the demo's path as `ksir-repro demo --smoke` (tests/test_repro.py); the full "
                           "run takes minutes (docs/demo-transcript.md is its transcript)"),
    "make test": Plan(skip="this suite is what it runs"),
    "ksir-run": Plan(add=tiny(*SHORT), says="upload with: wandb sync "),  # logged to W&B offline: says where
    "ksir-run job=train model.size=m trainer.tokens_per_param=20": Plan(add=tiny(*SHORT, "logger=none"),
                                                                        says="[train] llama-m train: val_loss="),
    "ksir-run job=quantize model.size=m quant.bits=4 quant.blocksize=64": Plan(
        add=tiny(*SHORT, "logger=none"), says="[quantize] llama-m quantize int4 b64 rtn: val_loss="),
    "ksir-run -m job=quantize model.size=xs,s,m quant.bits=2,3,4,5,6,8,16 seed=0,1,2": Plan(
        add=DRY, says="[sweep] dry run: 72 jobs planned, none run"),
    "ksir-run -m job=train qat=lsq qat.bits=2,3,4": Plan(add=DRY, says="[sweep] dry run: 3 jobs planned"),
    "ksir-run -m job=quantize quant.backend=hqq quant.dtype=int_asym quant.bits=2,3,4": Plan(
        add=DRY, says="[sweep] dry run: 4 jobs planned"),
    "ksir-run -m experiment=paper_grid dry_run=true": Plan(says="[sweep] dry run: 260 jobs planned, none run"),
    "ksir-run -m job=quantize quant.bits=4,99": Plan(code=2, says="invalid quant.bits=99.0"),
    "ksir-fit outputs/demo/results --out fit": Plan(says="Answer:"),
    "ksir-fit --wandb entity/project --out fit": Plan(code=2, says="--wandb entity/project: not logged in to W&B"),
    "ksir-fit --table experiments/chinchilla_epoch/data/svg_extracted_data.csv --map 'Model Size=n_params,Training "
    "FLOP=train_flops,loss=val_loss' --out chin": Plan(says="compute-optimal"),
    "ksir-fit --table runs.jsonl --map args.n=n_params,args.bits=bits,eval.loss=val_loss --law efficiency --out refit":
        Plan(says="Answer:"),
    "ksir-run -m launcher=joblib hydra.launcher.n_jobs=8 experiment=demo": Plan(
        add=DRY, says="[sweep] dry run: 32 jobs planned"),
    "ksir-run -m launcher=slurm hydra.launcher.partition=gpu trainer=gpu model=pythia model.size=70m,160m,410m,1b "
    "job=quantize quant.bits=3,4,5,6,8,16 data=pile_val out_dir=outputs/pythia": Plan(
        add=DRY, code=2, says=OFFLINE_PYTHIA),  # the plan needs no cluster, but offline it stops at the weights
    "ksir-fit outputs/pythia/results --out outputs/pythia": Plan(
        skip="fits the records of the GPU sweep above (Pythia weights from the hub); the same command on local "
             "records runs above (ksir-fit outputs/demo/results)"),
    # docs/analysis.md
    "ksir-fit outputs/demo/results --out outputs/demo/fit": Plan(says="Answer:"),
    "ksir-fit --table runs.jsonl --map args.n=n_params,args.bits=bits,eval.loss=val_loss --out refit":
        Plan(says="Answer:"),
    "ksir-fit 'outputs/*/results' --dtype int --law efficiency precision --bootstrap 1000 --out fit": Plan(
        replace=(("1000", "50"),), says="Answer:"),
    "ksir-fit outputs/demo/results --out fit --predict n_params=1e8,bits=4 --predict n_params=1e8,bits=3": Plan(
        says="predicted (--predict"),
    'ksir-fit --wandb me/ksir --wandb-filter \'{"config.quant.dtype": "nf"}\' --wandb-group sweep-1 --out from_wandb':
        Plan(code=2, says="--wandb me/ksir: not logged in to W&B"),
    # docs/deploy.md
    "pip install 'ksir[deploy]'": Plan(skip="installs from the network (make setup installs the extra)"),
    "ksir-run -m job=quantize model.size=xs,s,m,l quant.backend=hqq quant.dtype=int_asym quant.bits=2,3,4,8,16": Plan(
        add=DRY, says="[sweep] dry run: 24 jobs planned"),
    "ksir-run -m job=quantize quant.backend=bitsandbytes quant.dtype=nf quant.bits=4 quant.scale_bits=16,8": Plan(
        add=DRY, says="[sweep] dry run: 3 jobs planned"),
    "ksir-fit outputs/results --out fit_measured --budget measured_bytes": Plan(
        skip="runs on the packed records of a two-size HQQ sweep in tests/test_deploy.py::"
             "test_a_packed_quantize_job_end_to_end_and_fit_on_measured_bytes (packing and timing a sweep here "
             "would repeat it)"),
    # docs/precisions.md (one size, one activation and KV width: every axis runs, rotated and not)
    "ksir-run -m job=quantize model.size=xs,s,m quant.bits=4 quant.act.bits=4,8,16 quant.kv.bits=4,16 "
    "quant.rotate=none,hadamard": Plan(add=tiny(*SHORT, "logger=none", "model.size=xs"),
                                       replace=(("quant.act.bits=4,8,16", "quant.act.bits=4"),
                                                ("quant.kv.bits=4,16", "quant.kv.bits=4")),
                                       says="llama-xs quantize int4 b64 rtn a4 kv4 hadamard"),
    "ksir-fit outputs/ --budget inference --context 4096 --batch 1": Plan(
        skip="needs records with kv_bits_per_token at several kv_bits; the same flags run on such a table in "
             "tests/test_analysis_inference.py"),
    "ksir-run -m job=quantize model.size=s quant.bits=2 'quant.layer_bits={first:8,last:8}'": Plan(
        add=DRY, says="llama-s quantize int2 b64 rtn layers first=8,last=8"),
    "ksir-run -m job=quantize model.size=s quant.bits=2.5,3,3.5 'quant.allocate.candidates=[2,3,4,8]'": Plan(
        add=DRY, says="[sweep] dry run: 4 jobs planned"),
    # docs/qat.md
    "ksir-run job=train qat=lsq qat.bits=2": Plan(add=tiny(*QUICK), says="QAT 2-bit"),
    "ksir-run job=train qat=lsq qat.bits=2 qat.init_from=auto": Plan(add=tiny(*QUICK), says="QAT 2-bit"),
    "ksir-run job=train qat=lsq qat.bits=2 qat.init_from=auto qat.distill.weight=0.5": Plan(
        add=tiny(*QUICK), says="QAT 2-bit"),
    "ksir-run job=train qat=paretoq": Plan(add=tiny(*QUICK), says="QAT 1.58-bit"),
    "ksir-run job=train qat=ksir qat.attention.bits=4": Plan(add=tiny(*QUICK), says="[train] llama-xs train"),
    "ksir-run -m experiment=tiny": Plan(add=DRY, says="[sweep] dry run: 16 jobs planned"),
    "ksir-run -m experiment=qat_vs_ptq": Plan(add=DRY, says="jobs planned, none run"),
    "ksir-fit outputs/tiny/results --out outputs/tiny/fit": Plan(says="Answer:"),
    # docs/runs.md
    "ksir-run -m launcher=submitit_local experiment=demo": Plan(add=DRY, says="[sweep] dry run: 32 jobs planned"),
    "ksir-run -m launcher=slurm hydra.launcher.partition=gpu trainer=gpu model=pythia model.size=70m,160m,410m,1b "
    "job=quantize quant.bits=3,4,5,6,8,16": Plan(add=DRY, code=2, says=OFFLINE_PYTHIA),
    "make setup TORCH=torch": Plan(skip="installs a CUDA build of torch from the network"),
    "ksir-run -m trainer=gpu model=pythia model.size=70m,160m,410m,1b,1.4b job=quantize quant.bits=3,4,5,6,8,16 "
    "data=pile_val eval.sequences=512 out_dir=outputs/pythia": Plan(code=2, says=OFFLINE_PYTHIA),
    # docs/studies.md
    "ksir-repro --list": Plan(says="kbit_own_family"),
    "ksir-repro kbit_own_family": Plan(
        skip="an hour of CPU; its whole path runs as `ksir-repro kbit_own_family --smoke` in tests/test_repro.py"),
    "ksir-repro kbit_own_family --update": Plan(skip="writes into this checkout's experiments/ (after a full run)"),
    "ksir-repro demo --check": Plan(says="the committed claims are reproduced"),
    "ksir-repro demo --smoke --out /tmp/s": Plan(
        skip="runs as `ksir-repro demo --smoke --out <tmp>` in tests/test_repro.py (its own folder there)"),
    "ksir-repro qat_vs_ptq --checkpoints outputs/checkpoints": Plan(
        skip="an hour of CPU; its whole path runs as `ksir-repro qat_vs_ptq --smoke --checkpoints ...` in "
             "tests/test_repro.py"),
    "ksir-repro --table": Plan(skip="rewrites docs/studies.md of this checkout; tests/test_repro.py checks that "
                                    "the committed table is what it writes"),
    "ksir-repro qat_vs_ptq --with trainer=gpu --with model.size=xl,2xl,3xl,4xl --out outputs/qat_gpu": Plan(
        code=2, says="ksir-repro: error: sweep experiment=tiny"),  # a CPU machine: its first sweep refuses trainer=gpu
    # conf/ comments
    "ksir-run -m job=quantize quant.dtype=int,float,nf,dynamic quant.blocksize=16,64 quant.bits=3,4,5,6,8": Plan(
        add=DRY, says="[sweep] dry run: 41 jobs planned"),
    "ksir-run -m job=train qat=lsq qat.bits=2,3,4 qat.init_from=null,auto": Plan(
        add=DRY, says="[sweep] dry run: 7 jobs planned"),
    "ksir-run -m key=a,b,c": Plan(skip="a placeholder in conf/config.yaml's header"),
    # docs/zeroshot.md (python blocks: run with `model` and `tokenizer` in scope, a tiny random model)
    "python: from ksir.config import compose_spec": Plan(says="zs_acc_mean"),
    "python: from ksir.zeroshot import render_task_yamls": Plan(says="ksir_piqa.yaml"),
}


def _blocks(text: str):
    """(language, lines) of each fenced block, and ("indented", lines) of each 4-space block."""
    lines, i = text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^```(\w*)", lines[i])
        if m:
            j = i + 1
            while not lines[j].startswith("```"):
                j += 1
            yield m.group(1), lines[i + 1:j]
            i = j + 1
            continue
        if lines[i].startswith("    ") and (i == 0 or not lines[i - 1].strip()):
            j = i
            while j < len(lines) and (lines[j].startswith("    ") or not lines[j].strip()):
                j += 1
            yield "indented", [ln[4:] for ln in lines[i:j]]
            i = j
            continue
        i += 1


def documented() -> list[tuple[str, str]]:
    """(where, command) for every command in the docs, in order; shell lines joined at `\\`, comments cut,
    `a && b` split; a python block is "python: <its first line>" (its text is looked up by `python_block`)."""
    out = []
    for doc in DOCS:
        for lang, body in _blocks(doc.read_text()):
            if lang == "python":
                out.append((doc.name, f"python: {body[0].strip()}"))
                continue
            joined, buf = [], ""
            for ln in body:
                if ln.rstrip().endswith("\\"):
                    buf += ln.rstrip()[:-1] + " "
                    continue
                joined.append(buf + ln)
                buf = ""
            for i, ln in enumerate(joined):
                s = ln.strip()
                if lang == "text" and not s.startswith("$ "):
                    continue  # output shown under a command
                if lang == "text":  # the output shown under it (scripts/doc_outputs.py writes it)
                    rest = joined[i + 1:]
                    SHOWN[s.removeprefix("$ ")] = "\n".join(rest[:next((j for j, r in enumerate(rest)
                                                                           if r.startswith("$ ")), len(rest))])
                s = s.removeprefix("$ ")
                for part in s.split("&&"):
                    part = part.strip()
                    if part.startswith(PROGRAMS):
                        out.append((doc.name, shlex.join(shlex.split(part, comments=True))))
    for cfg in sorted((REPO_ROOT / "conf").rglob("*.yaml")):
        for m in re.finditer(r"#.*?`?(ksir-run -m [^#`\n]*)", cfg.read_text()):
            out.append((f"conf/{cfg.relative_to(REPO_ROOT / 'conf')}", shlex.join(shlex.split(m.group(1)))))
    return out


def python_block(first_line: str) -> str:
    for doc in DOCS:
        for lang, body in _blocks(doc.read_text()):
            if lang == "python" and body[0].strip() == first_line:
                return "\n".join(body)
    raise KeyError(first_line)


def argv(command: str, plan: Plan, cache: Path) -> list[str]:
    """The documented command with the plan's substitutions (visible in PLANS above)."""
    tokens = shlex.split(command)
    for old, new in plan.replace:
        tokens = [new if t == old else t for t in tokens]
    if tokens[0] == "ksir-run":
        adds = [*plan.add, *([f"paths.cache={cache}"] if command not in SHOWN else [])]  # shown: as written
        keys = {a.split("=")[0] for a in adds}
        tokens = [t for t in tokens if t.split("=")[0] not in keys] + adds
    return tokens


SHOWN: dict[str, str] = {}  # command -> the output the docs show under it
COMMANDS = documented()


def test_every_documented_command_has_a_plan():
    names = [c for _, c in COMMANDS]
    missing = [f"{where}: {c}" for where, c in COMMANDS if c not in PLANS]
    assert not missing, "documented commands without a plan in tests/test_docs_commands.py:\n" + "\n".join(missing)
    stale = sorted(set(PLANS) - set(names))
    assert not stale, f"plans for commands no longer in the docs: {stale}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, cache_dir):
    """A user's folder with what the docs assume is there (made here, not downloaded)."""
    w = tmp_path_factory.mktemp("docs")
    (w / "experiments").symlink_to(REPO_ROOT / "experiments")
    sizes = [2e5, 1e6, 5e6, 2.5e7, 1e8]
    synthetic_records(w / "outputs" / "demo" / "results", sizes=sizes, ks=(2, 3, 4, 6, 8, 16))
    synthetic_records(w / "outputs" / "tiny" / "results", sizes=sizes, ks=(2, 4, 16), seed=1)
    rng = np.random.default_rng(0)  # someone's own table: nested JSON lines
    with (w / "runs.jsonl").open("w") as f:
        for n in np.geomspace(1e6, 1e9, 6):
            for k, eff in ((2, 0.3), (3, 0.6), (4, 0.8), (8, 0.97), (16, 1.0)):
                loss = (1.9 + 300 * (n * eff) ** -0.3) * np.exp(rng.normal(0, 0.003))
                f.write(json.dumps({"args": {"n": n, "bits": k}, "eval": {"loss": loss}}) + "\n")
    return {"path": w, "cache": cache_dir}


def _run(command: str, plan: Plan, ws: dict, monkeypatch) -> str:
    w = ws["path"]
    if command.startswith("python: "):
        return _run_python(python_block(command.removeprefix("python: ")), w, monkeypatch)
    r = run_here(*argv(command, plan, ws["cache"]), cwd=w)
    said = r.stdout + r.stderr
    assert r.returncode == plan.code, f"{command}: exit {r.returncode}, expected {plan.code}\n{said[-3000:]}"
    return said


def _run_python(code: str, w: Path, monkeypatch) -> str:
    import contextlib
    import io

    from transformers import LlamaConfig, LlamaForCausalLM

    from ksir.data.tokenizer import train_byte_bpe

    tok = train_byte_bpe(["a byte-level tokenizer"])
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    monkeypatch.chdir(w)
    out = io.StringIO()
    scope = {"model": model, "tokenizer": tok}
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<docs>", "exec"), scope)  # noqa: S102 - the documented snippet, as written
    shown = {k: v for k, v in scope.items() if not k.startswith("__") and k not in ("model", "tokenizer")}
    return out.getvalue() + repr(shown)


@pytest.mark.parametrize("where,command", COMMANDS, ids=[f"{w}:{c[:60]}" for w, c in COMMANDS])
def test_documented_command(where, command, workspace, monkeypatch):
    plan = PLANS.get(command)
    if plan is None:
        pytest.fail(f"no plan for {where}: {command}")
    if plan.skip:
        pytest.skip(plan.skip)
    if "no CUDA device" in plan.says:
        import torch

        if torch.cuda.is_available():
            pytest.skip("shows what a CPU machine says")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)  # the W&B examples run logged out (one-line refusal)
    monkeypatch.setenv("HOME", str(workspace["path"]))  # no ~/.netrc; ~ is the workspace
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    said = _run(command, plan, workspace, monkeypatch)
    assert plan.says in said, f"{command}: {plan.says!r} not in the output:\n{said[-3000:]}"
    if command in SHOWN:  # the docs show this command's output: it must be what it prints now
        shown = SHOWN[command].strip()
        assert shown == f"{said.strip()}\n(exit status {plan.code})", \
            f"{command}: the docs show\n{shown}\nbut it prints\n{said.strip()}\n(python scripts/doc_outputs.py rewrites it)"


@pytest.mark.parametrize("module,prog", [("analysis.cli", "ksir-fit"), ("ksir.repro", "ksir-repro")])
def test_the_examples_in_help_parse(module, prog):
    """Every example line of `--help` is a valid command line for its parser (required options included)."""
    import importlib

    mod = importlib.import_module(module)
    examples = [ln.strip() for ln in mod.__doc__.splitlines() if ln.strip().startswith(prog + " ")]
    assert len(examples) >= 4
    for line in examples:
        args = shlex.split(line, comments=True)[1:]
        try:
            mod.parser().parse_args(args)
        except SystemExit:
            pytest.fail(f"{prog} --help shows an example its parser refuses: {line}")


def test_the_readme_opens_with_the_two_commands_and_reads_in_five_minutes():
    """Issue 26's README: the two commands a fresh machine runs come first (each a Makefile target), and it
    stays at most 150 lines; the rest lives in docs/."""
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines (at most 150: move detail into docs/)"
    block = lines[lines.index("```bash") + 1:]
    first = [ln.split("#")[0].strip() for ln in block[:block.index("```")]]
    assert first == ["make demo", "make test"] and lines.index("```bash") < 5
    targets = set(re.findall(r"^([a-z-]+):", (REPO_ROOT / "Makefile").read_text(), re.M))
    assert {"demo", "test"} <= targets
