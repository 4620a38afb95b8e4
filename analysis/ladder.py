"""Accuracy of an unseen model in two steps, as scaling-ladder studies do (Bhagia et al. 2024):
loss from (N, k[, D]) by the loss law the headline trusts, then task accuracy from loss by a
sigmoid fitted on the measured (loss, accuracy) pairs.

Intervals are propagated by pairing bootstrap replicates: replicate s of the loss law gives a
loss, replicate s of the sigmoid turns it into an accuracy; the percentiles of those accuracies
are the interval. A held-out check refits both steps without the largest model size and
predicts its accuracy, the way a ladder of small models is used to predict a large one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from analysis.fit import FitError, FitResult, fit_law, fit_laws
from analysis.headline import Candidate, token_policy, tokens_at
from analysis.settings import FitSettings

ACC_LAW = "sigmoid_loss"
ACC_DELTA = 0.05  # Huber delta for accuracies (linear space): a few points of accuracy


def loss_model(cands: Sequence[Candidate], head: Mapping[str, Any]) -> Candidate | None:
    """The trusted loss law, else the best-scoring law that fitted; None without one."""
    by_name = {c.name: c for c in cands if c.fits}
    if head.get("trusted") in by_name:
        return by_name[head["trusted"]]
    return next(iter(by_name.values()), None)


def _inputs(cand: Candidate, df: pd.DataFrame, points: pd.DataFrame) -> list[tuple[FitResult, dict[str, np.ndarray]]]:
    """For each point, the fit that predicts it and its law's inputs."""
    out = []
    for _, pt in points.iterrows():
        fit = None
        first = next(iter(cand.fits.values()))
        if first.law.per_k:
            k = float(pt["bits"])
            key = next((key for key in cand.fits if float(key[0]) == k), None)
            if key is None:
                raise FitError(f"no per-k law for k = {k:g} (fitted: {sorted({float(x[0]) for x in cand.fits})})")
            rows = df[df["bits"] == k]
            bpp = float(np.median(rows["total_bits"] / rows["n_params"]))
            fit, x = cand.fits[key], {"total_bits": np.array([pt["n_params"] * bpp])}
        else:
            fit = first
            x = {c: np.array([float(pt[c])]) for c in fit.law.columns if c in pt and pd.notna(pt[c])}
        missing = [c for c in fit.law.columns if c not in x]
        if missing:
            raise FitError(f"{cand.name} needs {missing} to predict {dict(pt.dropna())}")
        out.append((fit, x))
    return out


def predict(cand: Candidate, acc_fit: FitResult | None, df: pd.DataFrame, points: pd.DataFrame) -> list[dict[str, Any]]:
    """Loss, and accuracy when an accuracy law is given, with 95% intervals at each point (columns n_params,
    bits, train_tokens)."""
    rows = []
    acc_boot = acc_fit.boot_ok() if acc_fit is not None else None
    for (fit, x), (_, pt) in zip(_inputs(cand, df, points), points.iterrows(), strict=True):
        loss = float(fit.predict(x)[0])
        row: dict[str, Any] = {**{c: float(v) for c, v in pt.items() if pd.notna(v)}, "loss": loss}
        lb = fit.boot_ok()
        if len(lb) >= 2:
            losses = fit.predict(x, lb)[:, 0]
            row["loss_ci95"] = tuple(float(v) for v in np.percentile(losses, [2.5, 97.5]))
        if acc_fit is not None:
            row["accuracy"] = float(acc_fit.predict({"val_loss": [loss]})[0])
            S = min(len(lb), len(acc_boot))
            if S >= 2:
                losses = fit.predict(x, lb[:S])[:, 0]
                accs = np.array([acc_fit.law.predict(acc_boot[s], {"val_loss": losses[s:s + 1]}, acc_fit.ctx)[0]
                                 for s in range(S)])
                row["accuracy_ci95"] = tuple(float(v) for v in np.percentile(accs, [2.5, 97.5]))
        rows.append(row)
    return rows


def forecast(df: pd.DataFrame, cands: Sequence[Candidate], head: Mapping[str, Any], metric: str, acc_metric: str,
             settings: FitSettings, points: Sequence[Mapping[str, float]]) -> dict[str, Any]:
    """`ksir-fit --predict`: loss at each asked point from the law the headline trusts (never from one it does
    not), and accuracy from that loss when the runs measured accuracy. What cannot be predicted is said in
    "error" (and ksir-fit exits 2) or "note" (accuracy left out), never skipped silently."""
    by_name = {c.name: c for c in cands if c.fits}
    cand = by_name.get(head.get("trusted"))
    if cand is None:
        return {"error": "no law is trusted on these runs (report.md says why), so nothing is predicted; "
                         "the measured runs are in runs.csv"}
    out: dict[str, Any] = {"law": cand.name, "metric": metric, "accuracy_metric": None}
    acc_fit = None
    n_acc = int(df[acc_metric].notna().sum()) if acc_metric in df else 0
    if acc_metric == metric or n_acc < 5:
        out["note"] = (f"loss only: {acc_metric} is measured on {n_acc} runs (the accuracy step needs 5); "
                       "pass --acc-metric to name another accuracy column")
    else:
        acc = df[df[acc_metric].notna()].assign(val_loss=df[metric])
        try:
            acc_fit = fit_law(acc, ACC_LAW, acc_metric, settings, holdout=0, delta=ACC_DELTA)
            out["accuracy_metric"] = acc_metric
        except FitError as e:
            out["note"] = f"loss only: the accuracy-from-loss law could not be fitted ({e})"
    try:
        out["rows"] = predict(cand, acc_fit, df, pd.DataFrame(list(points)))
    except FitError as e:
        return {"error": f"--predict: {e}"}
    return out


def default_points(df: pd.DataFrame) -> pd.DataFrame:
    """Every swept k at the largest measured size and at 10x it (tokens by the runs' own policy)."""
    policy = token_policy(df)
    n_max = float(df["n_params"].max())
    ks = sorted(df["bits"].dropna().unique()) if "bits" in df and df["bits"].notna().any() else [np.nan]
    rows = [{"n_params": n, "bits": k} for k in ks for n in (n_max, 10 * n_max)]
    pts = pd.DataFrame(rows)
    if policy is not None:
        pts["train_tokens"] = tokens_at(policy, pts["n_params"].to_numpy(float))
    return pts.dropna(axis=1, how="all")


def _refit(cand: Candidate, df: pd.DataFrame, metric: str, keys: list[str], st: FitSettings) -> Candidate:
    """The same law refitted on fewer runs (no bootstrap), grouped as the original, in one batch."""
    first = next(iter(cand.fits.values()))
    group_keys = keys if first.law.per_k else [k for k in keys if k != "bits"]
    groups = {(k if isinstance(k, tuple) else (k,)): g for k, g in df.groupby(group_keys, sort=True)} \
        if group_keys else {(): df}
    fits = fit_laws(groups, first.law, metric, st, n_boot=0, holdout=0)
    return Candidate(cand.name, {k: f for k, f in fits.items() if not isinstance(f, FitError)})


def heldout(cand: Candidate, df: pd.DataFrame, metric: str, acc_metric: str, keys: list[str],
            st: FitSettings) -> dict[str, Any]:
    """Both steps refitted without the largest model size, then its accuracy predicted."""
    n_max = df["n_params"].max()
    small, big = df[df["n_params"] < n_max], df[(df["n_params"] == n_max) & df[acc_metric].notna()]
    try:
        loss_c = _refit(cand, small, metric, keys, st)
        if not loss_c.fits:
            raise FitError("the loss law cannot be fitted without the largest size")
        acc_small = small[small[acc_metric].notna()].assign(val_loss=small[metric])
        acc_fit = fit_law(acc_small, ACC_LAW, acc_metric, st, n_boot=0, holdout=0, delta=ACC_DELTA)
        cols = [c for c in ("n_params", "bits", "train_tokens") if c in big]
        pred = predict(loss_c, acc_fit, small, big[cols])
    except FitError as e:
        return {"error": str(e)}
    err = np.array([p["accuracy"] for p in pred]) - big[acc_metric].to_numpy(float)
    return {"held_out_size": float(n_max), "n": len(pred), "mean_abs_error": float(np.abs(err).mean()),
            "max_abs_error": float(np.abs(err).max())}


def analyse(df: pd.DataFrame, cands: Sequence[Candidate], head: Mapping[str, Any], metric: str, acc_metric: str,
            keys: list[str], settings: FitSettings) -> dict[str, Any]:
    """Accuracy from loss (two steps), fitted as `settings` say (the accuracy law's own Huber delta), with
    predictions at every swept k at the largest size and 10x it (`forecast` answers the user's points)."""
    cand = loss_model(cands, head)
    acc = df[df[acc_metric].notna()].assign(val_loss=df[metric])
    out: dict[str, Any] = {"metric": acc_metric, "loss_law": cand.name if cand else None,
                           "method": f"{acc_metric} = lo + (hi - lo) sigmoid(-s (loss - m)) fitted on the measured "
                                     f"(loss, {acc_metric}) pairs; loss from {cand.name if cand else '-'}; 95% "
                                     "intervals from paired bootstrap replicates of both steps"}
    try:
        acc_fit = fit_law(acc, ACC_LAW, acc_metric, settings, holdout=0, delta=ACC_DELTA)
    except FitError as e:
        return {**out, "error": str(e)}
    out["acc_law"] = acc_fit.summary()
    if cand is None or "n_params" not in df:
        return out
    try:
        out["predictions"] = predict(cand, acc_fit, df, default_points(df))
    except FitError as e:
        out["predictions_error"] = str(e)
    if df["n_params"].nunique() >= 3:
        out["heldout"] = heldout(cand, df, metric, acc_metric, keys, settings)
    return out
