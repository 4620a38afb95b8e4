"""The design of a run table: which runs are replicates of one configuration, which base model each run is
built on, and which baseline (the run at the reference precision of the same base model) each curve gets.

- A *configuration* is what defines a run for the fit: for ksir's records their whole identity but the seed
  (`config_key`), for a table every column ksir reads (N, D, k, total bits, the precisions, the scheme fields,
  declared base columns). Runs of one configuration are replicates, numbered by the replicate column (`seed`
  by default). Fits use them all; the bootstrap resamples configurations whole.
- A run's *base model* is named by its family, N and D, how ksir trained it (parametrization, matmul
  precision), any columns the user declares (`--base`), and its replicate: the seed-1 quantized model pairs
  with the seed-1 baseline.
- A *baseline* is a run at the reference precision (16 bits; `--reference bits=...`) that is neither a
  16-bit factor pair nor trained by QAT or distillation. It is the baseline of every scheme, method and
  regime built on its base model, whatever its own labels say (a table's `BF16:BF16` beside `QuEST:BF16`):
  never a curve of its own. A scheme without one cannot identify laws with a per-k parameter.

Copies of a baseline (one per scheme it joins) keep the row id `_row` and configuration id `_config` of
their original, so that fits count a shared baseline once and the bootstrap draws it once per resample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

# How ksir trained a base model: a baseline serves only curves built on its own kind of base model.
BASE_COLS = ("parametrization", "matmul_precision")
# Fields that make a curve (with k): one scheme at one bit-width.
SCHEME_COLS = ("dtype", "blocksize", "method", "regime", "backend", "packed_format", "lowrank_mode", "lowrank_rank",
               "rotate", "smooth", "layer_bits", "act_bits", "kv_bits", "attention_bits", "attention_learn", *BASE_COLS)
# Precisions besides the weights': a run with one of them below the reference is not the plain model.
OTHER_PRECISIONS = ("act_bits", "kv_bits", "attention_bits")
# Fields that define a configuration, besides the scheme: the replicate column is never one of them.
CONFIG_COLS = ("config_key", "family", "size", "n_params", "train_tokens", "bits", "total_bits", "act_bits",
               "kv_bits", "fwd_bits", "bwd_bits", "attention_bits", "lr", *SCHEME_COLS)
NOT_BASELINES = ("qat", "qat-finetune", "ptq+kd")  # regimes whose 16-bit runs are not the plain base model


def _text(df: pd.DataFrame, cols: Sequence[str]) -> pd.Series:
    """One string per row from the given columns (numbers normalised: 4 and 4.0 are one value)."""
    if not cols:
        return pd.Series("", index=df.index)
    parts = [df[c].map(_norm) for c in cols]
    out = parts[0]
    for p in parts[1:]:
        out = out + "|" + p
    return out


def _norm(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "-"
    if isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool):
        return f"{float(v):.12g}"
    return str(v)


def replicate_column(df: pd.DataFrame, name: str | None) -> str | None:
    """The replicate column if the table has it with at least one value."""
    return name if name and name in df and df[name].notna().any() else None


def label(df: pd.DataFrame, replicate: str | None, base: Sequence[str] = ()) -> pd.DataFrame:
    """`_row` (a run's id, kept by its copies) and `_config` (equal for replicates) on every row."""
    df = df.reset_index(drop=True).copy()
    df["_row"] = np.arange(len(df))
    cols = [c for c in dict.fromkeys((*CONFIG_COLS, *base)) if c in df and c != replicate]
    df["_config"] = pd.factorize(_text(df, cols))[0] if cols else df["_row"]
    return df


def base_key(df: pd.DataFrame, replicate: str | None, base: Sequence[str] = ()) -> pd.Series:
    """The base model of each run: family, N, D, ksir's training fields, declared columns, replicate."""
    cols = [c for c in dict.fromkeys(("family", "n_params", "train_tokens", *BASE_COLS, *base,
                                      *([replicate] if replicate else []))) if c in df]
    return _text(df, cols)


def is_reference(df: pd.DataFrame, reference: float) -> pd.Series:
    """Runs at the reference precision that are the plain base model (any labels)."""
    if "bits" not in df:
        return pd.Series(False, index=df.index)
    ref = pd.to_numeric(df["bits"], errors="coerce") == float(reference)
    if "lowrank_mode" in df:
        ref &= df["lowrank_mode"].astype(str) != "factorize"
    if "regime" in df:
        ref &= ~df["regime"].astype(str).isin(NOT_BASELINES)
    for c in OTHER_PRECISIONS:  # k-bit activations, KV cache or attention on 16-bit weights: not the plain model
        if c in df:
            v = pd.to_numeric(df[c], errors="coerce")
            ref &= v.isna() | (v == float(reference))
    return ref


def scheme_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in SCHEME_COLS if c in df]


def scheme_text(combo: pd.Series, cols: Sequence[str]) -> str:
    parts = [f"{c}={_norm(combo[c])}" for c in cols if _norm(combo[c]) not in ("-", "none", "nan")]
    return ", ".join(parts) or "plain"


def attach_baselines(df: pd.DataFrame, reference: float, replicate: str | None,
                     base: Sequence[str] = ()) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Each scheme's runs plus a copy of the baseline of every base model it is built on (the copy takes the
    scheme's labels), and one join entry per scheme for the terminal and fit.json: which baselines joined
    it, or which base models have none. Baselines that join no scheme are listed once, as unused."""
    ref = is_reference(df, reference)
    if not ref.any() or ref.all():
        return df, []
    keys = base_key(df, replicate, base)
    cols = scheme_columns(df)
    quant = df[~ref]
    combos = quant[cols].drop_duplicates() if cols else pd.DataFrame(index=[0])
    parts, joins, used = [quant], [], set()
    for _, combo in combos.iterrows():
        member = pd.Series(True, index=quant.index)
        for c in cols:
            member &= quant[c].map(_norm) == _norm(combo[c])
        name = scheme_text(combo, cols)
        if "lowrank_mode" in cols and combo["lowrank_mode"] == "factorize":  # its 16-bit curve is fp16 factors
            joins.append({"scheme": name, "baselines": 0, "reason": "factor pairs: their 16-bit curve is their own"})
            continue
        if any(c in cols and pd.notna(pd.to_numeric(combo[c], errors="coerce")) and
               float(combo[c]) != float(reference) for c in OTHER_PRECISIONS):
            joins.append({"scheme": name, "baselines": 0, "reason": "k-bit activations, KV cache or attention: their "
                          "16-bit weights point is their own run (quant.bits=16 with the same other bits)"})
            continue
        idx = quant.index[member.to_numpy()]
        first = dict(zip(keys.loc[idx][::-1], idx[::-1], strict=True))  # base model -> one of its runs
        b = df[ref & keys.isin(set(first))].copy()
        used |= set(b.index)
        missing = [first[k] for k in sorted(set(first) - set(keys.loc[b.index]))]
        for c in cols:
            b[c] = combo[c]
        parts.append(b)
        joins.append({"scheme": name, "baselines": int(len(b)), "base_models": len(first),
                      "missing": [_describe_key(df, i) for i in missing]})
    unused = df.index[ref & ~df.index.isin(used)]
    if len(unused):
        joins.append({"scheme": None, "baselines": int(len(unused)), "reason": "no quantized run of their base "
                      "model: not in any curve", "runs": [_describe_key(df, i) for i in unused[:10]]})
    return pd.concat(parts, ignore_index=True), joins


def _describe_key(df: pd.DataFrame, i: Any) -> str:
    row = df.loc[i]
    parts = [f"{c}={row[c]:.4g}" if isinstance(row[c], int | float | np.number) else f"{c}={row[c]}"
             for c in ("family", "n_params", "train_tokens") if c in df and _norm(row[c]) != "-"]
    return ", ".join(parts)


def join_lines(joins: list[dict[str, Any]], reference: float) -> list[str]:
    """The terminal's account of which baselines joined which curves."""
    out = []
    for j in joins:
        if j["scheme"] is None:
            out.append(f"  {j['baselines']} run(s) at k={reference:g} joined no curve ({j['reason']}): "
                       + "; ".join(j.get("runs", [])))
        elif "reason" in j:
            out.append(f"  {j['scheme']}: no k={reference:g} baseline ({j['reason']})")
        else:
            miss = f"; no k={reference:g} run for {len(j['missing'])} of them: " + "; ".join(j["missing"][:3]) \
                + (" ..." if len(j["missing"]) > 3 else "") if j["missing"] else ""
            out.append(f"  {j['scheme']}: k={reference:g} baselines of {j['baselines']} run(s) joined, "
                       f"{j['base_models']} base model(s){miss}")
    return (["baselines (runs at the reference precision, joined by base model):", *out] if out else [])


def paired_differences(df: pd.DataFrame, metric: str, reference: float, replicate: str | None,
                       base: Sequence[str] = ()) -> tuple[pd.DataFrame, list[str]]:
    """Each quantized run with `delta_<metric>` = its metric minus its base model's baseline (mean over the
    baseline's copies in the raw table, which are one run each); runs without a baseline are listed."""
    ref = is_reference(df, reference)
    keys = base_key(df, replicate, base)
    baseline = df[ref].groupby(keys[ref])[metric].mean()
    quant = df[~ref].copy()
    qkeys = keys[~ref]
    quant[f"delta_{metric}"] = quant[metric].to_numpy(float) - qkeys.map(baseline).to_numpy(float)
    lonely = quant[f"delta_{metric}"].isna()
    why = [f"{_describe_key(df, i)} k={_norm(df.loc[i, 'bits'])}: no k={reference:g} run of its base model"
           for i in quant.index[lonely]]
    return quant[~lonely], why
