"""Does ksir-plan pick the runs that matter? A backtest on a complete runs table (issue 29, point 5).

Start from the smallest sizes of a finished study, then add the rest batch by batch in three orders: ksir-plan's
(analysis.plan: expected narrowing of the target per unit of cost), random (averaged over seeds) and the grid
order a study runs in (size by size, smallest first). After each batch the per-k laws are refitted; the target is
the best k at a total-bit budget, judged against the full table's answer: the share of bootstrap replicates that
agree with it (accuracy) and the Gini impurity of the replicates' best k (interval width), against the compute
spent (the planner's own cost model for every order: measured evaluation seconds, training at 6 N D). Prints the
curves and, per order, the compute to first reach the full table's own agreement; the ratio is the claim.

    python benchmarks/bench_plan.py                      # kbit_own_family's committed runs (int, block 64)
    python benchmarks/bench_plan.py --table T.csv --start xs,s,ms --target 1e7 --rounds 6 --figure plan.png
    python benchmarks/bench_plan.py --question compute --table gadre-c4    # also gadre-rpj, gadre-rw, chinchilla

The compute question backtests training tables: Epoch's extraction of Chinchilla's runs, and Gadre et al.'s
over-training grid per corpus (benchmarks/data/gadre_overtrain, from Choshen et al.'s released dataset).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from analysis.headline import log_n_opt  # noqa: E402
from analysis.plan import (  # noqa: E402
    best_k,
    bits_problem,
    compute_problem,
    cost_model,
    fit_bits,
    greedy_batch,
    scheme_runs,
    trained_bases,
)


def answer(runs: pd.DataFrame, budget_bits: float, n_boot: int, seed: int) -> tuple[float, np.ndarray]:
    """(the most frequent best k over the fit's replicates, every replicate's best k)."""
    _, fits, reps = fit_bits(runs, n_boot, seed)
    target = best_k(fits, reps, budget_bits)
    vals, counts = np.unique(target, return_counts=True)
    return float(vals[np.argmax(counts)]), target


def _keys(d: pd.DataFrame, by_seed: bool = False) -> list[tuple]:
    """Each row's (size, k), or with `by_seed` its single run (size, k, seed)."""
    return [(str(r[0]), float(r[1]), *([int(r[2])] if by_seed else []))
            for r in d[["size", "bits", "seed"] if by_seed else ["size", "bits"]].itertuples(index=False)]


def _pool(full: pd.DataFrame, known: pd.DataFrame, by_seed: bool = False) -> list[tuple]:
    """What is left to run: (size, k) configurations, or with `by_seed` single runs (size, k, seed)."""
    return sorted(set(_keys(full, by_seed)) - set(_keys(known, by_seed)))


def _cost(full: pd.DataFrame, known: pd.DataFrame, picks: list[tuple]) -> float:
    """Seconds of the cost model: each run's evaluation, plus each base model not trained yet: per size, or per
    (size, seed) when the picks are single runs."""
    cm = cost_model(full)
    n = full.groupby(full["size"].astype(str))["n_params"].median()
    by_seed = bool(picks) and len(picks[0]) == 3
    bases = {(str(s), int(d)) for s, d in zip(known["size"], known["seed"], strict=True)} if by_seed else \
        set(known["size"].astype(str))
    total = 0.0
    for pick in picks:
        size = pick[0]
        base = (size, pick[2]) if by_seed else size
        total += 2 * n[size] * cm["eval_tokens"] * cm["s_per_flop"]
        if base not in bases:
            total += 6 * n[size] * cm["tokens_per_param"] * n[size] * cm["s_per_train_flop"]
            bases.add(base)
    return total


def run_order(full: pd.DataFrame, start: list[str], order: str, budget_bits: float, truth: float, per_round: float,
              rounds: int, n_boot: int, seed: int, laws: tuple[str, ...] | None = (), one_seed: bool = False) -> list[dict]:
    """One order's path from the start sizes: after each batch, the share of the fit's replicates that give the
    full table's answer. By default a pick adds every seed of a (size, k) and a base model costs once per size.
    With `one_seed`, a pick is one run and a base model costs once per (size, seed), as ksir-plan proposes runs:
    the planner picks among every configuration at its lowest seed not run yet (a replicate where the configuration
    has run, as ksir-plan proposes on ksir's own family), the grid goes seed by seed (every size and k at seed 0
    first, then seed 1, ...), and random draws single runs."""
    known = full[full["size"].astype(str).isin(start)]
    rng = np.random.default_rng(seed)
    spent, rows = 0.0, []
    sizes = list(dict.fromkeys(full.sort_values("n_params")["size"].astype(str)))
    for r in range(rounds + 1):
        _, reps = answer(known, budget_bits, n_boot, seed)
        share = float(np.mean(reps == truth))
        vals = np.unique(reps, return_counts=True)[1] / len(reps)
        rows.append({"round": r, "cost": spent, "agree": share, "gini": float(1 - (vals ** 2).sum()), "runs": len(known)})
        pool = _pool(full, known, one_seed)
        if r == rounds or not pool:
            break
        if order == "planned":
            n = full.groupby(full["size"].astype(str))["n_params"].median()
            if one_seed:  # each configuration at its lowest seed not run yet: a new one, or a replicate
                lowest = {}
                for c in pool:
                    lowest.setdefault(c[:2], c)
                cands = [(s, float(n[s]), k, d) for s, k, d in lowest.values()]
            else:  # configurations not run at any seed; a pick runs every seed
                cands = [(s, float(n[s]), k) for s, k in pool]
            picks = []
            if cands:
                pb = bits_problem(known, budget_bits, candidates_nk=cands, existing_bases=trained_bases(known, one_seed),
                                  n_boot=n_boot, seed=seed, laws=laws)
                batch = greedy_batch(pb.pred, pb.target, pb.candidates, per_round, pb.sigma, categorical=True,
                                     draws=128, seed=seed)
                chosen = [pb.candidates[p["index"]] for p in batch["picks"]]
                picks = [(c.extra["size"], c.bits, *([c.extra["seed"]] if one_seed else [])) for c in chosen]
            if not picks:  # nothing narrows the target: spend the round on the cheapest run left
                picks = [min(pool, key=lambda c: _cost(full, known, [c]))]
        else:
            ordered = [pool[i] for i in rng.permutation(len(pool))] if order == "random" else \
                sorted(pool, key=lambda c: (*(c[2:] if one_seed else ()), sizes.index(c[0]), c[1]))
            picks = []
            for c in ordered:
                if _cost(full, known, [*picks, c]) > per_round and picks:
                    break
                picks.append(c)
        spent += _cost(full, known, picks)
        chosen = set(picks)
        add = full[[key in chosen for key in _keys(full, one_seed)]]
        known = pd.concat([known, add])
    return rows


def compute_answer(runs: pd.DataFrame, flops: float, n_boot: int, seed: int) -> tuple[float, np.ndarray]:
    """(log N_opt of the point fit, every replicate's log N_opt) of Chinchilla's law at `flops`."""
    from analysis.fit import fit_law
    from analysis.settings import FitSettings

    fit = fit_law(runs, "chinchilla", "val_loss", FitSettings(n_boot=n_boot, seed=seed, holdout=0))
    return float(log_n_opt(fit.vector(), flops)), log_n_opt(fit.boot_ok(), flops)


def run_compute_order(full: pd.DataFrame, start: pd.Series, order: str, flops: float, truth: float,
                      per_round: float, rounds: int, n_boot: int, seed: int, laws: tuple[str, ...] | None = ()) -> list[dict]:
    """One order on a table of training runs: each pick reveals one run (its measured loss) for 6 N D FLOPs."""
    known, pool = full[start], full[~start]
    rng = np.random.default_rng(seed)
    spent, rows = 0.0, []
    for r in range(rounds + 1):
        point, reps = compute_answer(known, flops, n_boot, seed)
        lo, hi = np.percentile(reps[np.isfinite(reps)], [2.5, 97.5])
        rows.append({"round": r, "cost": spent, "error": abs(point - truth), "width": float(hi - lo),
                     "runs": len(known)})
        if r == rounds or pool.empty:
            break
        if order == "planned":
            cands = [(str(i), float(x.n_params), float(x.train_tokens)) for i, x in pool.iterrows()]
            pb = compute_problem(known, flops, cands, n_boot=n_boot, seed=seed, laws=laws)
            batch = greedy_batch(pb.pred, pb.target, pb.candidates, per_round, pb.sigma, categorical=False,
                                 draws=128, seed=seed)
            idx = [pool.index[p["index"]] for p in batch["picks"]] or [pool["train_flops"].idxmin()]
        else:
            ordered = pool.index[rng.permutation(len(pool))] if order == "random" else \
                pool.sort_values(["train_flops", "n_params"]).index
            idx, cost = [], 0.0
            for i in ordered:
                if cost + pool.at[i, "train_flops"] > per_round and idx:
                    break
                idx.append(i)
                cost += pool.at[i, "train_flops"]
        spent += float(pool.loc[idx, "train_flops"].sum())
        known, pool = pd.concat([known, pool.loc[idx]]), pool.drop(idx)
    return rows


GADRE = ROOT / "benchmarks/data/gadre_overtrain/overtrain_downstreams.csv"
CORPORA = {"c4": "c4_original", "rpj": "rpj", "rw": "rw_original"}


def compute_table(name: str, start_share: float) -> tuple[pd.DataFrame, pd.Series, str]:
    """(runs with n_params, train_tokens, train_flops, val_loss; the runs known at the start; what they are).
    `chinchilla`: Epoch's extraction of Hoffmann et al.'s runs, the cheapest `start_share` known. `gadre-<corpus>`:
    Gadre et al.'s over-training grid on one corpus (c4, rpj, rw; benchmarks/data/gadre_overtrain), the three
    smallest sizes known."""
    from analysis.collect import load_table

    if name == "chinchilla" or name.endswith(".csv"):
        path = ROOT / "experiments/chinchilla_epoch/data/svg_extracted_data.csv" if name == "chinchilla" else name
        full = load_table(path, {"Model Size": "n_params", "Training FLOP": "train_flops", "loss": "val_loss"}).runs
        full = full[full["val_loss"] < 5].reset_index(drop=True)  # Epoch's exclusion (experiments/chinchilla_epoch)
        start = full["train_flops"] <= full["train_flops"].quantile(start_share)
        return full, start, f"the cheapest {start_share:.0%} of the runs"
    corpus = CORPORA.get(name.removeprefix("gadre-")) if name.startswith("gadre-") else None
    if corpus is None:
        raise SystemExit(f"--table {name}: expected chinchilla, a CSV in Epoch's columns, or gadre-<corpus> with "
                         f"corpus one of {', '.join(CORPORA)}")
    raw = pd.read_csv(GADRE, index_col=0)
    raw = raw[raw["name"].str.startswith(corpus + "-")]
    full = pd.DataFrame({"n_params": raw["N"].astype(float), "train_tokens": raw["D"].astype(float),
                         "val_loss": raw["loss_openlm"].astype(float), "label": raw["name"]}).reset_index(drop=True)
    full["train_flops"] = 6 * full["n_params"] * full["train_tokens"]  # the file's own flops column overflowed
    start = full["n_params"].isin(sorted(full["n_params"].unique())[:3])
    return full, start, "the three smallest sizes"


def compute_main(a: argparse.Namespace) -> int:
    full, start, known = compute_table(a.table, a.start_share)
    flops = a.flops or (5.76e23 if a.table == "chinchilla" else float(full["train_flops"].max()))  # Chinchilla's
    truth, reps = compute_answer(full, flops, a.bootstrap, 0)
    lo, hi = np.percentile(reps[np.isfinite(reps)], [2.5, 97.5])
    goal = (hi - lo) / 2
    print(f"full table {a.table}: {len(full)} runs, {full['train_flops'].sum():.3g} FLOPs; log N_opt at "
          f"{flops:.3g} FLOPs = {truth:.3f} (N_opt {np.exp(truth):.3g}), 95% CI half-width {goal:.3f}; start: "
          f"{known} ({int(start.sum())} runs, {full.loc[start, 'train_flops'].sum():.3g} FLOPs)")
    per_round = a.round_flops or float(full["train_flops"].sum()) / 8
    from analysis.plan_cli import parse_laws

    laws = parse_laws(a.laws, "compute")
    curves, rand = run_orders(lambda order, seed: run_compute_order(full, start, order, flops, truth, per_round,
                                                                     a.rounds, a.bootstrap, seed, laws), a.random_seeds)
    print("| order | round | FLOPs spent | runs | |log N_opt - full| | 95% width |\n|---|---|---|---|---|---|")
    for name, rows in curves.items():
        for r in rows:
            print(f"| {name} | {r['round']} | {r['cost']:.3g} | {r['runs']} | {r['error']:.3f} | {r['width']:.3f} |")

    total = float(full["train_flops"].sum())
    for what, ok in (("within the full table's 95% half-width of its answer",
                      lambda r: r["error"] <= goal),
                     ("there, with an interval no wider than the full table's",
                      lambda r: r["error"] <= goal and r["width"] <= 2 * goal)):
        got = {k: next((r["cost"] for r in v if ok(r)), None) for k, v in curves.items()}
        rr = [next((r["cost"] for r in v if ok(r)), None) for v in rand]
        got["random"] = float(np.mean(rr)) if all(x is not None for x in rr) else None
        print(f"\nFLOPs to get {what}: " + ", ".join(
            f"{k} {v:.3g} ({v / total:.1%} of the table)" if v is not None else f"{k} never" for k, v in got.items()))
        if got["planned"] is not None and got["grid"]:
            print(f"ratio planned / grid: {got['planned'] / got['grid']:.2f} (goal: <= 0.5)")
    if a.figure:
        _figure(a.figure, curves, "error", "|log N_opt - full table's|", f"training FLOPs spent ({a.table})", goal)
    return 0


def run_orders(run: Callable[[str, int], list[dict]], random_seeds: int) -> tuple[dict, list]:
    """The planned and grid orders (seed 0) and `random_seeds` random ones; curves['random'] is the first."""
    curves = {order: run(order, 0) for order in ("planned", "grid")}
    rand = [run("random", s) for s in range(random_seeds)]
    curves["random"] = rand[0]
    return curves, rand


def _figure(path: str, curves: dict, key: str, ylabel: str, xlabel: str, goal: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, rows in curves.items():  # round 0 (nothing spent) left out: compute is on a log axis
        spent = [r for r in rows if r["cost"] > 0]
        ax.plot([r["cost"] for r in spent], [r[key] for r in spent], marker="o", label=name, alpha=0.8)
    ax.axhline(goal, color="0.5", lw=0.8, ls="--", label="full table's level")
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def reach(rows: list[dict], level: float) -> float | None:
    return next((r["cost"] for r in rows if r["agree"] >= level), None)


def reach_to_stay(rows: list[dict], level: float) -> float | None:
    """The compute after which agreement stays >= level in every later batch (a first touch can fall back)."""
    for i, r in enumerate(rows):
        if all(x["agree"] >= level for x in rows[i:]):
            return r["cost"]
    return None


def _s(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:.0f}"


def repeats(full: pd.DataFrame, start: list[str], a: argparse.Namespace, truth: float, level: float, laws) -> None:
    """The planned and grid orders again under other seeds of the fit's bootstrap (and the planner's fantasies):
    the agreement is a share of 60-ish replicates, so one seed's crossing of 95% can be luck."""
    print("\n| seed | start agrees | planned: first reaches / stays (s) | grid: first reaches / stays (s) |\n"
          "|---|---|---|---|")
    ratios = {"first": [], "stays": []}
    for seed in range(a.repeats):
        rows = {o: run_order(full, start, o, a.target, truth, a.round_cost, a.rounds, a.bootstrap, seed, laws,
                             a.one_seed) for o in ("planned", "grid")}
        got = {o: (reach(r, level), reach_to_stay(r, level)) for o, r in rows.items()}
        print(f"| {seed} | {rows['planned'][0]['agree']:.2f} | {_s(got['planned'][0])} / {_s(got['planned'][1])} | "
              f"{_s(got['grid'][0])} / {_s(got['grid'][1])} |")
        for i, what in enumerate(ratios):
            p, g = got["planned"][i], got["grid"][i]
            if g:  # the grid there from the start (0) or never: no ratio
                ratios[what].append(p / g if p is not None else float("inf"))
    for what, rs in ratios.items():
        print(f"ratio planned / grid, {what} (seeds where the grid's is > 0; inf: the planned order never): "
              + (f"median {np.median(rs):.2f} ({', '.join(f'{x:.2f}' for x in rs)})" if rs else "none"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default=str(ROOT / "experiments/kbit_own_family/claims_runs.csv"))
    p.add_argument("--start", default="xs,s,ms")
    p.add_argument("--target", type=float, default=1e7, help="total-bit budget of the best-k question")
    p.add_argument("--round-cost", type=float, default=1800.0, help="seconds per batch")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--bootstrap", type=int, default=100)
    p.add_argument("--random-seeds", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1, help="bits question: rerun the planned and grid orders under "
                   "this many seeds of the fit (0, 1, ...) and print when each first reaches and when it stays")
    p.add_argument("--figure")
    p.add_argument("--question", choices=("bits", "compute"), default="bits")
    p.add_argument("--one-seed", action="store_true", help="bits question: a pick is one run (ksir-plan's unit) and a "
                   "base model costs once per (size, seed); the grid goes seed by seed (default: a pick adds every "
                   "seed of a configuration, and a base costs once per size)")
    p.add_argument("--laws", default="none", help="the other laws whose replicates join the planner's particles "
                   "(ksir-plan's --laws: joint laws for the bits question, kaplan for the compute question; default "
                   "here: none, the per-k laws or Chinchilla's alone, as before)")
    p.add_argument("--flops", type=float, help="compute question: the FLOP budget (default: Chinchilla's 5.76e23, else the table's "
                   "largest run)")
    p.add_argument("--start-share", type=float, default=0.3, help="compute question: share of the cheapest runs known")
    p.add_argument("--round-flops", type=float, help="compute question: FLOPs per batch (default: 1/8 of the table)")
    a = p.parse_args(argv)
    if a.question == "compute":
        if a.table.endswith("kbit_own_family/claims_runs.csv"):
            a.table = "chinchilla"
        return compute_main(a)
    full = scheme_runs(pd.read_csv(a.table))
    start = a.start.split(",")
    truth, reps = answer(full, a.target, a.bootstrap, 0)
    level = float(np.mean(reps == truth))
    print(f"full table: {len(full)} runs; best k at {a.target:.3g} total bits = {truth:g} "
          f"({level:.0%} of replicates); start: sizes {a.start}; {a.round_cost:g} s per batch")
    from analysis.plan_cli import parse_laws

    laws = parse_laws(a.laws)
    curves, rand = run_orders(lambda order, seed: run_order(full, start, order, a.target, truth, a.round_cost,
                                                             a.rounds, a.bootstrap, seed, laws, a.one_seed),
                              a.random_seeds)
    print("| order | round | cost (s) | runs | agree with full table | Gini |\n|---|---|---|---|---|---|")
    for name, rows in curves.items():
        for r in rows:
            print(f"| {name} | {r['round']} | {r['cost']:.0f} | {r['runs']} | {r['agree']:.2f} | {r['gini']:.3f} |")
    goal = min(level, 0.95)
    got = {name: reach(rows, goal) for name, rows in curves.items()}
    rand_reach = [reach(rows, goal) for rows in rand]
    got["random"] = float(np.mean([x for x in rand_reach if x is not None])) if all(x is not None for x in rand_reach) \
        else None
    print(f"\ncompute to reach {goal:.0%} agreement with the full table's answer: " +
          ", ".join(f"{k} {v:.0f} s" if v is not None else f"{k} never" for k, v in got.items()))
    if got["planned"] is not None and got["grid"]:
        print(f"ratio planned / grid: {got['planned'] / got['grid']:.2f} (goal: <= 0.5)")
    if a.repeats > 1:
        repeats(full, start, a, truth, goal, laws)
    if a.figure:
        _figure(a.figure, curves, "agree", "share of replicates with the full table's k*",
                "compute spent (s, planner's cost model)", goal)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
