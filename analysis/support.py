"""Which laws a table can support, and which question it answers, decided from its columns.

A Chinchilla-style table (parameters, tokens, loss) answers "compute-optimal size and data for
a FLOP budget"; a k-bit table (parameters, bits, loss) answers "optimal k for a total-bit
budget"; parameters and loss alone give a plain size law. Asking for a law whose columns the
table lacks is a one-line error naming them, before any fit runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.fit import FitError
from analysis.laws import LAWS, Law, get_law

# Human names of the columns laws read, for error messages.
COLUMN_NAMES = {"n_params": "parameters", "train_tokens": "training tokens", "bits": "bits per weight k",
                "total_bits": "total model bits", "fwd_bits": "forward precision", "bwd_bits": "backward precision",
                "act_bits": "activation bits", "kv_bits": "KV-cache bits"}
DERIVED = ("fwd_bits", "bwd_bits")  # derived from `bits` (and the regime) where a table has only that


def varies(df: pd.DataFrame, col: str) -> bool:
    """The column exists, has numbers, and takes at least two values."""
    return col in df and pd.to_numeric(df[col], errors="coerce").dropna().nunique() >= 2


def present(df: pd.DataFrame, col: str) -> bool:
    return col in df and pd.to_numeric(df[col], errors="coerce").notna().any()


def independent(df: pd.DataFrame, col: str, of: str = "n_params") -> bool:
    """`col` varies on its own, not only as a function of `of`: some value of `of` comes with two values of
    `col`, or log col is not a straight line in log `of` (within 5%). Tokens set by a fixed tokens-per-
    parameter rule carry no information a data term could be fitted to: its B and beta would trade off
    with A and alpha (an unidentified law)."""
    if not (varies(df, col) and varies(df, of)):
        return False
    d = df[[of, col]].apply(pd.to_numeric, errors="coerce").dropna()
    d = d[(d > 0).all(axis=1)].drop_duplicates()
    if (d.groupby(of)[col].nunique() > 1).any():
        return True
    x, y = np.log(d[of].to_numpy(float)), np.log(d[col].to_numpy(float))
    resid = y - np.polyval(np.polyfit(x, y, 1), x)
    return bool(np.abs(resid).max() > np.log(1.05))


def question(df: pd.DataFrame) -> str:
    """"bits" (optimal k per total-bit budget), "compute" (optimal N, D per FLOP budget) or "size"."""
    if varies(df, "bits") and present(df, "total_bits"):
        return "bits"
    if independent(df, "train_tokens"):
        return "compute"
    if varies(df, "n_params"):
        return "size"
    raise FitError("the runs vary neither bits k (with total bits) nor parameters N: no scaling question to "
                   f"answer (columns: {', '.join(sorted(map(str, df.columns))[:30])})")


def auto_laws(df: pd.DataFrame) -> list[str]:
    """The laws worth fitting on these columns (per-k power laws are fitted whenever k varies)."""
    q = question(df)
    if q == "compute":
        return ["chinchilla"]
    if q == "size":
        return ["power_params"]
    laws = ["power_bits"]
    if varies(df, "n_params"):
        laws += ["precision", "efficiency"]
        if independent(df, "train_tokens"):
            # Degradation laws need D to vary on its own: with D set by N, their beta trades off with alpha.
            laws += ["precision_data", "efficiency_data", "quant_degradation", "ptq_degradation"]
        if varies(df, "act_bits") or varies(df, "kv_bits"):
            laws.append("precision_multi")
        if ("fwd_bits" in df or "bwd_bits" in df) and independent(df, "train_tokens"):
            laws.append("quartet")
    return laws


def check_laws(df: pd.DataFrame, names: Sequence[str], metric: str, extra: Mapping[str, Law] | None = None) -> list[str]:
    """The requested laws, each checked against the columns present (one-line FitError otherwise)."""
    extra = dict(extra or {})
    for name in names:
        law = extra.get(name) or get_law(name)
        cols = [c for c in law.columns if c != metric and not (c in DERIVED and "bits" in df)]
        missing = [c for c in cols if not present(df, c)]
        if missing:
            have = ", ".join(sorted(map(str, df.columns))[:30])
            raise FitError(f"law {name} needs column(s) {', '.join(f'{c} ({COLUMN_NAMES.get(c, c)})' for c in missing)}"
                           f", which the runs do not have (columns: {have}); map yours with --map theirs=ours")
        if law.optional and not any(present(df, c) for c in law.optional):
            raise FitError(f"law {name} needs at least one of {', '.join(law.optional)} beside {', '.join(cols)}; "
                           f"the runs have none (columns: {', '.join(sorted(map(str, df.columns))[:30])})")
    return list(dict.fromkeys(names))


def laws_for(df: pd.DataFrame, requested: Sequence[str], metric: str, extra: Mapping[str, Law] | None = None) -> list[str]:
    """Requested laws (checked), or the automatic choice; per-k power laws whenever k varies; user laws
    (`extra`, from --law-file) always."""
    extra = dict(extra or {})
    users = check_laws(df, [n for n in extra if n not in requested], metric, extra)
    if requested:
        laws = check_laws(df, requested, metric, extra)
        if varies(df, "bits") and present(df, "total_bits") and "power_bits" not in laws:
            laws = ["power_bits", *laws]
        return [*laws, *users]
    return [*auto_laws(df), *users]


__all__ = ["LAWS", "auto_laws", "check_laws", "independent", "laws_for", "present", "question", "varies"]
