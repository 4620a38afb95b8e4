"""`ksir-plan`: the next runs that most sharpen an answer, per unit of compute.

    ksir-plan outputs/demo/results --question bits --target 3e6 --budget 10m --experiment demo
    ksir-plan outputs/demo/results --question size --target n_params=2e6,bits=4 --budget 5m
    ksir-plan outputs/train/results --question compute --target 1e15 --budget 2h --tokens-per-param 10,40

Fits the runs (per-k power laws with bootstrap replicates), values every candidate run (a size x k not run yet,
from the family's sizes, or on ksir's own family a replicate at a new training seed) by how much it is expected
to narrow the target (analysis.plan), and writes the chosen batch: plan.md (each run, its cost, its expected
effect and why), plan.json, plan.png (where the runs sit on the current fit) and a Hydra preset that launches the
batch as is:

    ksir-run -m --config-dir <out>/conf experiment=plan_<name>
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from analysis.plan import (
    QUESTIONS,
    bits_problem,
    compute_problem,
    cost_model,
    greedy_batch,
    scheme_runs,
    trained_bases,
)

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_budget(text: str) -> tuple[float, str]:
    """`30m`, `600s`, `2h` (seconds) or `1e15flops` (FLOPs)."""
    m = re.fullmatch(r"\s*([0-9.eE+-]+)\s*(s|m|h|flops)\s*", text or "")
    if not m:
        raise ValueError(f"--budget {text!r}: expected a number with a unit: 600s, 30m, 2h or 1e15flops")
    try:
        value = float(m.group(1))
    except ValueError as e:
        raise ValueError(f"--budget {text!r}: {m.group(1)!r} is not a number") from e
    if not value > 0:
        raise ValueError(f"--budget {text!r}: must be > 0")
    return (value, "FLOPs") if m.group(2) == "flops" else (value * UNITS[m.group(2)], "s")


def _positive(text: str | None, what: str, example: str) -> float:
    """--target as one number > 0, or the one-line error naming the question's quantity."""
    try:
        value = float(text or "")
    except ValueError:
        raise ValueError(f"--target {text!r}: {what}, e.g. --target {example}") from None
    if not value > 0:
        raise ValueError(f"--target {text!r}: {what.split(' needs ')[-1]} > 0")
    return value


def parse_target(question: str, text: str | None) -> dict[str, float]:
    if question == "compute":
        return {"flops": _positive(text, "the compute question needs a FLOP budget", "1e15")}
    if question == "bits":
        return {"budget_bits": _positive(text, "the bits question needs a total-bit budget", "3e6")}
    out: dict[str, float] = {}
    for part in (text or "").split(","):
        key, _, val = part.partition("=")
        if key.strip() not in ("n_params", "bits") or not val:
            raise ValueError(f"--target {text!r}: the size question needs n_params=N[,bits=k], e.g. n_params=2e6,bits=4")
        out[key.strip()] = float(val)
    if "n_params" not in out or not out["n_params"] > 0:
        raise ValueError(f"--target {text!r}: n_params=N (> 0) is required")
    return out


def parse_laws(text: str | None, question: str = "bits") -> tuple[str, ...] | None:
    """--laws: None (the other laws the runs identify well), () for 'none', or the named laws: joint laws L(N, k)
    for the bits and size questions, L(N, D) laws beside Chinchilla's for the compute question."""
    from analysis.plan import COMPUTE_LAWS, JOINT_LAWS

    if text is None:
        return None
    names = tuple(x.strip() for x in text.split(",") if x.strip())
    if names == ("none",):
        return ()
    allowed = COMPUTE_LAWS if question == "compute" else JOINT_LAWS
    bad = [x for x in names if x not in allowed]
    if bad or not names:
        raise ValueError(f"--laws {text!r}: expected 'none' or laws from {', '.join(allowed)} (the {question} question)")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ksir-plan", description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="+", help="result record folders, files or globs (as ksir-fit takes them)")
    p.add_argument("--question", choices=QUESTIONS, default="bits")
    p.add_argument("--target", help="bits: a total-bit budget (3e6); size: n_params=N[,bits=k]")
    p.add_argument("--budget", required=True, help="what the batch may cost: 600s, 30m, 2h or 1e15flops")
    p.add_argument("--sizes", help="candidate sizes of the family, comma-separated (default: all)")
    p.add_argument("--max-size", help="largest candidate size (a size name)")
    p.add_argument("--bits", help="candidate bit-widths, comma-separated (default: those already fitted)")
    p.add_argument("--seeds", type=int, default=3, help="bits and size questions on ksir's own family: replicates "
                   "(training seeds) a configuration may reach; a new seed trains a new base model (default 3; "
                   "1: only configurations not run yet)")
    p.add_argument("--dtype", help="the scheme's data type (default: the most common in the runs)")
    p.add_argument("--tokens-per-param", help="compute question: candidate D / N, comma-separated (default 5,10,20,40,80)")
    p.add_argument("--vocab-size", type=int, default=257, help="to count parameters of unrun own-family sizes")
    p.add_argument("--laws", help="the other laws whose replicates join the particles: bits and size questions, joint "
                   "laws L(N, k) beside the per-k laws (precision, efficiency); compute question, L(N, D) laws beside "
                   "Chinchilla's (kaplan); 'none': no other law; default: those the runs identify well")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--draws", type=int, default=256, help="fantasised outcomes per candidate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-runs", type=int)
    p.add_argument("--name", help="preset name: conf/experiment/plan_<name>.yaml (default: the question)")
    p.add_argument("--experiment", help="the experiment whose settings the planned runs share (e.g. demo)")
    p.add_argument("--out", default="outputs/plan")
    p.add_argument("--conf", help="folder of the preset's config group experiment/ (default: <out>/conf)")
    return p


def _fail(msg: str) -> int:
    print(f"ksir-plan: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        budget, unit = parse_budget(args.budget)
        target = parse_target(args.question, args.target)
    except ValueError as e:
        return _fail(str(e))
    if args.bootstrap < 20 or args.draws < 16:
        return _fail("--bootstrap needs >= 20 replicates and --draws >= 16 to value a run")
    if args.seeds < 1:
        return _fail(f"--seeds {args.seeds}: needs >= 1 (replicates per configuration)")
    try:
        laws = parse_laws(args.laws, args.question)
    except ValueError as e:
        return _fail(str(e))
    if args.experiment:
        from ksir.config import CONF_DIR

        if not (Path(CONF_DIR) / "experiment" / f"{args.experiment}.yaml").is_file():
            return _fail(f"--experiment {args.experiment}: no conf/experiment/{args.experiment}.yaml")
    try:
        runs = load_runs(args.sources)
    except (FileNotFoundError, ValueError) as e:
        return _fail(str(e))
    job = "train" if args.question == "compute" else "quantize"
    runs = runs[runs["job"] == job] if "job" in runs else runs
    if runs.empty:
        return _fail(f"no {'training' if job == 'train' else 'post-training'} runs in {args.sources}")
    try:
        families = sorted(set(runs["family"].dropna()))
        if len(families) != 1:
            raise ValueError(f"the runs mix families {families}: plan one family at a time")
        if args.question == "compute":
            problem = compute_problem(runs, target["flops"], train_candidates(runs, families[0], args),
                                      n_boot=args.bootstrap, seed=args.seed, laws=laws)
            rate = cost_model(runs)["s_per_train_flop"]  # measured seconds per training FLOP, where records have them
            problem.unit = "s" if rate else "FLOPs"
            if rate:
                problem.candidates = [dataclasses.replace(c, cost=c.cost * rate) for c in problem.candidates]
        else:
            runs = scheme_runs(runs, args.dtype)
            cands = candidate_space(runs, families[0], args)
            existing = trained_bases(runs, by_seed=any(c[3] is not None for c in cands))
            problem = bits_problem(runs, target.get("budget_bits"), candidates_nk=cands, existing_bases=existing,
                                   n_boot=args.bootstrap, seed=args.seed, target_n=target.get("n_params"),
                                   target_k=target.get("bits"), laws=laws)
    except ValueError as e:
        return _fail(str(e))
    if problem.unit != unit:
        return _fail(f"--budget {args.budget}: these records " + ("measured wall time: give seconds (600s, 30m, 2h)"
                     if problem.unit == "s" else "have no wall time: give FLOPs (e.g. 1e15flops)"))
    cheapest = min(c.cost + c.base_cost for c in problem.candidates)
    if cheapest > budget:
        return _fail(f"--budget {args.budget}: too small for any candidate run (the cheapest costs {cheapest:.3g} {unit})")
    batch = greedy_batch(problem.pred, problem.target, problem.candidates, budget, problem.sigma,
                         categorical=problem.categorical, draws=args.draws, seed=args.seed, max_runs=args.max_runs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or args.question
    conf = Path(args.conf) if args.conf else out / "conf"
    picks = [problem.candidates[p["index"]] for p in batch["picks"]]
    preset = write_preset(conf, name, picks, args.experiment, scheme_settings(runs)) if picks else None
    report = summary(problem, batch, args, unit, preset, conf, name)
    (out / "plan.json").write_text(json.dumps(report, indent=2, default=float))
    (out / "plan.md").write_text("\n".join(markdown(report)) + "\n")
    draw(problem, batch, runs, out / "plan.png")
    print("\n".join(markdown(report)))
    print(f"\noutputs in {out}: plan.md, plan.json, plan.png" + (f"; preset {preset}" if preset else ""))
    return 0


def load_runs(sources: list[str]) -> Any:
    """Records (folders, files, globs) and runs tables (csv / jsonl / parquet, ksir-fit's --table format)."""
    import pandas as pd

    from analysis.collect import load_records, load_table

    tables = [s for s in sources if Path(s).suffix in (".csv", ".jsonl", ".json", ".parquet") and Path(s).is_file()
              and not Path(s).name.startswith(("q-", "t-"))]
    parts = [load_table(t).runs for t in tables]
    rest = [s for s in sources if s not in tables]
    if rest:
        parts.append(load_records(rest).runs)
    return pd.concat(parts, ignore_index=True)


def seed_pool(runs: Any, family_kind: str, n: int) -> list[int | None]:
    """The seeds a configuration may be run at: the runs' own seeds, then the next integers, `n` in all. [None]
    where a seed changes nothing that is measured (a hub family's base model is the same whatever the seed)."""
    if family_kind != "own" or "seed" not in runs or runs["seed"].isna().all():
        return [None]
    seeds = sorted({int(x) for x in runs["seed"].dropna()})
    while len(seeds) < n:
        seeds.append(max(seeds) + 1)
    return seeds


def candidate_space(runs: Any, family: str, args: argparse.Namespace) -> list[tuple[str, float, float, int | None]]:
    """(size, n_params, k, seed) worth proposing: each (size, k) of the asked sizes and bit-widths at its lowest
    seed not run yet, while it has fewer than --seeds replicates. A new seed of ksir's own family is a new base
    model (its cost is paid once per (size, seed)); a hub family's configuration is run once (seed None)."""
    from ksir.families import get_family

    fam = get_family(family)
    names = fam.size_names
    if args.sizes:
        asked = [s.strip() for s in args.sizes.split(",") if s.strip()]
        bad = [s for s in asked if s not in names]
        if bad:
            raise ValueError(f"--sizes {','.join(bad)}: not a size of {family} ({', '.join(names)})")
        names = [s for s in names if s in asked]
    if args.max_size:
        if args.max_size not in fam.size_names:
            raise ValueError(f"--max-size {args.max_size}: not a size of {family} ({', '.join(fam.size_names)})")
        names = [s for s in names if fam.size_names.index(s) <= fam.size_names.index(args.max_size)]
    ks = sorted({float(k) for k in runs["bits"] if float(k) < 16}) if not args.bits else \
        [float(k) for k in args.bits.split(",")]
    known = runs.groupby(runs["size"].astype(str))["n_params"].median().to_dict()
    seeds = seed_pool(runs, fam.kind, args.seeds)
    by_seed = seeds != [None]
    done = {(str(s), float(k), int(d) if by_seed else None) for s, k, d in
            zip(runs["size"], runs["bits"], runs["seed"] if by_seed else [None] * len(runs), strict=True)}
    out = []
    for size in names:
        n = known.get(size)
        if n is None:
            n = own_params(fam, size, args.vocab_size) if fam.kind == "own" else None
        if n is None:
            continue
        for k in ks:
            left = [d for d in seeds if (size, k, d) not in done]
            if left and (not by_seed or len(seeds) - len(left) < args.seeds):
                out.append((size, float(n), k, left[0]))
    return out


def train_candidates(runs: Any, family: str, args: argparse.Namespace) -> list[tuple[str, float, float]]:
    """(label, N, D) training runs not run yet: the family's sizes x --tokens-per-param."""
    sizes = candidate_space(runs.assign(bits=16.0), family, argparse.Namespace(**{**vars(args), "bits": "16",
                                                                                  "seeds": 1}))
    tpps = [float(x) for x in (args.tokens_per_param or "5,10,20,40,80").split(",")]
    done = {(str(s), round(float(d) / float(n), 3)) for s, n, d in zip(runs["size"], runs["n_params"],
                                                                      runs["train_tokens"], strict=True)}
    out = []
    for size, n, *_ in sizes + [(s, float(n), 16.0) for s, n in runs.groupby(runs["size"].astype(str))["n_params"]
                                                                  .median().items()]:
        for tpp in tpps:
            if (size, round(tpp, 3)) not in done and (f"{size}@{tpp:g}", n, n * tpp) not in out:
                out.append((f"{size}@{tpp:g}", n, n * tpp))
    return out


def own_params(fam: Any, size: str, vocab: int) -> float:
    """Parameters of an own-family size, counted on a model built on the meta device (no memory)."""
    from ksir import startup

    startup.keep_kernel_libraries_lazy()  # transformers without the kernel libraries it would import for nothing
    import torch
    from transformers import AutoModelForCausalLM

    from ksir.families import count_params, own_config

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(own_config(fam, size, vocab))
    return float(count_params(model)[0])


def scheme_settings(runs: Any) -> dict[str, Any]:
    """The quant settings the planned runs take from the scheme that was fitted (data type, grid, method)."""
    q = runs[runs["bits"].astype(float) < 16]
    out: dict[str, Any] = {}
    for col in ("dtype", "granularity", "blocksize", "method"):
        if col in q and q[col].notna().any():
            v = q[col].dropna().iloc[0]
            out[col] = int(v) if col == "blocksize" else str(v)
    return out


def write_preset(conf: Path, name: str, picks: list[Any], experiment: str | None,
                 quant: dict[str, Any] | None = None) -> Path:
    """conf/experiment/plan_<name>.yaml: one sweep over the picked points (plan.point), each job reading its
    size and k from plan.points; the named experiment's settings without its own sweep."""
    import yaml

    body: dict[str, Any] = {}
    defaults: list[Any] = []
    if experiment:
        from ksir.config import CONF_DIR

        base = yaml.safe_load((Path(CONF_DIR) / "experiment" / f"{experiment}.yaml").read_text()) or {}
        defaults = list(base.pop("defaults", []))
        (base.get("hydra") or {}).get("sweeper", {}).pop("params", None)
        body.update({k: v for k, v in base.items() if k != "out_dir"})
    train = any("tokens_per_param" in c.extra for c in picks)
    seeded = any("seed" in c.extra for c in picks)
    points = {f"p{i}": {"size": c.extra["size"], **({"tokens_per_param": c.extra["tokens_per_param"]} if train
                                                    else {"bits": c.bits}),
                        **({"seed": c.extra["seed"]} if seeded else {})} for i, c in enumerate(picks)}
    body["job"] = "train" if train else "quantize"
    body["plan"] = {"point": "p0", "points": points}
    body.setdefault("model", {})["size"] = "${plan.points.${plan.point}.size}"
    if seeded:  # a replicate: the base model's training seed
        body["seed"] = "${plan.points.${plan.point}.seed}"
    if train:
        body.setdefault("trainer", {})["tokens_per_param"] = "${plan.points.${plan.point}.tokens_per_param}"
    else:
        body.setdefault("quant", {}).update({**(quant or {}), "bits": "${plan.points.${plan.point}.bits}"})
    body.setdefault("hydra", {}).setdefault("sweeper", {})["params"] = {"plan.point": ",".join(points)}
    if defaults:
        body = {"defaults": defaults, **body}
    path = conf / "experiment" / f"plan_{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("# @package _global_\n# Written by ksir-plan: one job per planned point (plan.md says why each).\n"
                    + yaml.safe_dump(body, sort_keys=False))
    return path


def summary(problem: Any, batch: dict, args: argparse.Namespace, unit: str, preset: Path | None, conf: Path,
            name: str) -> dict[str, Any]:
    cands = problem.candidates
    rows = []
    before = batch["spread_now"]
    for p in batch["picks"]:
        c = cands[p["index"]]
        pr = problem.pred[:, p["index"]]
        rows.append({"size": c.extra["size"], "n_params": c.n_params, "bits": c.bits, "seed": c.extra.get("seed"),
                     "cost": p["cost"],
                     "tokens_per_param": c.extra.get("tokens_per_param"),
                     "new_base": c.base_cost > 0 and p["cost"] > c.cost + c.base_cost / 2, "spread_after": p["spread_after"],
                     "why": f"the fit's replicates disagree there by {np.std(pr):.3g} (sd of predicted loss; "
                            f"measurement noise {problem.sigma:.2g}){_laws_apart(problem, pr)}; measuring it takes "
                            f"the target's spread from {before:.3g} to {p['spread_after']:.3g}"})
        before = p["spread_after"]
    t = problem.target
    now: dict[str, Any]
    if problem.categorical:
        vals, counts = np.unique(t, return_counts=True)
        now = {f"{v:g}": float(c / len(t)) for v, c in zip(vals, counts, strict=True)}
    else:
        now = {"median": float(np.median(t)), "ci95": [float(x) for x in np.percentile(t, [2.5, 97.5])]}
    laws = {}
    for law, (a, b) in (problem.laws.get("particles") or {}).items():
        part = t[a:b]
        if problem.categorical:
            vals, counts = np.unique(part, return_counts=True)
            laws[law] = {f"{v:g}": float(c / len(part)) for v, c in zip(vals, counts, strict=True)}
        else:
            laws[law] = {"median": float(np.median(part))}
    return {"question": args.question, "target": problem.describe, "budget": args.budget, "unit": unit,
            "now": now, "laws": laws, "laws_left_out": problem.laws.get("left_out") or {},
            "spread_now": batch["spread_now"], "spread_after": batch["spread_after"],
            "cost": batch["cost"], "runs": rows, "noise": problem.sigma, "replicates": int(problem.pred.shape[0]),
            "candidates": len(cands), "seed": args.seed, "preset": str(preset) if preset else None,
            "launch": f"ksir-run -m --config-dir {conf} experiment=plan_{name}" if preset else None}


def _laws_apart(problem: Any, pr: np.ndarray) -> str:
    """Where several laws are the particles: how far apart their mean predictions are at a run."""
    spans = problem.laws.get("particles") or {}
    if len(spans) < 2:
        return ""
    means = {law: float(np.mean(pr[a:b])) for law, (a, b) in spans.items()}
    return f"; the laws' means part by {max(means.values()) - min(means.values()):.3g} (" + ", ".join(
        f"{law} {m:.4g}" for law, m in means.items()) + ")"


def markdown(r: dict[str, Any]) -> list[str]:
    spread = "Gini impurity of the best k" if r["question"] == "bits" else "variance"
    lines = [f"# ksir-plan: {r['target']}", "",
             f"Today ({r['replicates']} bootstrap replicates of the fit): {json.dumps(r['now'])}; spread ({spread}) "
             f"{r['spread_now']:.4g}. Expected after the batch: {r['spread_after']:.4g}, for {r['cost']:.3g} {r['unit']}"
             f" of {r['budget']} ({len(r['runs'])} runs chosen from {r['candidates']} candidates).", "",
             *(["Laws whose replicates are the particles (equal prior mass): " + "; ".join(
                 f"{law} {json.dumps(v)}" for law, v in r.get("laws", {}).items())
                + "".join(f"; not {law}: {why}" for law, why in (r.get("laws_left_out") or {}).items()) + ".", ""]
               if r.get("laws") else []),
             "| # | size | k (or D/N) | seed | cost | new base model | spread after | why |",
             "|---|---|---|---|---|---|---|---|"]
    for i, row in enumerate(r["runs"], 1):
        what = f"D/N {row['tokens_per_param']:g}" if row.get("tokens_per_param") else f"{row['bits']:g}"
        seed = "" if row.get("seed") is None else row["seed"]
        lines.append(f"| {i} | {row['size']} | {what} | {seed} | {row['cost']:.3g} {r['unit']} | "
                     f"{'yes' if row['new_base'] else 'no'} | {row['spread_after']:.4g} | {row['why']} |")
    if not r["runs"]:
        lines.append("| - | | | | | | | no candidate run narrows the target within the budget |")
    lines += ["", f"Launch: `{r['launch']}`" if r["launch"] else "Nothing to launch: no preset written."]
    return lines


def draw(problem: Any, batch: dict, runs: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if "chinchilla" in problem.fits:  # the compute question: runs and planned runs by training FLOPs
        ax.scatter(6 * runs["n_params"] * runs["train_tokens"], runs["val_loss"], s=10, label="runs")
        for p in batch["picks"]:
            c = problem.candidates[p["index"]]
            ax.axvline(6 * c.n_params * c.n_params * c.extra["tokens_per_param"], color="k", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("training FLOPs (6 N D)")
        ax.set_ylabel("validation loss")
        ax.set_title("runs; dotted: planned runs", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return
    for k, fit in sorted(problem.fits.items()):
        g = runs[runs["bits"].astype(float) == k]
        xs = np.geomspace(g["total_bits"].min() / 3, g["total_bits"].max() * 10, 60)
        line = ax.plot(xs, fit.predict({"total_bits": xs}), lw=1, label=f"{k:g}-bit")[0]
        ax.scatter(g["total_bits"], g["val_loss"], s=10, color=line.get_color())
    for p in batch["picks"]:
        c = problem.candidates[p["index"]]
        tb = c.n_params * float((runs["total_bits"] / runs["n_params"])[runs["bits"].astype(float) == c.bits].median())
        ax.axvline(tb, color="k", lw=0.6, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("total model bits")
    ax.set_ylabel("validation loss")
    ax.set_title("current fit; dotted: planned runs", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
