"""Figures in one style (PNG + PDF). Every figure says what was measured and how many runs."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.fit import FitResult  # noqa: E402

STYLE = {"figure.figsize": (7.0, 4.6), "figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "font.size": 10, "legend.fontsize": 8,
         "legend.frameon": False, "savefig.bbox": "tight"}
METRIC_LABELS = {"val_loss": "validation loss (nats/token)", "val_ppl": "validation perplexity",
                 "val_acc": "next-token accuracy", "zs_acc_mean": "mean zero-shot accuracy"}


def _save(fig: plt.Figure, path: Path) -> list[str]:
    """PNG + PDF; the caption (title and what was measured) is also stored as the files' Title metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    caption = getattr(fig, "_ksir_caption", "")
    out = []
    for ext in (".png", ".pdf"):
        fig.savefig(path.with_suffix(ext), metadata={"Title": caption})
        out.append(str(path.with_suffix(ext)))
    plt.close(fig)
    return out


def _colors(n: int) -> list[Any]:
    return [plt.cm.viridis(x) for x in np.linspace(0.0, 0.9, max(n, 1))]


def _title(ax: plt.Axes, title: str, subtitle: str) -> None:
    ax.set_title(f"{title}\n{subtitle}", fontsize=10, loc="left")
    ax.figure._ksir_caption = f"{title}. {subtitle}"


def curves(df: pd.DataFrame, metric: str, keys: list[str], path: Path, title: str, subtitle: str,
           fits: Mapping[tuple, FitResult] | None = None, extrapolate: float = 1.0,
           style_key: str | None = None) -> list[str]:
    """Metric vs total model bits (log x), one curve per key (k, or k + scheme), fitted lines with
    95% bootstrap bands; `style_key` (e.g. regime) changes the line style, not the colour."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        groups = list(df.groupby(keys, sort=True))
        color_of = {}
        for key, _ in groups:
            key = key if isinstance(key, tuple) else (key,)
            ck = key[0]
            color_of.setdefault(ck, None)
        palette = dict(zip(color_of, _colors(len(color_of)), strict=True))
        styles = ["-", "--", ":", "-."]
        style_vals = sorted(df[style_key].astype(str).unique()) if style_key else []
        for key, g in groups:
            key = key if isinstance(key, tuple) else (key,)
            c = palette[key[0]]
            ls = styles[style_vals.index(str(g[style_key].iloc[0])) % 4] if style_key else "-"
            label = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in zip(keys, key, strict=True))
            g = g.sort_values("total_bits")
            ax.scatter(g["total_bits"], g[metric], color=c, s=22, zorder=3, marker="o" if ls == "-" else "^")
            fit = (fits or {}).get(key)
            if fit is not None:
                xs = np.geomspace(g["total_bits"].min(), g["total_bits"].max() * extrapolate, 100)
                ax.plot(xs, fit.predict({"total_bits": xs}).reshape(-1), color=c, ls=ls, lw=1.5, label=label)
                if fit.boot is not None:
                    bp = fit.predict({"total_bits": xs}, fit.boot[np.isfinite(fit.boot).all(axis=1)])
                    lo, hi = np.nanpercentile(bp, [2.5, 97.5], axis=0)
                    ax.fill_between(xs, lo, hi, color=c, alpha=0.15, lw=0)
            else:
                ax.plot(g["total_bits"], g[metric], color=c, ls=ls, lw=1.0,
                        label=label + (" (data only: not fitted)" if fits is not None else ""))
        ax.set_xscale("log")
        ax.set_xlabel("total model bits (parameters x bits, incl. block constants and 16-bit parts)")
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        _title(ax, title, subtitle)
        ax.legend(ncol=2 if len(groups) > 6 else 1)
        return _save(fig, path)


def optimal_k(per_k: list[dict[str, Any]], continuous: list[dict[str, Any]] | None, path: Path,
              subtitle: str) -> list[str]:
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        b = np.array([r["budget_bits"] for r in per_k])
        ax.step(b, [r["best_k"] for r in per_k], where="mid", color="C0", label="best swept k (per-k laws)")
        if "best_k_ci95" in per_k[0]:
            lo = [r["best_k_ci95"][0] for r in per_k]
            hi = [r["best_k_ci95"][1] for r in per_k]
            ax.fill_between(b, lo, hi, step="mid", color="C0", alpha=0.15, label="95% bootstrap interval")
        if continuous:
            bc = np.array([r["budget_bits"] for r in continuous])
            ax.plot(bc, [r["k_star"] for r in continuous], color="C3", label="continuous k* (joint law)")
            if "k_star_ci95" in continuous[0]:
                ax.fill_between(bc, [r["k_star_ci95"][0] for r in continuous],
                                [r["k_star_ci95"][1] for r in continuous], color="C3", alpha=0.12)
        ext = [r["budget_bits"] for r in per_k if r["extrapolated"]]
        if ext:
            ax.axvspan(min(ext), max(ext), color="grey", alpha=0.08, label="extrapolated (beyond the runs)")
        ax.set_xscale("log")
        ax.set_xlabel("total-bit budget")
        ax.set_ylabel("optimal bits per parameter k")
        _title(ax, "Optimal bit-width for a fixed total-bit budget", subtitle)
        ax.legend()
        return _save(fig, path)


def residuals(df: pd.DataFrame, metric: str, keys: list[str], fits: Mapping[tuple, FitResult], path: Path,
              subtitle: str) -> list[str]:
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        cols = _colors(len(fits))
        for c, (key, fit) in zip(cols, fits.items(), strict=True):
            g = df[np.logical_and.reduce([df[k] == v for k, v in zip(keys, key, strict=True)])]
            r = np.log(fit.predict(g).reshape(-1)) - np.log(g[metric].to_numpy(float))
            ax.scatter(g["total_bits"], r, color=c, s=20, label=",".join(map(str, key)))
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("total model bits")
        ax.set_ylabel(f"log(predicted / measured {metric})")
        _title(ax, "Residuals of the fitted laws", subtitle)
        ax.legend(ncol=2)
        return _save(fig, path)


def schemes_at_fixed_k(df: pd.DataFrame, metric: str, scheme_cols: list[str], path: Path, subtitle: str) -> list[str]:
    """Data type / block size / method compared at each fixed k (one panel per k)."""
    ks = sorted(df["bits"].unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(ks), figsize=(3.2 * len(ks), 3.6), sharey=True, squeeze=False)
        schemes = sorted(df.groupby(scheme_cols).groups)
        cols = dict(zip(schemes, _colors(len(schemes)), strict=True))
        for ax, k in zip(axes[0], ks, strict=True):
            for s, g in df[df["bits"] == k].groupby(scheme_cols):
                g = g.sort_values("total_bits")
                ax.plot(g["total_bits"], g[metric], "o-", color=cols[s], ms=3, lw=1,
                        label=",".join(map(str, s if isinstance(s, tuple) else (s,))))
            ax.set_xscale("log")
            ax.set_title(f"k = {k:g}", fontsize=9)
            ax.set_xlabel("total model bits")
        axes[0][0].set_ylabel(METRIC_LABELS.get(metric, metric))
        axes[0][-1].legend(title="/".join(scheme_cols))
        fig.suptitle(f"{' / '.join(scheme_cols)} at fixed k\n{subtitle}", fontsize=10, x=0.01, ha="left")
        fig._ksir_caption = f"{' / '.join(scheme_cols)} at fixed k. {subtitle}"
        return _save(fig, path)
