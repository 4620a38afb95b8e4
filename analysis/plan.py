"""Which next runs most narrow the answer, per unit of compute (ksir-plan's core; issue 29).

A fit's bootstrap replicates are a particle picture of what today's runs allow: each replicate is a law the data
cannot rule out, and its target (the best k at a total-bit budget, a predicted loss, a compute-optimal size) is
one value of the answer's distribution. A candidate run is valued by preposterior analysis on those particles:
were replicate t the truth, the run would measure y = f_t(x) + noise; weighting every replicate by the likelihood
of y leaves the posterior that the run would leave, and with it the spread of the target. The expected spread
after the run, averaged over fantasies (t drawn from the replicates, noise from the measured scatter), against
today's spread, is what the run is worth; divided by its cost, its rank. A batch is chosen greedily on the same
fantasies (common random numbers), so a run that would tell what an earlier pick tells is worth little, and a
base model shared by several post-training runs is paid once.

The spread is the Gini impurity 1 - sum_k p_k^2 for a categorical target (k*), valued on reweighted particles,
and the variance for a number, valued with the replicates taken as jointly Gaussian (`gaussian_spread`).

The particles of the bits and size questions are the per-k laws' replicates and, with equal prior mass, the
replicates of every joint law L(N, k) that the runs identify well (`JOINT_LAWS`, a fit whose verdict is "ok";
`laws=` names them instead): where two laws that fit today's runs part, a run that tells them apart is worth
what it settles, and the answer's spread holds their disagreement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

MIN_GAIN = 1e-6  # a pick must take at least this share of today's spread (or this much, from zero)


@dataclass(frozen=True)
class Candidate:
    """One run that could be launched: its model, its precision, what it costs, and the base it needs."""

    n_params: float
    bits: float
    cost: float  # seconds (or FLOPs): the run itself, without the base model it needs
    base: str  # the base model it quantizes (a new one costs `base_cost` once per batch)
    base_cost: float = 0.0  # 0 when the base model exists already
    label: str = ""
    extra: dict = field(default_factory=dict, compare=False)


def spread(target: np.ndarray, weights: np.ndarray, categorical: bool) -> np.ndarray:
    """Spread of a target under particle weights: target [S], weights [..., S] (rows sum to 1) -> [...]."""
    if categorical:
        values = np.unique(target)
        p = np.stack([(weights * (target == v)).sum(axis=-1) for v in values], axis=-1)
        return 1.0 - (p ** 2).sum(axis=-1)
    mean = (weights * target).sum(axis=-1)
    return (weights * target ** 2).sum(axis=-1) - mean ** 2


@dataclass
class Fantasies:
    """Draws shared by every candidate and batch (common random numbers): which replicate is the truth in draw m,
    and the noise of each candidate's measurement in draw m."""

    truth: np.ndarray  # [M] replicate indices
    noise: np.ndarray  # [M, C] standard-normal draws

    @classmethod
    def draw(cls, n_replicates: int, n_candidates: int, n_draws: int, seed: int) -> Fantasies:
        rng = np.random.default_rng(seed)
        return cls(rng.integers(0, n_replicates, n_draws), rng.standard_normal((n_draws, n_candidates)))


def expected_spread(pred: np.ndarray, target: np.ndarray, chosen: Sequence[int], sigma: float, fant: Fantasies,
                    categorical: bool) -> float:
    """E[spread of the target after measuring the chosen candidates]. pred [S, C]: each replicate's prediction at
    each candidate; sigma: the measurement's noise (same units)."""
    S = pred.shape[0]
    if not len(chosen):
        return float(spread(target, np.full(S, 1.0 / S), categorical))
    idx = np.asarray(chosen)
    y = pred[fant.truth][:, idx] + sigma * fant.noise[:, idx]  # [M, B]: what the runs would measure
    loglik = -(((y[:, None, :] - pred[None, :, idx]) / sigma) ** 2).sum(axis=-1) / 2  # [M, S]
    w = np.exp(loglik - loglik.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return float(spread(target, w, categorical).mean())


def gaussian_spread(pred: np.ndarray, target: np.ndarray, chosen: Sequence[int], sigma: float) -> float:
    """The target's variance after measuring the chosen candidates, with the replicates' predictions and target
    taken as jointly Gaussian (the ensemble's covariances; the linearised design criterion): Var(t) - c^T
    (C + sigma^2 I)^-1 c. Used for a numeric target: unlike reweighted particles it does not collapse onto a few
    replicates when the noise is small next to their spread."""
    t = target - target.mean()
    var = float(np.mean(t ** 2))
    if not len(chosen):
        return var
    y = pred[:, list(chosen)] - pred[:, list(chosen)].mean(axis=0)
    cyy = y.T @ y / len(t) + sigma ** 2 * np.eye(y.shape[1])
    cty = y.T @ t / len(t)
    return max(var - float(cty @ np.linalg.solve(cyy, cty)), 0.0)


def _batch_cost(chosen: Sequence[int], cands: Sequence[Candidate]) -> float:
    bases = {cands[i].base: cands[i].base_cost for i in chosen}
    return sum(cands[i].cost for i in chosen) + sum(bases.values())


def greedy_batch(pred: np.ndarray, target: np.ndarray, cands: Sequence[Candidate], budget: float, sigma: float, *,
                 categorical: bool, draws: int = 256, seed: int = 0, max_runs: int | None = None) -> dict:
    """Candidates picked one at a time by expected spread reduction per unit of cost, within `budget`.

    Returns the picks in order (index, cost paid, expected spread after), today's spread and the spread after the
    whole batch. Deterministic for a given seed."""
    if sigma <= 0 or not np.isfinite(sigma):
        raise ValueError(f"the measurement noise must be a positive number, got {sigma}")
    fant = Fantasies.draw(pred.shape[0], pred.shape[1], draws, seed)

    def after_runs(idx: list[int]) -> float:
        return expected_spread(pred, target, idx, sigma, fant, True) if categorical else \
            gaussian_spread(pred, target, idx, sigma)

    chosen: list[int] = []
    now = after_runs(chosen)
    start, picks = now, []
    while max_runs is None or len(chosen) < max_runs:
        paid = _batch_cost(chosen, cands)
        best = None
        for c in range(len(cands)):
            if c in chosen:
                continue
            extra = _batch_cost([*chosen, c], cands) - paid
            if paid + extra > budget or extra <= 0:
                continue
            after = after_runs([*chosen, c])
            score = (now - after) / extra
            if best is None or score > best[0] + 1e-15:
                best = (score, c, extra, after)
        if best is None or best[0] * best[2] <= MIN_GAIN * max(start, MIN_GAIN):
            break  # nothing left that narrows the target more than rounding does
        _, c, extra, now = best
        chosen.append(c)
        picks.append({"index": c, "cost": extra, "spread_after": now})
    return {"picks": picks, "spread_now": start, "spread_after": now, "cost": _batch_cost(chosen, cands)}


# ---- the questions, on a runs table ------------------------------------------------------------------------

QUESTIONS = ("bits", "size", "compute")


@dataclass
class Problem:
    """What the planner needs from the runs and the fit: each replicate's prediction at every candidate, each
    replicate's target, the noise of one measurement and the candidates with their costs."""

    pred: np.ndarray  # [S, C]
    target: np.ndarray  # [S]
    categorical: bool
    sigma: float
    candidates: list[Candidate]
    describe: str  # the target in words
    fits: dict = field(default_factory=dict)  # k -> FitResult (the current fit)
    unit: str = "FLOPs"
    laws: dict = field(default_factory=dict)  # law -> its particles' slice of pred/target, and why others are out


def scheme_runs(runs, dtype: str | None = None, method: str | None = None):
    """One scheme's k-bit runs plus the 16-bit baselines: the per-k curves the bits question compares."""
    import pandas as pd

    from analysis.design import is_reference

    runs = runs[pd.to_numeric(runs["bits"], errors="coerce").notna()]
    base = is_reference(runs, 16)
    quant = runs[~base]
    for col, want in (("dtype", dtype), ("method", method)):
        if col in quant and quant[col].notna().any():
            pick = want or quant[col].mode().iloc[0]
            quant = quant[quant[col] == pick]
    if "blocksize" in quant and quant["blocksize"].notna().any():
        quant = quant[quant["blocksize"] == quant["blocksize"].mode().iloc[0]]
    for col in ("act_bits", "kv_bits", "attention_bits", "rotate", "lowrank_mode", "smooth", "layer_bits"):
        if col in quant:
            quant = quant[quant[col].isna()]
    return pd.concat([quant, runs[base]])


def bits_per_param(runs) -> dict[float, float]:
    """Measured bits per parameter at each k (block constants and 16-bit parts included)."""
    ratio = runs["total_bits"] / runs["n_params"]
    return {float(k): float(v) for k, v in ratio.groupby(runs["bits"].astype(float)).median().items()}


def cost_model(runs) -> dict:
    """FLOPs of a post-training run (2 N per evaluated token) and of a new base model (6 N D, D at the runs'
    tokens per parameter), and seconds per FLOP where the records measured wall time (the same hardware): a
    quantize job's wall time over its evaluation FLOPs, a train record's training time over 6 N D."""
    import pandas as pd

    n = pd.to_numeric(runs["n_params"], errors="coerce")
    out = {"tokens_per_param": float((pd.to_numeric(runs.get("train_tokens"), errors="coerce") / n).median())
           if "train_tokens" in runs else float("nan"),
           "eval_tokens": float(pd.to_numeric(runs["eval_tokens"], errors="coerce").median())
           if "eval_tokens" in runs else float("nan"), "s_per_flop": None}
    if "wall_time_s" in runs and "eval_tokens" in runs:
        rate = pd.to_numeric(runs["wall_time_s"], errors="coerce") / (2 * n * pd.to_numeric(runs["eval_tokens"],
                                                                                             errors="coerce"))
        rate = rate[(rate > 0) & rate.notna()]
        out["s_per_flop"] = float(rate.median()) if len(rate) else None
    out["s_per_train_flop"] = out["s_per_flop"]  # without train records: training at evaluation's rate (a guess)
    if "train_time_s" in runs and "train_tokens" in runs:
        rate = pd.to_numeric(runs["train_time_s"], errors="coerce") / (6 * n * pd.to_numeric(runs["train_tokens"],
                                                                                               errors="coerce"))
        rate = rate[(rate > 0) & rate.notna()]
        if len(rate):
            out["s_per_train_flop"] = float(rate.median())
    return out


def measurement_noise(runs, groups: dict, fits: dict) -> float:
    """The noise of one new run: the seed-to-seed scatter of one configuration where the runs have replicates
    (pooled standard deviation), else the fit's residual scatter (which also holds its misfit)."""
    if "seed" in runs and runs["seed"].nunique() > 1:
        g = runs.groupby([runs["size"].astype(str), runs["bits"].astype(float)])["val_loss"]
        var, dof = (g.var(ddof=1) * (g.count() - 1)).sum(), (g.count() - 1).sum()
        if dof > 0 and var > 0:
            return max(float(np.sqrt(var / dof)), 1e-4)
    resid = np.concatenate([g["val_loss"].to_numpy(float) - fits[k].predict(g) for k, g in groups.items() if k in fits])
    return max(float(np.sqrt(np.mean(resid ** 2))), 1e-4)


def fit_bits(runs, n_boot: int, seed: int, need: int = 2) -> tuple[dict, dict, dict]:
    """Per-k power laws L_k(total bits) with bootstrap replicates: (runs per k, fits, aligned replicates per k)."""
    from analysis.fit import FitResult, aligned_replicates, fit_laws
    from analysis.settings import FitSettings

    groups = {float(k): g for k, g in runs.groupby(runs["bits"].astype(float))}
    fitted = fit_laws(groups, "power_bits", "val_loss", FitSettings(n_boot=n_boot, seed=seed, holdout=0))
    fits = {k: f for k, f in fitted.items() if isinstance(f, FitResult)}
    if len(fits) < need:
        why = "; ".join(f"{k:g} bits: {e}" for k, e in fitted.items() if not isinstance(e, FitResult))
        raise ValueError(f"too few bit-widths have a fitted curve to plan from ({len(fits)}): {why or 'no runs'}")
    al = aligned_replicates(list(fits.values()))
    if al is None:
        raise ValueError("the fits have no bootstrap replicates to plan from (use --bootstrap 100 or more)")
    S, ok = al
    return groups, fits, {k: f.boot[:S][ok] for k, f in fits.items()}


def best_k(fits: dict, reps: dict, budget_bits: float) -> np.ndarray:
    """Each replicate's k with the lowest predicted loss at a total-bit budget ([S])."""
    ks = sorted(fits)
    pb = np.stack([fits[k].predict({"total_bits": [budget_bits]}, reps[k])[:, 0] for k in ks], axis=1)
    return np.array(ks)[np.argmin(np.where(np.isfinite(pb), pb, np.inf), axis=1)]


JOINT_LAWS = ("precision", "efficiency")  # L(N, k) laws whose replicates join the per-k laws' as particles


def joint_law_particles(runs, names: Sequence[str] | None, n_boot: int, seed: int,
                        default: Sequence[str] = JOINT_LAWS) -> tuple[dict, dict]:
    """({law: FitResult} whose replicates join the particles, {law: why not}) for the other laws: `names`, or
    None for every law of `default` (the joint laws L(N, k); COMPUTE_LAWS for the compute question) whose fit is
    identified and good."""
    from analysis.fit import FitError, fit_law
    from analysis.settings import FitSettings

    fits, out = {}, {}
    for name in (default if names is None else names):
        try:
            fit = fit_law(runs, name, "val_loss", FitSettings(n_boot=n_boot, seed=seed, holdout=0))
        except FitError as e:
            out[name] = str(e).splitlines()[0]
            continue
        status = fit.verdict().get("status")
        if names is None and status != "ok":
            out[name] = f"its fit is {status}"
        elif len(fit.boot_ok()) < 2:
            out[name] = "no bootstrap replicates"
        else:
            fits[name] = fit
    return fits, out


def base_key(size: str, seed: int | None = None) -> str:
    """The base model a post-training run quantizes: its size, and its training seed where seeds are planned."""
    return size if seed is None else f"{size}/seed {seed}"


def trained_bases(runs, by_seed: bool) -> set[str]:
    """The `base_key`s of the base models the runs quantized: per (size, training seed), or per size."""
    seeds = runs["seed"] if by_seed else [None] * len(runs)
    return {base_key(str(x), None if d is None else int(d)) for x, d in zip(runs["size"], seeds, strict=True)}


def equal_mass(sets: dict[str, tuple[np.ndarray, np.ndarray]], need: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Each law's particles ({law: (predictions [S, C], target [S])}), finite ones only, joined with equal prior
    mass: as many from every law. Returns (pred, target, {law: its rows}); fewer than `need` per law is an error."""
    kept = {}
    for name, (pr, t) in sets.items():
        ok = np.isfinite(pr).all(axis=1) & np.isfinite(t)
        kept[name] = (pr[ok], t[ok])
    per_law = min(len(t) for _, t in kept.values())
    if per_law < need:
        raise ValueError(f"too few converged replicates to plan from ({per_law} in one law)")
    spans = {name: (i * per_law, (i + 1) * per_law) for i, name in enumerate(kept)}
    return (np.concatenate([pr[:per_law] for pr, _ in kept.values()]),
            np.concatenate([t[:per_law] for _, t in kept.values()]), spans)


def bits_problem(runs, budget_bits: float | None, *, candidates_nk: list[tuple],
                 existing_bases: set[str], n_boot: int = 200, seed: int = 0, target_n: float | None = None,
                 target_k: float | None = None, laws: Sequence[str] | None = None) -> Problem:
    """The bits question (k* at `budget_bits`) or the size question (the loss at `target_n` parameters and
    `target_k` bits), from per-k power laws L_k(total bits) and their bootstrap replicates, joined by the joint
    laws' (`joint_law_particles`; `laws=()` for the per-k laws alone).

    candidates_nk: (size name, n_params, k[, seed]) of the runs that could be added; with a seed, a candidate may
    repeat a configuration at a new seed (a replicate: the same prediction, measured once more with the seed-to-seed
    noise) and its base model is (size, seed). existing_bases: `base_key`s of the base models trained already."""
    groups, fits, reps = fit_bits(runs, n_boot, seed, need=2 if target_n is None else 1)
    bpp = bits_per_param(runs)
    sigma = measurement_noise(runs, groups, fits)
    cm = cost_model(runs)
    ks = sorted(fits)
    if target_n is None:
        target = best_k(fits, reps, budget_bits)
        describe, categorical = f"the best k at {budget_bits:.3g} total bits", True
    else:
        k = float(target_k if target_k is not None else max(ks))
        if k not in fits:
            raise ValueError(f"--target bits={k:g}: no fitted curve at that k (fitted: {', '.join(f'{x:g}' for x in ks)})")
        target = fits[k].predict({"total_bits": [target_n * bpp[k]]}, reps[k])[:, 0]
        describe, categorical = f"the loss of a {target_n:.3g}-parameter model at {k:g} bits", False
    cands, cols = [], []
    for size, n, k, *more in candidates_nk:
        if float(k) not in fits:
            continue
        run_seed = more[0] if more else None
        base = base_key(size, run_seed)
        flops = 2 * n * cm["eval_tokens"] if np.isfinite(cm["eval_tokens"]) else 2 * n * 1e5
        base_flops = 0.0 if base in existing_bases else 6 * n * (cm["tokens_per_param"] * n)
        rate, train_rate = cm["s_per_flop"] or 1.0, cm["s_per_train_flop"] or 1.0
        cands.append(Candidate(n, float(k), cost=flops * rate, base=base, base_cost=base_flops * train_rate,
                               label=f"{size} {k:g}-bit" + ("" if run_seed is None else f" seed {run_seed}"),
                               extra={"size": size, **({} if run_seed is None else {"seed": int(run_seed)})}))
        cols.append(fits[float(k)].predict({"total_bits": [n * bpp.get(float(k), float(k))]}, reps[float(k)])[:, 0])
    if not cands:
        raise ValueError("no candidate run: every (size, k) asked for is run already or has no fitted curve")
    sets = {"power_bits": (np.stack(cols, axis=1), target)}
    joint, left_out = joint_law_particles(runs, laws, n_boot, seed) if laws != () else ({}, {})
    for name, fit in joint.items():
        r = fit.boot_ok()
        cand_pred = fit.predict({"n_params": [c.n_params for c in cands], "bits": [c.bits for c in cands]}, r)
        if target_n is None:  # each replicate's best k at the budget: N = budget / bits per parameter of each k
            at = fit.predict({"n_params": [budget_bits / bpp.get(k, k) for k in ks], "bits": ks}, r)
            t = np.array(ks)[np.argmin(np.where(np.isfinite(at), at, np.inf), axis=1)]
        else:
            t = fit.predict({"n_params": [target_n], "bits": [k]}, r)[:, 0]
        sets[name] = (cand_pred, t)
    pred, target, spans = equal_mass(sets, need=2 if len(sets) > 1 else 0)
    return Problem(pred, target, categorical, sigma, cands, describe, fits,
                   unit="s" if cm["s_per_flop"] else "FLOPs", laws={"particles": spans, "left_out": left_out})


COMPUTE_LAWS = ("kaplan",)  # L(N, D) laws whose replicates join Chinchilla's as particles of the compute question


def compute_problem(runs, flops: float, candidates_nd: list[tuple[str, float, float]], *, n_boot: int = 200,
                    seed: int = 0, laws: Sequence[str] | None = None) -> Problem:
    """The compute question: the compute-optimal N at `flops` (its log, per bootstrap replicate), from Chinchilla's
    law joined, with equal prior mass, by the replicates of every other L(N, D) law (`COMPUTE_LAWS`: Kaplan et
    al.'s) that the runs identify well, or of the `laws` named (() for Chinchilla's alone): the laws part most
    where they are extrapolated, and a run that tells them apart is worth what it settles. Candidates are
    training runs (label, N, D), each costing 6 N D FLOPs."""
    from analysis.fit import FitError, fit_law
    from analysis.headline import LOG_N_OPT
    from analysis.settings import FitSettings

    settings = FitSettings(n_boot=n_boot, seed=seed, holdout=0)
    try:
        fit = fit_law(runs, "chinchilla", "val_loss", settings)
    except FitError as e:
        raise ValueError(f"Chinchilla's law cannot be fitted on these runs: {e}") from None
    if len(fit.boot_ok()) < 2:
        raise ValueError("the fit has no bootstrap replicates to plan from (use --bootstrap 100 or more)")
    others, left_out = joint_law_particles(runs, laws, n_boot, seed, default=COMPUTE_LAWS)
    fits = {"chinchilla": fit, **others}
    resid = runs["val_loss"].to_numpy(float) - fit.predict(runs)
    sigma = max(float(np.sqrt(np.mean(resid ** 2))), 1e-4)
    cands = [Candidate(n, 16.0, cost=6 * n * d, base=label, label=label,
                       extra={"size": label.split("@")[0], "tokens_per_param": d / n}) for label, n, d in candidates_nd]
    if not cands:
        raise ValueError("no candidate run: every (N, D) asked for is run already")
    sets = {}
    for name, f in fits.items():
        reps = f.boot_ok()
        pred = f.predict({"n_params": [c.n_params for c in cands],
                          "train_tokens": [c.n_params * c.extra["tokens_per_param"] for c in cands]}, reps)
        sets[name] = (pred, LOG_N_OPT[name](reps, flops))
    pred, target, spans = equal_mass(sets, need=2)
    return Problem(pred, target, False, sigma, cands, f"log N_opt at {flops:.3g} FLOPs", fits, unit="FLOPs",
                   laws={"particles": spans, "left_out": left_out})
