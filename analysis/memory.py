"""The memory axis: formula bits (ksir.quant.bits) or the bytes a packed model measurably occupies.

`ksir-fit --budget measured_bytes` refits on what the models really store: each packed run's `total_bits`
becomes 8 x its measured bytes (the formula value is kept as `formula_total_bits`). A 16-bit baseline
takes the bytes of the 16-bit model measured next to a packed run of the same base model (`ref_bytes`); a
run with no measurement (simulated) is left out with that reason. `table` compares both axes per format.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.collect import Collected
from analysis.fit import FitError
from ksir.quant.vocab import REFERENCE_BITS, is_baseline

BUDGETS = ("total_bits", "measured_bytes", "inference")


def use_inference(collected: Collected, context: int, batch: int) -> Collected:
    """Runs with the memory of inference as their total bits: the weights (total_bits) plus the KV cache of `batch`
    sequences of `context` tokens at each run's cache precision (kv_bits_per_token, ksir.quant.bits). Curves are
    then per (weights scheme, kv_bits): the answer is the best (k_w, k_kv) for an inference-memory budget."""
    df = collected.runs.copy()
    per_token = pd.to_numeric(df.get("kv_bits_per_token", pd.Series(np.nan, index=df.index)), errors="coerce")
    if not per_token.notna().any():
        raise FitError("--budget inference: no run records kv_bits_per_token (quantize jobs record it since ksir's "
                       "KV-cache axis; a table needs that column)")
    keep = per_token.notna()
    skipped = [*collected.skipped, *(_left_out(df, i, "--budget inference: no kv_bits_per_token")
                                     for i in df.index[~keep])]
    df["weight_total_bits"] = df.get("total_bits")
    df["kv_total_bits"] = per_token * float(context) * float(batch)
    df["total_bits"] = pd.to_numeric(df["total_bits"], errors="coerce") + df["kv_total_bits"]
    return Collected(df[keep].reset_index(drop=True), skipped)


def use_measured(collected: Collected) -> Collected:
    """Runs with measured bytes as their total bits; the others left out one by one, with the reason."""
    df = collected.runs.copy()
    if "measured_bytes" not in df or not pd.to_numeric(df["measured_bytes"], errors="coerce").notna().any():
        raise FitError("--budget measured_bytes: no run has measured bytes (only quantize jobs with a packed "
                       "quant.backend measure them)")
    measured = pd.to_numeric(df["measured_bytes"], errors="coerce")
    bits = pd.to_numeric(df.get("bits"), errors="coerce")
    if "ref_bytes" in df and "checkpoint" in df:  # the 16-bit model, measured beside each packed run
        ref = pd.to_numeric(df["ref_bytes"], errors="coerce").groupby(df["checkpoint"]).median()
        base = measured.isna() & (bits == REFERENCE_BITS)
        measured = measured.where(~base, df["checkpoint"].map(ref))
    keep = measured.notna() & (measured > 0)
    skipped = list(collected.skipped)
    for i in df.index[~keep]:
        why = ("16-bit baseline: no packed run of its base model measured the 16-bit model" if is_baseline(bits.get(i))
               else f"no measured bytes (backend {df.get('backend', pd.Series(dtype=str)).get(i, 'simulated')})")
        skipped.append(_left_out(df, i, f"--budget measured_bytes: {why}"))
    df["formula_total_bits"] = df.get("total_bits")
    df["total_bits"] = 8.0 * measured
    return Collected(df[keep].reset_index(drop=True), skipped)


def _left_out(df: pd.DataFrame, i: Any, reason: str) -> dict[str, str]:
    """A run a memory axis cannot place: its source and key, and why."""
    return {"source": str(df.get("source", pd.Series(dtype=str)).get(i, "")),
            "run_key": str(df.get("run_key", pd.Series(dtype=str)).get(i, "")), "reason": reason}


def table(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Formula vs measured memory per packed format and bit-width: median and range of measured / formula."""
    if "measured_bytes" not in runs or "formula_bytes" not in runs:
        return []
    df = runs[pd.to_numeric(runs["measured_bytes"], errors="coerce").notna()].copy()
    if df.empty:
        return []
    df["ratio"] = pd.to_numeric(df["measured_bytes"]) / pd.to_numeric(df["formula_bytes"])
    out = []
    keys = [c for c in ("backend", "packed_format", "bits", "blocksize", "packed") if c in df]
    for key, g in df.groupby(keys, dropna=False, sort=True):
        row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        r = g["ratio"].to_numpy(float)
        big = g.loc[pd.to_numeric(g["n_params"]).idxmax()] if "n_params" in g else g.iloc[0]
        row.update(n=len(g), ratio_median=float(np.median(r)), ratio_min=float(r.min()), ratio_max=float(r.max()),
                   ratio_largest_model=float(big["ratio"]),
                   formula_bits_per_param=float(np.median(8 * pd.to_numeric(g["formula_bytes"]) / pd.to_numeric(g["n_params"]))),
                   measured_bits_per_param=float(np.median(8 * pd.to_numeric(g["measured_bytes"]) / pd.to_numeric(g["n_params"]))))
        out.append(_plain(row))
    return out


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}


def lines(rows: list[dict[str, Any]], budget: str) -> list[str]:
    """The report.md section."""
    if not rows:
        return []
    axis = ("the budget axis is measured bytes x 8 (`--budget measured_bytes`)" if budget == "measured_bytes"
            else "the budget axis is the formula (`--budget measured_bytes` refits on measured bytes)")
    out = ["## Memory: formula vs measured", "",
           f"Bytes of each packed model as stored (state dict, constants included) over ksir's formula; {axis}.", "",
           "| backend | format | k | block | packed | runs | measured / formula: median [min, max] | at the largest "
           "model | bits/param formula | measured |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.get('backend')} | {r.get('packed_format')} | {r.get('bits', float('nan')):g} | "
                   f"{r.get('blocksize', '')} | {r.get('packed', '')} | {r['n']} | {r['ratio_median']:.4f} "
                   f"[{r['ratio_min']:.4f}, {r['ratio_max']:.4f}] | {r['ratio_largest_model']:.4f} | "
                   f"{r['formula_bits_per_param']:.3f} | {r['measured_bits_per_param']:.3f} |")
    return out + [""]
