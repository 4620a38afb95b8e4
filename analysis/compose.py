"""Do the precisions' effects compose? Kumar et al.'s N_eff fitted on single-axis runs, tested on mixed ones.

Kumar et al. (2025) model each precision (weights, activations, KV cache) as one factor of an effective parameter
count, N_eff = N prod_x (1 - exp(-P_x / gamma_x)), so a model with several low precisions loses what each loses
alone, multiplied. That is testable: fit the law on runs where at most one precision is below the reference
(single-axis runs, the 16-bit baselines included), predict every run where two or more are (mixed runs), and
compare. The answer is each mixed configuration's relative error with the bootstrap's 95% interval of its
prediction, and whether the measured loss lies inside it; a study's claim on composition declares its own margin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from analysis.fit import FitError, fit_law
from analysis.laws import PRECISION_COLUMNS
from analysis.settings import REFERENCE_BITS, FitSettings


def low_precisions(df: pd.DataFrame, reference: float = REFERENCE_BITS) -> pd.Series:
    """How many of the run's precisions (bits, act_bits, kv_bits) are below the reference."""
    count = pd.Series(0, index=df.index)
    for c in PRECISION_COLUMNS:
        if c in df:
            count += (pd.to_numeric(df[c], errors="coerce").fillna(reference) < reference).astype(int)
    return count


def mixed_holdout(df: pd.DataFrame, metric: str = "val_loss", settings: FitSettings | None = None) -> dict[str, Any]:
    """precision_multi on the single-axis runs, predicting each mixed configuration (replicates averaged)."""
    st = settings or FitSettings()
    n_low = low_precisions(df, st.reference)
    single, mixed = df[n_low <= 1], df[n_low >= 2]
    if mixed.empty:
        raise FitError("no mixed run (two or more precisions below the reference): nothing to predict")
    fit = fit_law(single, "precision_multi", metric, st)
    cols = [c for c in ("n_params", *PRECISION_COLUMNS) if c in mixed]
    # a precision left blank is the reference (a run without KV bits kept a 16-bit cache): a value to group on
    mixed = mixed.assign(**{c: pd.to_numeric(mixed[c], errors="coerce").fillna(st.reference)
                            for c in cols if c != "n_params"})
    rows = []
    for key, g in mixed.groupby(cols, sort=True):
        point = dict(zip(cols, key if isinstance(key, tuple) else (key,), strict=True))
        x = pd.DataFrame([point])
        pred = float(fit.predict(x)[0])
        ok = fit.boot_ok()
        boot = fit.predict(x, ok)[:, 0] if len(ok) else np.array([])
        boot = boot[np.isfinite(boot)]
        lo, hi = (np.percentile(boot, [2.5, 97.5]).tolist() if boot.size else [None, None])
        measured = float(pd.to_numeric(g[metric]).mean())
        rows.append({**{c: float(v) for c, v in point.items()}, "measured": measured, "predicted": pred,
                     "ci95": [lo, hi], "rel_error": (pred - measured) / measured, "replicates": int(len(g)),
                     "inside": lo is not None and lo <= measured <= hi})
    if not rows:
        raise FitError("no mixed configuration has a loss to predict")
    errors = np.abs([r["rel_error"] for r in rows])
    return {"law": "precision_multi", "fitted_on": int(len(single)), "predicted": rows,
            "mean_abs_rel_error": float(errors.mean()), "max_abs_rel_error": float(errors.max()),
            "fit": {k: v for k, v in fit.summary().items() if k in ("params", "goodness_of_fit", "identifiability",
                                                                     "verdict", "warnings")}}
