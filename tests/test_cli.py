"""The real `ksir-run` / `ksir-fit` command lines, run as a user would, with tiny settings."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ksir.records import iter_record_files, read_record

from .helpers import run_cli, run_here


@pytest.mark.parametrize("args,needle", [
    (["model.family=nope"], "model.family='nope'"),
    (["model.size=huge"], "model.size='huge'"),
    (["job=quantize", "quant.bits=17"], "quant.bits"),
    (["job=quantize", "quant.bits=4", "quant.blocksize=48"], "quant.blocksize"),
    (["job=quantize", "model.checkpoint=/no/such/model"], "model.checkpoint"),
    (["job=quantize", "model=pythia", "model.checkpoint=./missing-pythia"], "model.checkpoint"),
    (["job=train", "model=opt"], "hub family"),
    (["job=quantize", "model.train_if_missing=false"], "model.train_if_missing"),  # base model not trained
    (["job=quantize", "quant.backend=bitsandbytes", "quant.bits=3"], "no packed kernel for int3 block 64"),
    (["job=quantize", "quant.backend=torchao", "quant.bits=4", "quant.dtype=int_asym", "eval.device=cpu"],
     "int4_weight_only runs on cuda only"),  # a GPU-only kernel on a CPU job: refused before training
])
def test_invalid_values_fail_at_once_with_one_line(tmp_path, args, needle):
    r = run_cli("ksir-run", *args, f"out_dir={tmp_path}", cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("invalid ") and needle in lines[0], lines[0]
    assert not (tmp_path / "results").exists(), "nothing was computed or written"


def test_invalid_value_in_a_sweep_fails_before_the_first_job(tmp_path):
    r = run_cli("ksir-run", "-m", "job=quantize", "quant.bits=4,99", f"out_dir={tmp_path}", cwd=tmp_path, timeout=120)
    assert r.returncode != 0
    assert "quant.bits" in r.stderr and "99" in r.stderr
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()


def test_end_to_end_sweep_then_fit(tmp_path, cache_dir):
    out = tmp_path / "sweep"
    r = run_cli("ksir-run", "-m", "experiment=tiny", "trainer.min_steps=40", "trainer.max_steps=40", f"out_dir={out}",
                f"paths.cache={cache_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = [read_record(p) for p in iter_record_files(out / "results")]
    quant = [x for x in recs if x["job"] == "quantize"]
    train = [x for x in recs if x["job"] == "train"]
    assert len(quant) == 4 * 3 and len(train) == 4  # sizes xs,s,m,l x bits 2,4,16; each size trained once
    # ... as its own job, in a first wave: every base model was saved before any quantize job started.
    assert "12 jobs validated" in r.stdout and "4 train job(s) they need run first" in r.stdout
    assert max(x["created"] for x in train) <= min(x["started"] for x in quant)
    assert "[sweep 16/16]" in r.stdout and "ETA" in r.stdout and "train step" in r.stdout
    assert "LeafSpec" not in r.stderr  # Lightning's per-step deprecation warning is silenced at import
    # Quiet by default: the job's own lines, not the libraries' (Hydra's launcher, Lightning's banners and tips).
    said = r.stdout + r.stderr
    for chatter in ("[HYDRA]", "Launching 1 jobs", "GPU available", "TPU available", "Tip:", "srun", "fatal:"):
        assert chatter not in said, chatter
    table = r.stdout[r.stdout.index("every job: "):]
    deps = [ln for ln in table.splitlines() if ln.split()[-1:] == ["job=train"] or " t-" in ln]
    assert len(deps) == 4 and not any("quant.bits" in ln for ln in deps), deps  # dependencies: their own labels
    # What next: where the results are, the command that fits them, where W&B logged and how to upload it.
    nxt = next(ln for ln in r.stdout.splitlines() if ln.startswith("next: ksir-fit "))
    fit_cmd = nxt.removeprefix("next: ").split("   (")[0].split()
    assert fit_cmd == ["ksir-fit", str(out / "results"), "--out", str(out / "fit")]
    assert f"W&B: 16 run(s) logged offline in {out / 'wandb'}; upload with: wandb sync {out / 'wandb'}/offline-run-*" \
        in r.stdout
    for x in quant:  # the 16-bit baseline is scheme-free: one job per base model whatever the scheme
        scheme = ("rtn", "int", 64) if x["bits"] < 16 else ("none", "none", None)
        assert x["status"] == "done" and (x["method"], x["dtype"], x["blocksize"]) == scheme
        for field in ("n_params", "n_params_nonembedding", "total_bits", "wall_time_s", "git_commit", "config"):
            assert field in x
        assert x["metrics"]["val_loss"] > 0 and 0 <= x["metrics"]["val_acc"] <= 1
        if x["bits"] == 16:
            assert x["total_bits"] == 16 * x["n_params"]
        else:
            assert x["total_bits"] < 16 * x["n_params"]
    # Quantization changed every model, and the 16-bit job reproduces its base model's own evaluation.
    # (Whether 2 bits cost loss is not asserted: these 40-step models are barely trained, and
    # 2-bit noise can even help them; the demo's longer-trained models show the cost.)
    by = {(x["size"], x["bits"]): x["metrics"]["val_loss"] for x in quant}
    base = {x["size"]: x["metrics"]["val_loss"] for x in train}
    for size in ("xs", "s", "m", "l"):
        assert by[(size, 2.0)] != by[(size, 16.0)] and by[(size, 16.0)] == base[size]
    # Every record says what produced it: this interpreter and torch, and the same data for every job.
    import platform

    envs = [x["environment"] for x in recs]
    assert {e["python"] for e in envs} == {platform.python_version()}
    assert all(e["torch"]["cpu_capability"] and e["packages"]["torch"] for e in envs)
    assert len({(e["data"]["documents"], e["data"]["tokens"]) for e in envs}) == 1
    # Every job has its W&B offline run, named by its run key.
    wandb_runs = list((out / "wandb").glob("offline-run-*"))
    assert {p.name.rsplit("-", 2)[-2] + "-" + p.name.rsplit("-", 2)[-1] for p in wandb_runs} >= {x["run_key"] for x in recs}

    fit_dir = out / "fit"
    r = run_here(*fit_cmd, cwd=tmp_path)  # the command the sweep printed, as printed (ksir-fit's own process:
    # tests/test_analysis_tables.py)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = pd.read_csv(fit_dir / "runs.csv")
    assert len(runs) == 12 and set(runs["bits"]) == {2, 4, 16}
    fit = json.loads((fit_dir / "fit.json").read_text())
    curves = {s["group"]["bits"]: s for s in fit["laws"]["power_bits"]}
    assert set(curves) == {2.0, 4.0, 16.0} and all(s["goodness_of_fit"]["n"] == 4 for s in curves.values())
    # Whether these curves fall with size is not asserted: 40-step models are barely trained, and on some
    # CPUs their loss rises with size (kernels differ by instruction set). What must hold on any machine:
    # every fitted law carries a verdict that explains anything short of "ok" and lists the parameters
    # sitting on a bound, and the headline trusts only a law whose every fit is "ok".
    verdicts = {}
    for tag, entry in fit["laws"].items():
        for s in entry if isinstance(entry, list) else [entry]:
            v = s["verdict"]
            assert v["status"] in ("ok", "poor", "unidentified") and (v["status"] == "ok" or v["reasons"]), (tag, v)
            assert set(v["at_bound"]) == {n for n, p in s["params"].items() if p["at_bound"]}, (tag, v)
            verdicts.setdefault(tag.split("[")[0], []).append(v["status"])
    assert {"power_bits", "precision", "efficiency"} <= set(verdicts)
    trusted = fit["headline"]["trusted"]
    assert trusted is None or set(verdicts[trusted]) == {"ok"}, (trusted, verdicts)
    assert {r["best"] for r in fit["optimal"]} <= {"2", "4", "16 (unquantized)"} and len(fit["optimal"]) > 5
    assert fit["headline"]["question"] == "bits" and "Answer:" in r.stdout
    assert (fit_dir / "bit_scaling.png").stat().st_size > 10_000

    # Relaunching the same sweep skips every finished job.
    r = run_here("ksir-run", "-m", "experiment=tiny", "trainer.min_steps=40", "trainer.max_steps=40", f"out_dir={out}",
                 f"paths.cache={cache_dir}", cwd=tmp_path)
    assert r.returncode == 0 and "0 done, 12 skipped, 0 failed" in r.stdout


def test_verbose_shows_the_libraries_own_lines(tmp_path, cache_dir):
    """-v lets through what is silenced by default (Lightning's device banner, Hydra's launcher), for debugging."""
    from .helpers import TINY

    args = ["job=train", "model.size=xs", *TINY, "trainer.min_steps=5", "trainer.max_steps=5", "logger=none",
            f"out_dir={tmp_path}", f"paths.cache={cache_dir}"]
    r = run_cli("ksir-run", "-v", "-m", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "GPU available" in r.stdout + r.stderr and "Launching 1 jobs" in r.stdout + r.stderr
    # A sweep of full-precision training only: the fit it suggests includes train records (--all-jobs).
    assert f"next: ksir-fit {tmp_path / 'results'} --out {tmp_path / 'fit'} --all-jobs" in r.stdout
