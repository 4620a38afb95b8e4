"""Scaling-law analysis of ksir runs (or anyone's runs): a Python API for notebooks and the
`ksir-fit` CLI (`analysis.cli`). See docs/analysis.md.

    from analysis import load_records, fit_law, analyse
    runs = load_records(["outputs/demo/results"])     # Collected(runs=DataFrame, skipped=[...])
    q = runs.runs[runs.runs.job == "quantize"]
    fit = fit_law(q[q.bits == 4], "power_bits", "val_loss", n_boot=500)
    fit.summary()                                     # parameters, 95% CIs, R^2/AIC/BIC, held-out error, verdict
    report = analyse(runs, "outputs/demo/fit")        # everything ksir-fit writes: fit.json, report.md, figures

Sources: `load_records` (local result records, the primary source), `load_wandb` (a W&B project
through the public API), `load_table` (CSV/JSON/Parquet with a column mapping). Laws live in
`analysis.laws.LAWS` (add an entry, or pass `custom_law(...)`); `analysis.support` picks them from
the columns, `analysis.headline` turns the fits into one answer per budget.
"""

from analysis.collect import Collected, clean, load_records, load_table, load_wandb, parse_map, select
from analysis.fit import (
           FitError,
           FitResult,
           bootstrap,
           fit_law,
           fit_laws,
           fit_once,
           goodness_of_fit,
           prepare,
           solve,
)
from analysis.laws import LAWS, Law, custom_law, get_law
from analysis.optimal import continuous_optimum, interpolated_optimum, per_k_optimum
from analysis.report import analyse, markdown

__all__ = ["LAWS", "Collected", "FitError", "FitResult", "Law", "analyse", "bootstrap", "clean", "continuous_optimum",
           "custom_law", "fit_law", "fit_laws", "fit_once", "get_law", "goodness_of_fit", "interpolated_optimum",
           "load_records", "load_table", "load_wandb", "markdown", "parse_map", "per_k_optimum", "prepare", "select",
           "solve"]
