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

The spread is the Gini impurity 1 - sum_k p_k^2 for a categorical target (k*) and the variance for a number.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np


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
    chosen: list[int] = []
    now = expected_spread(pred, target, chosen, sigma, fant, categorical)
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
            after = expected_spread(pred, target, [*chosen, c], sigma, fant, categorical)
            score = (now - after) / extra
            if best is None or score > best[0] + 1e-15:
                best = (score, c, extra, after)
        if best is None or best[0] <= 0:
            break
        _, c, extra, now = best
        chosen.append(c)
        picks.append({"index": c, "cost": extra, "spread_after": now})
    return {"picks": picks, "spread_now": start, "spread_after": now, "cost": _batch_cost(chosen, cands)}
