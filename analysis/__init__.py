"""Scaling-law analysis of ksir runs (or anyone's runs), as a Python API and the `ksir-fit` CLI.

    from analysis import load_records, fit_law, analyse
    runs = load_records(["outputs/demo/results"])          # Collected(runs=DataFrame, skipped=[...])
    fit = fit_law(runs.runs[runs.runs.bits == 4], "power_bits", "val_loss", n_boot=500)
    fit.summary()                                          # params, 95% CIs, R^2/AIC/BIC, held-out error
    report = analyse(runs, "outputs/demo")                 # fit.json, report.md, figures

Laws live in `analysis.laws.LAWS` (add an entry, or pass `analysis.laws.custom_law(...)`).
"""

from analysis.collect import Collected, load_records, load_table, load_wandb, select
from analysis.fit import FitError, FitResult, fit_law
from analysis.laws import LAWS, Law, custom_law, get_law
from analysis.report import analyse

__all__ = ["LAWS", "Collected", "FitError", "FitResult", "Law", "analyse", "custom_law", "fit_law", "get_law",
           "load_records", "load_table", "load_wandb", "select"]
