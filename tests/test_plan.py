"""ksir-plan's core (analysis.plan): the value of a run is computed from the fit's replicates, not guessed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from analysis.plan import Candidate, Fantasies, expected_spread, greedy_batch, spread


def _particles(S=400, seed=1):
    rng = np.random.default_rng(seed)
    theta = rng.normal(0, 1, (S, 2))  # two unknowns; the target is the sign of the first (a category, like k*)
    return theta, (theta[:, 0] > 0).astype(int)


def test_expected_spread_equals_a_brute_force_preposterior():
    """One candidate: the average over fantasies of the Gini impurity of the likelihood-weighted replicates,
    written out with loops here."""
    theta, target = _particles(S=60)
    pred = np.stack([theta[:, 0], theta[:, 1]], axis=1)
    fant = Fantasies.draw(60, 2, 40, seed=3)
    sigma = 0.5
    got = expected_spread(pred, target, [0], sigma, fant, categorical=True)
    total = 0.0
    for m in range(40):
        y = pred[fant.truth[m], 0] + sigma * fant.noise[m, 0]
        w = np.array([np.exp(-0.5 * ((y - pred[s, 0]) / sigma) ** 2) for s in range(60)])
        w /= w.sum()
        p1 = sum(w[s] for s in range(60) if target[s] == 1)
        total += 1 - p1 ** 2 - (1 - p1) ** 2
    assert got == pytest.approx(total / 40, rel=1e-9)
    assert expected_spread(pred, target, [], sigma, fant, True) == pytest.approx(
        1 - np.mean(target) ** 2 - (1 - np.mean(target)) ** 2)


def test_the_informative_run_is_picked_and_the_uninformative_never():
    theta, target = _particles()
    pred = np.stack([theta[:, 0], theta[:, 1], np.full(len(theta), 0.3)], axis=1)  # about the target / other / nothing
    cands = [Candidate(1e6, 4, cost=1.0, base="a"), Candidate(1e6, 3, cost=1.0, base="a"),
             Candidate(1e6, 2, cost=1.0, base="a")]
    plan = greedy_batch(pred, target, cands, budget=10, sigma=0.3, categorical=True, seed=0)
    order = [p["index"] for p in plan["picks"]]
    assert order[0] == 0 and 2 not in order
    assert plan["spread_after"] < 0.5 * plan["spread_now"]
    assert greedy_batch(pred, target, cands, budget=10, sigma=0.3, categorical=True, seed=0) == plan  # seeded


def test_a_repeat_is_worth_less_than_the_first_and_cost_decides_between_equals():
    theta, target = _particles()
    pred = np.stack([theta[:, 0], theta[:, 0], theta[:, 0]], axis=1)  # three runs that measure the same thing
    fant = Fantasies.draw(len(theta), 3, 256, seed=0)
    s0 = expected_spread(pred, target, [], 1.0, fant, True)
    s1 = expected_spread(pred, target, [0], 1.0, fant, True)
    s2 = expected_spread(pred, target, [0, 1], 1.0, fant, True)
    assert s0 - s1 > s1 - s2 > 0  # diminishing returns: the batch does not count the same evidence twice
    cands = [Candidate(1e6, 4, cost=3.0, base="x"), Candidate(1e6, 4, cost=1.0, base="y"),
             Candidate(1e6, 4, cost=2.0, base="z")]
    plan = greedy_batch(pred, target, cands, budget=1.5, sigma=1.0, categorical=True)
    assert [p["index"] for p in plan["picks"]] == [1]  # same information, the cheapest first; the budget stops it


def test_a_new_base_model_is_paid_once_per_batch():
    theta, target = _particles()
    pred = np.stack([theta[:, 0] + 0.1 * i for i in range(3)], axis=1)
    cands = [Candidate(1e7, k, cost=1.0, base="new", base_cost=10.0) for k in (2, 3, 4)]
    plan = greedy_batch(pred, target, cands, budget=100, sigma=0.5, categorical=True)
    n = len(plan["picks"])
    assert n >= 2 and plan["cost"] == pytest.approx(10.0 + n)
    assert plan["picks"][0]["cost"] == pytest.approx(11.0) and plan["picks"][1]["cost"] == pytest.approx(1.0)


def test_continuous_targets_use_the_variance():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    assert spread(t, np.full(4, 0.25), categorical=False) == pytest.approx(np.var(t))
    with pytest.raises(ValueError, match="noise"):
        greedy_batch(np.zeros((4, 1)), t, [Candidate(1, 4, 1.0, "a")], 1, 0.0, categorical=False)


# ---- ksir-plan on a committed runs table -------------------------------------------------------------------

KBIT = "experiments/kbit_own_family/claims_runs.csv"


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    """kbit_own_family's committed runs at its four smallest sizes: the seed of a planned study."""
    import pandas as pd

    from ksir.config import CONF_DIR

    d = pd.read_csv(Path(CONF_DIR).parent / KBIT)
    path = tmp_path_factory.mktemp("plan") / "small.csv"
    d[d["size"].isin(["xs", "s", "ms", "m"])].to_csv(path, index=False)
    return path


def _plan(table, out, *extra):
    from tests.helpers import run_here

    return run_here("ksir-plan", str(table), "--question", "bits", "--target", "1e7", "--budget", "2h",
                    "--max-size", "xl", "--bootstrap", "40", "--draws", "64", "--out", str(out), "--experiment",
                    "kbit_own_family", *extra, cwd=out.parent)


def test_a_plan_is_ranked_by_value_per_cost_reproducible_and_launches_as_is(small_table, tmp_path):
    import json

    from tests.helpers import run_here

    r = _plan(small_table, tmp_path / "a")
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "a" / "plan.json").read_text())
    runs = plan["runs"]
    assert runs and plan["spread_after"] < plan["spread_now"] and plan["cost"] <= 2 * 3600
    after = [x["spread_after"] for x in runs]
    assert after == sorted(after, reverse=True)  # every pick narrows the target further
    assert {x["size"] for x in runs} <= {"l", "xl"}  # the runs not in the table; xl is the largest asked for
    assert sum(x["new_base"] for x in runs) == len({x["size"] for x in runs})  # a base model is paid once
    assert (tmp_path / "a" / "plan.png").stat().st_size > 5_000 and "| # | size | k (or D/N) |" in \
        (tmp_path / "a" / "plan.md").read_text()
    assert _plan(small_table, tmp_path / "b").returncode == 0  # same seed, same plan
    assert json.loads((tmp_path / "b" / "plan.json").read_text())["runs"] == runs
    # The preset launches as is: each planned job is the job a user would write by hand.
    conf = tmp_path / "a" / "conf"
    d = run_here("ksir-run", "-m", "--config-dir", str(conf), "experiment=plan_bits", "dry_run=true",
                 f"out_dir={tmp_path / 'o'}", cwd=tmp_path)
    assert d.returncode == 0, d.stderr[-2000:]
    keys = {ln.split()[0] for ln in d.stdout.splitlines() if ln.strip().startswith("q-")}
    assert keys == _by_hand(runs, tmp_path / "o")


def _by_hand(runs: list[dict], out: Path) -> set[str]:
    """The run keys of the planned runs, each composed as a user would write its job."""
    from ksir.config import compose_spec
    from ksir.identity import run_key

    return {run_key(compose_spec(["experiment=kbit_own_family", "job=quantize", f"model.size={x['size']}",
                                  f"quant.bits={x['bits']:g}", "quant.dtype=int", "quant.granularity=block",
                                  f"seed={x['seed']}", f"out_dir={out}"])) for x in runs}


def test_replicates_at_a_new_seed_are_candidates_with_their_own_base_and_launch_as_is(tmp_path):
    """On ksir's own family a seed trains a new base model, so a configuration run at one seed is a candidate again
    at the next (up to --seeds replicates), its base paid once per (size, seed); on the committed table with l at
    seed 0 only, the plan replicates l before it buys xl, and its preset runs each at its seed."""
    import argparse
    import json

    import pandas as pd

    from analysis.plan_cli import candidate_space
    from ksir.config import CONF_DIR
    from tests.helpers import run_here

    d = pd.read_csv(Path(CONF_DIR).parent / KBIT)
    d = d[d["size"].isin(["xs", "s", "ms", "m"]) | ((d["size"] == "l") & (d["seed"] == 0) & (d["bits"] <= 4))]
    args = argparse.Namespace(sizes=None, max_size="xl", bits=None, vocab_size=257, seeds=3)
    cands = {(s, k): seed for s, _, k, seed in candidate_space(d, "llama", args)}
    assert cands == {**{("l", k): 1 for k in (2.0, 3.0, 4.0)}, **{("l", k): 0 for k in (5.0, 6.0, 8.0)},
                     **{("xl", k): 0 for k in (2.0, 3.0, 4.0, 5.0, 6.0, 8.0)}}  # xs..m have their 3 seeds
    assert {(s, k) for s, _, k, _ in candidate_space(d, "llama", argparse.Namespace(**{**vars(args), "seeds": 1}))} \
        == {("l", k) for k in (5.0, 6.0, 8.0)} | {("xl", k) for k in (2.0, 3.0, 4.0, 5.0, 6.0, 8.0)}
    table = tmp_path / "l0.csv"
    d.to_csv(table, index=False)
    r = _plan(table, tmp_path / "p")
    assert r.returncode == 0, r.stderr
    runs = json.loads((tmp_path / "p" / "plan.json").read_text())["runs"]
    replicates = [x for x in runs if x["seed"] == 1]
    assert replicates and all(x["size"] == "l" and x["bits"] <= 4 for x in replicates)
    assert sum(x["new_base"] for x in runs) == len({(x["size"], x["seed"]) for x in runs} - {("l", 0)})
    assert "| # | size | k (or D/N) | seed |" in (tmp_path / "p" / "plan.md").read_text()
    dry = run_here("ksir-run", "-m", "--config-dir", str(tmp_path / "p" / "conf"), "experiment=plan_bits",
                   "dry_run=true", f"out_dir={tmp_path / 'o'}", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert {ln.split()[0] for ln in dry.stdout.splitlines() if ln.strip().startswith("q-")} == \
        _by_hand(runs, tmp_path / "o")


@pytest.mark.parametrize("extra,needle", [
    (["--budget", "1s"], "too small for any candidate run"),
    (["--budget", "3 parsecs"], "expected a number with a unit"),
    (["--budget", "1e15flops"], "give seconds"),
    (["--question", "size", "--target", "n_params=1e6,bits=7"], "no fitted curve at that k"),
    (["--sizes", "xxl"], "not a size of llama"),
    (["--experiment", "nope"], "no conf/experiment/nope.yaml"),
])
def test_bad_input_is_one_line_before_any_plan(small_table, tmp_path, extra, needle):
    r = _plan(small_table, tmp_path / "p", *extra)
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert not (tmp_path / "p" / "plan.json").exists()


def test_ksir_plan_as_a_process_says_what_is_wrong_in_one_line(tmp_path):
    from tests.helpers import run_cli

    r = run_cli("ksir-plan", "nowhere", "--budget", "3 parsecs", cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "ksir-plan: error: --budget '3 parsecs': expected a number with a unit: 600s, 30m, 2h or 1e15flops"]


def test_the_compute_question_targets_the_reports_compute_optimal_size():
    """log N_opt per replicate is the report's compute-optimal N (analysis.headline), and a training run's cost is
    6 N D; the Chinchilla table Epoch extracted, where Kaplan et al.'s law joins the particles."""
    from analysis.collect import load_table
    from analysis.headline import compute_optimal, log_n_opt, log_n_opt_kaplan
    from analysis.plan import compute_problem
    from ksir.config import CONF_DIR

    t = load_table(Path(CONF_DIR).parent / "experiments/chinchilla_epoch/data/svg_extracted_data.csv",
                   {"Model Size": "n_params", "Training FLOP": "train_flops", "loss": "val_loss"}).runs
    t = t[t["val_loss"] < 5]
    pb = compute_problem(t, 5.76e23, [("a", 1e9, 2e10), ("b", 7e10, 1.4e12)], n_boot=30)
    fit = pb.fits["chinchilla"]
    row = compute_optimal(fit, np.array([5.76e23]))[0]
    assert np.exp(log_n_opt(fit.vector(), 5.76e23)) == pytest.approx(row["n_opt"], rel=1e-9)
    assert [c.cost for c in pb.candidates] == pytest.approx([6 * 1e9 * 2e10, 6 * 7e10 * 1.4e12])
    assert pb.pred.shape == (len(pb.target), 2) and not pb.categorical
    # Kaplan et al.'s L(N, D) fits these runs well ("ok"), so its replicates join Chinchilla's with equal mass,
    # each slice holding its own law's predictions and N_opt; laws=() leaves Chinchilla's alone.
    (a0, a1), (b0, b1) = pb.laws["particles"]["chinchilla"], pb.laws["particles"]["kaplan"]
    assert a0 == 0 and a1 == b0 and b1 - b0 == a1 - a0 == len(pb.target) // 2
    kap = pb.fits["kaplan"]
    assert kap.verdict()["status"] == "ok"
    r = kap.boot_ok()[: b1 - b0]
    np.testing.assert_allclose(pb.target[b0:b1], log_n_opt_kaplan(r, 5.76e23))
    np.testing.assert_allclose(pb.pred[b0:b1], kap.predict({"n_params": [1e9, 7e10], "train_tokens": [2e10, 1.4e12]}, r))
    alone = compute_problem(t, 5.76e23, [("a", 1e9, 2e10), ("b", 7e10, 1.4e12)], n_boot=30, laws=())
    assert set(alone.laws["particles"]) == {"chinchilla"}
    np.testing.assert_array_equal(alone.target[: a1 - a0], pb.target[a0:a1])  # the same Chinchilla replicates


def test_a_numeric_target_gets_the_gaussian_posterior_variance():
    """Target theta ~ N(0, 1) measured once with noise sigma: posterior variance sigma^2 / (1 + sigma^2); twice:
    sigma^2 / (2 + sigma^2) (the textbook normal update, from the replicates' covariances)."""
    from analysis.plan import gaussian_spread

    theta = np.random.default_rng(0).standard_normal(20000)
    pred = np.stack([theta, theta], axis=1)
    for chosen, n in (([0], 1), ([0, 1], 2)):
        assert gaussian_spread(pred, theta, chosen, 0.5) == pytest.approx(0.25 / (n + 0.25), rel=0.03)


def test_the_compute_question_plans_training_runs_that_launch_as_is(tmp_path):
    """Train runs of the own family drawn from Chinchilla's law (sizes xs..xl at 5, 20 and 80 tokens per
    parameter): the plan adds training runs (a size x D/N not run), and its preset is a train sweep whose jobs
    have the keys of the same jobs written by hand."""
    import json

    import pandas as pd

    from ksir.config import compose_spec
    from ksir.identity import run_key
    from tests.helpers import run_here

    rng = np.random.default_rng(0)
    n = {"xs": 8.6e4, "s": 1.4e5, "ms": 2.0e5, "m": 2.5e5, "l": 4.9e5, "xl": 9.2e5}
    rows = [{"family": "llama", "size": s, "job": "train", "n_params": v, "train_tokens": v * tpp, "seed": 0,
             "val_loss": (1.7 + 400 * v ** -0.34 + 1800 * (v * tpp) ** -0.37) * np.exp(rng.normal(0, 0.004)),
             "bits": 16.0, "total_bits": 16 * v, "train_time_s": 6 * v * v * tpp * 1e-10}
            for s, v in n.items() for tpp in (5, 20, 80)]
    pd.DataFrame(rows).to_csv(tmp_path / "train.csv", index=False)
    r = run_here("ksir-plan", str(tmp_path / "train.csv"), "--question", "compute", "--target", "1e13", "--budget",
                 "2h", "--max-size", "xl", "--tokens-per-param", "10,40", "--bootstrap", "40", "--out",
                 str(tmp_path / "p"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert plan["runs"] and plan["unit"] == "s" and plan["spread_after"] < plan["spread_now"]
    assert all(x["tokens_per_param"] in (10, 40) for x in plan["runs"])
    d = run_here("ksir-run", "-m", "--config-dir", str(tmp_path / "p" / "conf"), "experiment=plan_compute",
                 "dry_run=true", f"out_dir={tmp_path / 'o'}", cwd=tmp_path)
    assert d.returncode == 0, d.stderr[-2000:]
    keys = {ln.split()[0] for ln in d.stdout.splitlines() if ln.strip().startswith("t-")}
    by_hand = {run_key(compose_spec(["job=train", f"model.size={x['size']}",
                                     f"trainer.tokens_per_param={x['tokens_per_param']:g}", f"out_dir={tmp_path / 'o'}"]))
               for x in plan["runs"]}
    assert keys == by_hand


def _bench():
    """benchmarks/bench_plan.py as a module (the benchmarks are scripts, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_plan", Path(__file__).resolve().parents[1] / "benchmarks/bench_plan.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_shipped_multi_family_table_is_the_attributed_file_and_backtests():
    """Gadre et al.'s over-training grid (from Choshen et al.'s dataset): the file is the one its attribution
    names, each corpus gives its grid of runs at 6 N D FLOPs, and a planned round on it runs."""
    import hashlib
    import re

    root = Path(__file__).resolve().parents[1]
    folder = root / "benchmarks/data/gadre_overtrain"
    want = re.search(r"sha256\s+`([0-9a-f]{64})`", (folder / "ATTRIBUTION.md").read_text()).group(1)
    assert hashlib.sha256((folder / "overtrain_downstreams.csv").read_bytes()).hexdigest() == want
    bench = _bench()
    sizes = {}
    for corpus, n in (("c4", 34), ("rpj", 35), ("rw", 35)):
        full, start, _ = bench.compute_table(f"gadre-{corpus}", 0.3)
        assert len(full) == n and int(start.sum()) == 24
        assert np.allclose(full["train_flops"], 6 * full["n_params"] * full["train_tokens"])
        sizes[corpus] = sorted(full["n_params"].unique())
    assert sizes["c4"] == sizes["rpj"] == sizes["rw"] and len(sizes["c4"]) == 6
    full, start, _ = bench.compute_table("gadre-rpj", 0.3)
    truth, _ = bench.compute_answer(full, float(full["train_flops"].max()), 20, 0)
    rows = bench.run_compute_order(full, start, "planned", float(full["train_flops"].max()), truth, 1.5e20, 1, 20, 0)
    assert rows[0]["runs"] == 24 and rows[1]["runs"] > 24 and 0 < rows[1]["cost"] <= 1.5e20
    with pytest.raises(SystemExit, match="gadre-<corpus>"):
        bench.compute_table("gadre-pile", 0.3)


def test_the_plan_claim_compares_the_loops_compute_at_the_grids_answer_with_the_grids():
    """plan_reach on kbit_own_family's committed runs (int, block 64), with the loop's rounds set by hand: start
    from the four smallest sizes, round 1 adds l at seed 0, round 2 xl. FLOPs are 6 N D per base model (size,
    seed) plus 2 N per evaluated token, by hand; the grid's answer is its replicates' most frequent k*, and the
    loop reaches it at the first round whose own fit agrees in >= 95% of replicates."""
    import pandas as pd

    from analysis.plan import best_k, fit_bits
    from ksir.claims import evaluate, run_flops
    from ksir.repro import STUDIES

    runs = pd.read_csv(STUDIES / "kbit_own_family" / "claims_runs.csv")
    grid = runs[runs["method"].isin(["rtn", "none"]) & runs["dtype"].isin(["int", "none"])
                & (runs["granularity"].eq("block") | runs["granularity"].isna())].reset_index(drop=True)
    assert len(grid) == 6 * 7 * 3
    start = grid["size"].isin(["xs", "s", "ms", "m"])
    grid["plan_round"] = np.where(start, 0, np.where((grid["seed"] == 0) & (grid["size"] == "l"), 1,
                                                     np.where((grid["seed"] == 0) & (grid["size"] == "xl"), 2, np.nan)))
    bases = grid.drop_duplicates(["size", "seed"])
    by_hand = float((6 * bases["n_params"] * bases["train_tokens"]).sum() + (2 * grid["n_params"] * grid["eval_tokens"]).sum())
    assert run_flops(grid) == pytest.approx(by_hand, rel=1e-12)
    claim = {"id": "c", "text": "t", "kind": "plan_reach", "margin": "m", "budget_bits": 1e7, "share": 0.95,
             "bootstrap": 60, "seed": 0}
    for limit in (0.5, 1.0):
        v = evaluate(claim, {}, grid, {"m": {"value": limit, "source": "test"}})
        ks = best_k(*fit_bits(grid, 60, 0)[1:], 1e7)
        values, counts = np.unique(ks, return_counts=True)
        assert v.extra["k_grid"] == values[np.argmax(counts)] and v.extra["grid_flops"] == pytest.approx(by_hand)
        path = v.extra["path"]
        assert [p["round"] for p in path] == [0, 1, 2] and [p["runs"] for p in path] == [84, 91, 98]
        assert path[1]["flops"] == pytest.approx(run_flops(grid[grid["plan_round"] <= 1]))
        reached = next((p for p in path if p["share"] >= 0.95), None)
        if reached is None:
            assert v.verdict == "fails" and v.ksir is None and "never reach" in v.reason
        else:
            assert v.ksir == pytest.approx(reached["flops"] / by_hand)
            assert v.verdict == ("holds" if v.ksir <= limit else "fails"), (v.ksir, limit)
        assert v.replicates == 3
        fits = fit_bits(grid, 60, 0)[1]
        unidentified = [f"{k:g}" for k, f in sorted(fits.items()) if f.verdict()["status"] == "unidentified"]
        assert unidentified and f"flagged: the grid's per-k laws at k = {', '.join(unidentified)} are unidentified" \
            in v.reason  # kbit's per-k laws are unidentified on the whole grid: the verdict says so
    one_seed = evaluate(claim, {}, grid[grid["seed"] == 0], {"m": {"value": 0.5, "source": "test"}})
    assert one_seed.verdict == "inconclusive" and "needs >= 2 seeds" in one_seed.reason


def _precision_law_runs(seed: int = 0):
    """Runs drawn from Kumar et al.'s law L = E + A (N (1 - exp(-k / gamma)))^-alpha with seed noise: 6 sizes x
    k in {2, 3, 4, 16} x 3 seeds, with the total bits of int block-64 (k + 16/64 bits per parameter)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for size, n in zip(("xs", "s", "ms", "m", "l", "xl"), np.geomspace(1e5, 1e6, 6), strict=True):
        for k in (2.0, 3.0, 4.0, 16.0):
            for s in range(3):
                loss = 1.5 + 40 * (n * (1 - np.exp(-k / 1.2))) ** -0.35 + rng.normal(0, 0.004)
                rows.append({"family": "llama", "size": size, "n_params": n, "bits": k, "seed": s, "val_loss": loss,
                             "total_bits": n * (k + (0.25 if k < 16 else 0.0)), "dtype": "int", "method": "rtn",
                             "blocksize": 64, "train_tokens": 4 * n, "eval_tokens": 16256, "job": "quantize"})
    return pd.DataFrame(rows)


def test_joint_laws_join_the_particles_with_equal_mass_and_their_own_answers():
    """The bits question's particles: the per-k laws' replicates and, as many, the precision law's; each law's
    slice holds its own predictions at the candidates and its own best k at the budget (N = budget / bits per
    parameter of each k), recomputed here from its fit; 'none' keeps the per-k laws alone, and by default a joint
    law joins only when its fit is identified and good."""
    from analysis.fit import fit_law
    from analysis.plan import bits_per_param, bits_problem
    from analysis.settings import FitSettings

    runs = _precision_law_runs()
    cands = [("big", 3e6, 2.0), ("big", 3e6, 3.0), ("big", 3e6, 4.0)]
    kw = dict(candidates_nk=cands, existing_bases=set(), n_boot=40, seed=0)
    alone = bits_problem(runs, 3e6, laws=(), **kw)
    both = bits_problem(runs, 3e6, laws=("precision",), **kw)
    spans = both.laws["particles"]
    assert set(spans) == {"power_bits", "precision"} and alone.laws["particles"].keys() == {"power_bits"}
    (a0, a1), (b0, b1) = spans["power_bits"], spans["precision"]
    assert a0 == 0 and a1 == b0 and b1 - b0 == a1 - a0 == both.pred.shape[0] // 2 and both.pred.shape[1] == 3
    np.testing.assert_array_equal(both.pred[a0:a1], alone.pred[:a1])  # the per-k slice is the per-k laws' own
    fit = fit_law(runs, "precision", "val_loss", FitSettings(n_boot=40, seed=0, holdout=0))
    r = fit.boot_ok()[: b1 - b0]
    np.testing.assert_allclose(both.pred[b0:b1], fit.predict({"n_params": [3e6] * 3, "bits": [2.0, 3.0, 4.0]}, r))
    bpp = bits_per_param(runs)
    ks = [2.0, 3.0, 4.0, 16.0]
    at = fit.predict({"n_params": [3e6 / bpp[k] for k in ks], "bits": ks}, r)
    np.testing.assert_array_equal(both.target[b0:b1], np.array(ks)[np.argmin(at, axis=1)])
    default = bits_problem(runs, 3e6, **kw)
    status = fit.verdict()["status"]
    assert ("precision" in default.laws["particles"]) == (status == "ok"), (status, default.laws)
    if status != "ok":
        assert default.laws["left_out"]["precision"] == f"its fit is {status}"


def test_ksir_plan_names_its_laws_and_refuses_an_unknown_one(tmp_path, capsys):
    import json

    from analysis.plan_cli import main

    table = tmp_path / "runs.csv"
    _precision_law_runs().to_csv(table, index=False)
    args = [str(table), "--question", "size", "--target", "n_params=3e6,bits=4", "--budget", "1e30flops", "--bootstrap", "30",
            "--draws", "32", "--sizes", "2xl", "--out", str(tmp_path / "p")]
    assert main([*args, "--laws", "chinchilla"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--laws 'chinchilla': expected 'none' or laws from precision, efficiency (the size question)" in err[0]
    assert main([*args, "--laws", "precision"]) == 0
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    assert set(plan["laws"]) == {"power_bits", "precision"} and plan["replicates"] % 2 == 0
    assert all(set(v) == {"median"} for v in plan["laws"].values())  # a numeric target: each law's median
    assert "Laws whose replicates are the particles (equal prior mass): power_bits" in (tmp_path / "p" / "plan.md").read_text()
    assert plan["runs"] and all("the laws' means part by" in r["why"] for r in plan["runs"])


def test_the_one_seed_backtest_prices_each_seeds_base_and_the_grid_goes_seed_by_seed():
    """bench_plan --one-seed: a pick is one run and a base model costs once per (size, seed), by hand from the cost
    model (the default accounting prices a size once, whatever its seeds); the grid order's first batch is seed 0
    of the next size at every k."""
    import pandas as pd

    from analysis.plan import cost_model, scheme_runs

    root, bench = Path(__file__).resolve().parents[1], _bench()
    full = scheme_runs(pd.read_csv(root / KBIT))
    known = full[full["size"].isin(["xs", "s", "ms", "m"])]
    cm, n = cost_model(full), full.groupby("size")["n_params"].median()
    base = 6 * n["l"] * cm["tokens_per_param"] * n["l"] * cm["s_per_train_flop"]
    run = 2 * n["l"] * cm["eval_tokens"] * cm["s_per_flop"]
    assert bench._cost(full, known, [("l", 2.0, 0), ("l", 3.0, 0)]) == pytest.approx(base + 2 * run)
    assert bench._cost(full, known, [("l", 2.0, 0), ("l", 2.0, 1), ("l", 2.0, 2)]) == pytest.approx(3 * base + 3 * run)
    assert bench._cost(full, known, [("l", 2.0), ("l", 3.0)]) == pytest.approx(base + 2 * run)
    pool = bench._pool(full, known, by_seed=True)
    assert len(pool) == 2 * 7 * 3 and ("xl", 16.0, 2) in pool
    rows = bench.run_order(full, ["xs", "s", "ms", "m"], "grid", 1e7, 3.0, 1.01 * (base + 7 * run), 1, 20, 0,
                           one_seed=True)
    assert rows[0]["runs"] == 84 and rows[1]["runs"] == 84 + 7  # seed 0 of l at every k, within one base's budget
    path = [{"cost": c, "agree": a} for c, a in ((0, 0.9), (10, 0.96), (20, 0.93), (30, 0.95), (40, 0.99))]
    assert bench.reach(path, 0.95) == 10 and bench.reach_to_stay(path, 0.95) == 30  # a first touch can fall back
    assert bench.reach_to_stay(path[:3], 0.95) is None
