"""Figures in one style (PNG + PDF). Every figure says how many runs it shows, which law drew its lines
and how its intervals were made, draws a law solid only where it was fitted, and reads in black and white."""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from analysis.fit import FitResult  # noqa: E402
from analysis.optimal import label_k  # noqa: E402

STYLE = {"figure.figsize": (7.0, 4.6), "figure.dpi": 110, "axes.grid": True, "grid.alpha": 0.3,
         "axes.spines.top": False, "axes.spines.right": False, "font.size": 10, "legend.fontsize": 8,
         "legend.frameon": False, "savefig.bbox": "tight",
         "pdf.compression": 0}  # zlib took a third of each PDF save; the files stay a few hundred kB
X_LABELS = {"total_bits": "total model bits (parameters x bits, incl. block constants and 16-bit parts)",
            "n_params": "parameters N"}
METRIC_LABELS = {"val_loss": "validation loss (nats/token)", "val_ppl": "validation perplexity",
                 "val_acc": "next-token accuracy", "zs_acc_mean": "mean zero-shot accuracy"}
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p", "d", "H", "8")
# Line styles a fitted (in-range) curve may take; "--" is kept for extrapolation alone.
FIT_STYLES: tuple[Any, ...] = ("-", "-.", ":", (0, (6, 1.5, 1, 1.5, 1, 1.5)))
EXTRAP = {"ls": "--", "lw": 1.0, "alpha": 0.75}
MARGIN = 0.03  # axes margins: no empty borders
Y_PAD = 0.15  # y limits never reach further than this fraction of the data's span beyond the data
LEGEND_INSIDE_MAX = 4  # more legend entries than this go below the axes, in columns, off the data
LEGEND_COLUMNS = 4
# A band's opacity: light enough that the points and the other curves' bands show through; fainter when
# many curves' bands overlap.
BAND_ALPHA, BAND_ALPHA_MANY, MANY_BANDS = 0.15, 0.08, 3
SPAN_COLOR = "0.85"

_last_figure: plt.Figure | None = None  # the figure saved last; its artists outlive plt.close (for tests)


# ---- labels ----------------------------------------------------------------------------------------------


BUDGET_LABELS = {"measured_bytes": "measured model bytes x 8 (bits, packed models)",
                 "inference": "inference memory: weights + KV cache at --context x --batch tokens (bits)"}


def budget_label(budget: str) -> str | None:
    """The x-axis of a memory budget other than ksir's formula bits (None: the default label)."""
    return BUDGET_LABELS.get(budget)


def describe_law(fits: Iterable[FitResult] | None) -> str:
    """'law NAME: FORMULA' for the law(s) that drew a figure's lines (or says that none did)."""
    laws = {f.law.name: f.law.formula for f in (fits or [])}
    if not laws:
        return "no law fitted (lines join the measured points)"
    return "; ".join(f"law {name}: {formula}" for name, formula in laws.items())


def describe_intervals(fits: Iterable[FitResult] | None, what: str = "bands") -> str:
    """How the bands were made, e.g. '95% bootstrap percentile bands, 200 resamples of runs'."""
    boot = [f for f in (fits or []) if f.boot is not None and len(f.boot_ok()) >= 2]
    if not boot:
        return "no intervals"
    sizes = sorted({len(f.boot) for f in boot})
    count = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    of = {"cases": "runs", "residuals": "residuals"}
    methods = sorted({of.get(f.boot_method or "", f.boot_method or "?") for f in boot})
    return f"95% bootstrap percentile {what}, {count} resamples of {' or '.join(methods)}"


def _runs(n: int | None) -> str:
    return "n = ? runs (not given)" if n is None else f"n = {n} run{'s' if n != 1 else ''}"


def _as_key(v: Any) -> tuple:
    return v if isinstance(v, tuple) else (v,)


def _key_label(keys: Sequence[str], key: tuple) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in zip(keys, key, strict=True))


def _wrap(text: str, inches: float, fontsize: float) -> str:
    """Wrap to a width in inches (about 0.5 em per character) so that long captions stay on the page."""
    width = max(40, int(inches * 72 / (0.5 * fontsize)))
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def _title(ax: plt.Axes | None, title: str, subtitle: str, stats: str, fig: plt.Figure | None = None) -> None:
    """Title, subtitle and 'n; law; intervals' on the figure, and the same words as its caption."""
    fig = fig if fig is not None else ax.figure
    sub = subtitle.rstrip(". ")
    inches = fig.get_figwidth() * (ax.get_position().width if ax is not None else 0.95)
    text = _wrap(f"{title}\n{sub}\n{stats}" if sub else f"{title}\n{stats}", inches, 9)
    if ax is not None:
        ax.set_title(text, fontsize=9, loc="left")
    else:
        fig.suptitle(text, fontsize=9, x=0.01, y=1.0, ha="left", va="bottom")
    fig._ksir_caption = f"{title}. {sub}. {stats}" if sub else f"{title}. {stats}"


# ---- drawing helpers -------------------------------------------------------------------------------------


def _save(fig: plt.Figure, path: Path) -> list[str]:
    """PNG + PDF; the caption (title and what was measured) is also stored as the files' Title metadata."""
    global _last_figure
    path.parent.mkdir(parents=True, exist_ok=True)
    caption = getattr(fig, "_ksir_caption", "")
    out = []
    # The tight box once for both files: "tight" would lay the figure out again for each (a third of the time).
    box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
    for ext in (".png", ".pdf"):
        fig.savefig(path.with_suffix(ext), metadata={"Title": caption}, bbox_inches=box)
        out.append(str(path.with_suffix(ext)))
    plt.close(fig)
    _last_figure = fig
    return out


def _colors(n: int) -> list[Any]:
    """viridis up to 0.85 (brighter is faint on white): its luminance rises steadily, so series differ
    in grey too."""
    return [plt.cm.viridis(x) for x in np.linspace(0.0, 0.85, max(n, 1))]


def _legend(ax: plt.Axes, handles: list[Any] | None = None, title: str | None = None) -> None:
    """Inside ('best') when short; outside on the right when long, so that it never covers data."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    handles = [h for h in handles if not str(h.get_label()).startswith("_")]
    if not handles:
        return
    if len(handles) > LEGEND_INSIDE_MAX:  # below the x label, as many columns as fit the axes' width
        renderer = ax.figure.canvas.get_renderer()
        for ncol in range(min(LEGEND_COLUMNS, len(handles)), 0, -1):
            leg = ax.legend(handles=handles, title=title, bbox_to_anchor=(0.5, -0.16), loc="upper center",
                            borderaxespad=0, ncol=ncol, columnspacing=1.2, handlelength=2.2)
            if leg.get_window_extent(renderer).width <= ax.get_window_extent(renderer).width:
                break
    else:
        ax.legend(handles=handles, title=title, loc="best")


def _finite(*values: Any) -> np.ndarray:
    """The finite numbers in arrays, series, scalars and (nested) lists of them, as one flat array."""
    parts = [_finite(*v) if isinstance(v, list | tuple) else np.asarray(v, dtype=float).ravel()
             for v in values]
    v = np.concatenate(parts) if parts else np.empty(0)
    return v[np.isfinite(v)]


def _fit_ylim(ax: plt.Axes, data_y: Any, curve_y: Any = ()) -> None:
    """Limits fit the data and the curves, but a curve (an extrapolation, a band, an outlier prediction)
    may stretch them at most Y_PAD of the data's span beyond the data; every measured point stays shown."""
    d, c = _finite(data_y), _finite(data_y, curve_y)
    if not len(d):
        return
    dlo, dhi = float(d.min()), float(d.max())
    span = dhi - dlo if dhi > dlo else max(abs(dhi), 1.0)
    lo, hi = float(c.min()), float(c.max())
    m = MARGIN * (hi - lo if hi > lo else span)
    lo, hi = max(lo - m, dlo - Y_PAD * span), min(hi + m, dhi + Y_PAD * span)
    ax.set_ylim(min(lo, dlo - MARGIN * span), max(hi, dhi + MARGIN * span))


def _shade_extrapolated(ax: plt.Axes, x0: float, x1: float) -> None:
    if x1 > x0:
        ax.axvspan(x0, x1, color=SPAN_COLOR, alpha=0.5, lw=0, zorder=0,
                   label="extrapolated (beyond the largest run)")


def _band(fit: FitResult, xs: np.ndarray, x: str = "total_bits") -> tuple[np.ndarray, np.ndarray] | None:
    boot = fit.boot_ok()
    if len(boot) < 2:
        return None
    with np.errstate(all="ignore"):
        bp = fit.predict({x: xs}, boot)
        lo, hi = np.nanpercentile(np.where(np.isfinite(bp), bp, np.nan), [2.5, 97.5], axis=0)
    return lo, hi


def _draw_fit(ax: plt.Axes, fit: FitResult, x_lo: float, x_hi: float, extrapolate: float, color: Any,
              ls: Any, x: str = "total_bits", band_alpha: float = BAND_ALPHA) -> list[np.ndarray]:
    """The law solid over the runs it was fitted on, thin dashed up to x_hi * extrapolate (tagged with
    gid 'fit' / 'extrapolated'); its 95% band over the fitted range only (gid 'band'): beyond it, the band of
    every curve would cover the plot. Returns the central curves' y."""
    ys = []
    for gid, a, b in (("fit", x_lo, x_hi), ("extrapolated", x_hi, x_hi * extrapolate)):
        if b <= a:
            continue
        xs = np.geomspace(a, b, 80)
        y = fit.predict({x: xs}).reshape(-1)
        style = {"ls": ls, "lw": 1.6, "alpha": 1.0} if gid == "fit" else EXTRAP
        ax.plot(xs, y, color=color, gid=gid, zorder=2, **style)
        band = _band(fit, xs, x) if gid == "fit" else None
        if band is not None:
            ax.fill_between(xs, *band, color=color, alpha=band_alpha, lw=0, zorder=1, gid="band")
        ys.append(y)
    return ys


def _series_handle(color: Any, marker: str, ls: Any, label: str) -> Line2D:
    return Line2D([], [], color=color, marker=marker, ms=5, ls=ls, lw=1.4, label=label)


def _extrapolation_handles(ax: plt.Axes) -> list[Any]:
    """Legend entries for the dashed lines and the shaded span, if the figure has them."""
    out: list[Any] = []
    if any(line.get_gid() == "extrapolated" and np.isfinite(np.asarray(line.get_ydata(), float)).any()
           for line in ax.get_lines()):
        out.append(Line2D([], [], color="0.3", label="law beyond its runs (dashed)", **EXTRAP))
    out += [p for p in ax.patches if "extrapolated" in str(p.get_label())]
    return out


# ---- figures ---------------------------------------------------------------------------------------------


def curves(df: pd.DataFrame, metric: str, keys: list[str], path: Path, title: str, subtitle: str,
           fits: Mapping[tuple, FitResult] | None = None, extrapolate: float = 1.0,
           style_key: str | None = None, *, law_label: str | None = None,
           interval_label: str | None = None, x: str = "total_bits", xlabel: str | None = None) -> list[str]:
    """Metric vs total model bits (log x), one curve per key (k, or k + scheme): colour by the first key,
    a marker per curve; fitted laws solid over each curve's runs and dashed up to `extrapolate` x its
    largest run (shaded where beyond every run), with 95% bootstrap bands; `style_key` (e.g. regime)
    changes the fitted line style. `law_label` / `interval_label` override what the fits say; `x` is the
    column on the x axis (the fits' only input: total bits, or parameters for a size law)."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        groups = [(_as_key(k), g) for k, g in df.groupby(keys, sort=True)]
        palette = dict(zip(dict.fromkeys(k[0] for k, _ in groups), _colors(len({k[0] for k, _ in groups})),
                           strict=True))
        style_vals = sorted(df[style_key].astype(str).unique()) if style_key else []
        line_style = {v: FIT_STYLES[i % len(FIT_STYLES)] for i, v in enumerate(style_vals)}
        handles, curve_y, used = [], [], []
        n_fitted = sum(1 for key, _ in groups if key in (fits or {}))
        band_alpha = BAND_ALPHA if n_fitted <= MANY_BANDS else BAND_ALPHA_MANY
        for i, (key, g) in enumerate(groups):
            g = g.sort_values(x)
            c, marker = palette[key[0]], MARKERS[i % len(MARKERS)]
            ls = line_style[str(g[style_key].iloc[0])] if style_key else "-"
            label = _key_label(keys, key)
            fit = (fits or {}).get(key)
            if fit is not None:
                used.append(fit)
                ax.plot(g[x], g[metric], ls="none", marker=marker, ms=5, color=c, gid="data",
                        zorder=3)
                x_lo, x_hi = g[x].min(), g[x].max()
                curve_y += _draw_fit(ax, fit, x_lo, x_hi, extrapolate, c, ls, x, band_alpha)
            else:
                label += " (data only: not fitted)" if fits is not None else ""
                ax.plot(g[x], g[metric], ls=ls, lw=1.0, marker=marker, ms=5, color=c, gid="data",
                        zorder=3)
            handles.append(_series_handle(c, marker, ls, label))
        if extrapolate > 1 and used:
            _shade_extrapolated(ax, df[x].max(), df[x].max() * extrapolate)
        ax.set_xscale("log")
        ax.margins(MARGIN)
        _fit_ylim(ax, df[metric], curve_y)
        ax.set_xlabel(xlabel or X_LABELS.get(x, x))
        ax.set_ylabel(METRIC_LABELS.get(metric, metric))
        stats = "; ".join([_runs(int(df[metric].notna().sum())), law_label or describe_law(used),
                           interval_label or describe_intervals(used)])
        _title(ax, title, subtitle, stats)
        _legend(ax, handles + _extrapolation_handles(ax))
        return _save(fig, path)


def _step_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of a step line that changes value half-way (in log x) between points."""
    mid = np.sqrt(x[:-1] * x[1:])
    xs = np.concatenate([[x[0]], np.repeat(mid, 2), [x[-1]]])
    return xs, np.repeat(y, 2)


Piece = tuple[bool, np.ndarray, list[np.ndarray]]  # (inside the runs?, x, ys) of a cut polyline


def _split(x: np.ndarray, ys: list[np.ndarray], x0: float | None) -> list[Piece]:
    """A polyline (increasing x) cut at x0 (interpolated in log x): [(inside?, x, ys), ...]."""
    i = len(x) if x0 is None else int(np.searchsorted(x, x0, side="right"))
    if i == 0:
        return [(False, x, ys)]
    if i == len(x):
        return [(True, x, ys)]
    t = (np.log(x0) - np.log(x[i - 1])) / (np.log(x[i]) - np.log(x[i - 1]))
    at = [y[i - 1] + t * (y[i] - y[i - 1]) for y in ys]
    return [(True, np.r_[x[:i], x0], [np.r_[y[:i], a] for y, a in zip(ys, at, strict=True)]),
            (False, np.r_[x0, x[i:]], [np.r_[a, y[i:]] for y, a in zip(ys, at, strict=True)])]


def _line_with_band(ax: plt.Axes, x: np.ndarray, y: np.ndarray, band: tuple[np.ndarray, np.ndarray] | None,
                    x0: float | None, color: Any, step: bool) -> None:
    """A line (solid up to x0, dashed after; gid 'fit' / 'extrapolated') and its band with marked edges."""
    ys = [y] + (list(band) if band is not None else [])
    xs, vs = (x, ys) if not step else (_step_xy(x, ys[0])[0], [_step_xy(x, v)[1] for v in ys])
    for inside, px, py in _split(xs, vs, x0):
        style = {"ls": "-", "lw": 1.6} if inside else EXTRAP
        ax.plot(px, py[0], color=color, gid="fit" if inside else "extrapolated", zorder=3, **style)
        if band is not None:
            ax.fill_between(px, py[1], py[2], color=color, alpha=0.18 if inside else 0.08, lw=0, zorder=1)
    if band is not None:
        for edge, m in zip(band, ("v", "^"), strict=True):
            ax.plot(xs, _step_xy(x, edge)[1] if step else edge, color=color, lw=0.6, alpha=0.6, zorder=2)
            ax.plot(x, edge, ls="none", marker=m, ms=3.5, color=color, alpha=0.8, gid="band_edge", zorder=2)


def optimal_k(per_k: list[dict[str, Any]], continuous: list[dict[str, Any]] | None, path: Path,
              subtitle: str, *, source: str | None = None, n_runs: int | None = None,
              interval_label: str | None = None, observed_max: float | None = None,
              continuous_source: str | None = None, xlabel: str | None = None) -> list[str]:
    """Best k per total-bit budget (step line, markers at the budgets evaluated) with its bootstrap
    interval, and the continuous k* of a joint law if given; dashed and shaded beyond the runs.
    `observed_max` (largest measured total bits) places the boundary; by default, the last budget
    not flagged extrapolated."""
    source = source or "per-k laws"
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        b = np.array([r["budget_bits"] for r in per_k], dtype=float)
        k = np.array([r["best_k"] for r in per_k], dtype=float)
        inside = [r["budget_bits"] for r in per_k if not r["extrapolated"]]
        x0 = observed_max if observed_max is not None else (max(inside) if inside else b.min())
        # Nothing answered beyond the runs (the interpolated data stop there): no dashed line, no shaded span.
        beyond = (b > x0) & np.isfinite(k)
        if continuous:
            beyond = beyond.any() or any(r["budget_bits"] > x0 and np.isfinite(r["k_star"]) for r in continuous)
        x0 = x0 if np.any(beyond) else None
        c1, c2 = _colors(3)[0], _colors(3)[2]
        band = _ci(per_k, "best_k_ci95")
        _line_with_band(ax, b, k, band, x0, c1, step=True)
        ax.plot(b, k, ls="none", marker="o", ms=5, color=c1, gid="data", zorder=4)
        handles = [_series_handle(c1, "o", "-", f"best swept k ({source})")]
        ys = [k, *(band or ())]
        if band is not None:
            handles.append(_band_handle(c1, "95% bootstrap interval of the best k"))
        if continuous:
            bc = np.array([r["budget_bits"] for r in continuous], dtype=float)
            kc = np.array([r["k_star"] for r in continuous], dtype=float)
            cband = _ci(continuous, "k_star_ci95")
            _line_with_band(ax, bc, kc, cband, x0, c2, step=False)
            ax.plot(bc, kc, ls="none", marker="D", ms=4, color=c2, gid="data", zorder=4)
            name = continuous_source or "joint law"
            handles.append(_series_handle(c2, "D", "-", f"continuous k* ({name})"))
            ys += [kc, *(cband or ())]
            if cband is not None:
                handles.append(_band_handle(c2, "95% bootstrap interval of k*"))
        if x0 is not None:
            _shade_extrapolated(ax, x0, b.max())
        swept = _swept_ks(per_k)
        ax.set_xscale("log")
        ax.margins(MARGIN)
        _fit_ylim(ax, [*ys, swept])  # the y range spans every swept k, so one can see what was chosen from
        if continuous:  # k* takes any value: integer ticks
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        elif 0 < len(swept) <= 12:  # the best k is one of the swept k: tick exactly those
            ax.set_yticks(swept)
        ax.set_xlabel(f"budget: {xlabel}" if xlabel else "total-bit budget (bits)")
        ax.set_ylabel("optimal bits per parameter k")
        answer = f"answer from {source}" + (f"; continuous k* from {continuous_source or 'a joint law'}"
                                             if continuous else "")
        intervals = interval_label or ("95% bootstrap percentile intervals" if band is not None
                                       else "no intervals")
        _title(ax, "Optimal bit-width for a fixed total-bit budget", subtitle,
               "; ".join([_runs(n_runs), answer, intervals]))
        _legend(ax, handles + _extrapolation_handles(ax))
        return _save(fig, path)


def _swept_ks(rows: list[dict[str, Any]]) -> list[float]:
    """The k of every curve the per-k answer chose from (labels 'k' or 'k,scheme...')."""
    ks = set()
    for label in rows[0].get("predicted", {}) if rows else ():
        try:
            ks.add(label_k(label))
        except ValueError:
            continue
    return sorted(ks)


def _ci(rows: list[dict[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray] | None:
    if not rows or any(r.get(name) is None for r in rows):
        return None
    lo, hi = (np.array([r[name][i] for r in rows], dtype=float) for i in (0, 1))
    return lo, hi


def _band_handle(color: Any, label: str) -> Patch:
    return Patch(facecolor=color, alpha=0.25, edgecolor=color, lw=0.6, label=label + " (edges: v ^)")


def residuals(df: pd.DataFrame, metric: str, keys: list[str], fits: Mapping[tuple, FitResult], path: Path,
              subtitle: str, *, law_label: str | None = None, xlabel: str | None = None) -> list[str]:
    """log(predicted / measured) per run against total bits, a marker per curve, with the zero line."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        handles, n, rs = [], 0, []
        for i, (c, (key, fit)) in enumerate(zip(_colors(len(fits)), fits.items(), strict=True)):
            g = df[np.logical_and.reduce([df[k] == v for k, v in zip(keys, key, strict=True)])]
            with np.errstate(all="ignore"):
                r = np.log(fit.predict(g).reshape(-1)) - np.log(g[metric].to_numpy(float))
            marker = MARKERS[i % len(MARKERS)]
            ax.plot(g["total_bits"], r, ls="none", marker=marker, ms=5, color=c, gid="data", zorder=3)
            handles.append(_series_handle(c, marker, "none", _key_label(keys, key)))
            n, rs = n + len(g), [*rs, r]
        ax.axhline(0, color="k", lw=0.8, zorder=2)
        ax.set_xscale("log")
        ax.margins(MARGIN)
        _fit_ylim(ax, [*rs, [0.0]])
        ax.set_xlabel(xlabel or "total model bits")
        ax.set_ylabel(f"log(predicted / measured {metric})")
        stats = "; ".join([_runs(n), law_label or describe_law(fits.values()),
                           "no intervals (one point per run)"])
        _title(ax, "Residuals of the fitted laws", subtitle, stats)
        _legend(ax, handles)
        return _save(fig, path)


def schemes_at_fixed_k(df: pd.DataFrame, metric: str, scheme_cols: list[str], path: Path,
                       subtitle: str) -> list[str]:
    """Data type / block size / method compared at each fixed k (one panel per k, n in each panel's title);
    a marker and colour per scheme, the same in every panel."""
    ks = sorted(df["bits"].unique())
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(ks), figsize=(3.2 * len(ks), 3.6), sharey=True, squeeze=False)
        schemes = sorted((_as_key(s) for s in df.groupby(scheme_cols).groups), key=str)
        cols = dict(zip(schemes, _colors(len(schemes)), strict=True))
        marks = {s: MARKERS[i % len(MARKERS)] for i, s in enumerate(schemes)}
        for ax, k in zip(axes[0], ks, strict=True):
            at_k = df[df["bits"] == k]
            for s, g in at_k.groupby(scheme_cols):
                s, g = _as_key(s), g.sort_values("total_bits")
                ax.plot(g["total_bits"], g[metric], ls="-", marker=marks[s], color=cols[s], ms=5, lw=1,
                        gid="data")
            ax.set_xscale("log")
            ax.margins(MARGIN)
            ax.set_title(f"k = {k:g} ({_runs(int(at_k[metric].notna().sum()))})", fontsize=9)
            ax.set_xlabel("total model bits")
        _fit_ylim(axes[0][0], df[metric])
        axes[0][0].set_ylabel(METRIC_LABELS.get(metric, metric))
        handles = [_series_handle(cols[s], marks[s], "-", ",".join(map(str, s))) for s in schemes]
        _legend(axes[0][-1], handles, title="/".join(scheme_cols))
        stats = "; ".join([_runs(int(df[metric].notna().sum())), describe_law(None), "no intervals"])
        _title(None, f"{' / '.join(scheme_cols)} at fixed k", subtitle, stats, fig=fig)
        return _save(fig, path)


def compute_optimal(rows: list[dict[str, Any]], df: pd.DataFrame, path: Path, subtitle: str, *,
                    law_label: str, interval_label: str) -> list[str]:
    """Compute-optimal parameters N_opt vs FLOP budget C = 6ND (log-log) with its bootstrap band, over the
    runs' own (C, N) as grey points; beyond the largest run's C dashed and shaded."""
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        c_runs = 6 * df["n_params"] * df["train_tokens"]
        ax.plot(c_runs, df["n_params"], ls="none", marker="o", ms=3.5, color="0.55", gid="data",
                label="runs (6ND, N)", zorder=2)
        c = np.array([r["flops"] for r in rows])
        n = np.array([r["n_opt"] for r in rows])
        inside = c <= c_runs.max() * 1.0001
        ax.plot(c[inside], n[inside], color="C0", marker="s", ms=4, lw=1.6, gid="fit", label="N_opt (law)")
        if (~inside).any():
            j = max(int(inside.sum()) - 1, 0)
            ax.plot(c[j:], n[j:], color="C0", marker="s", ms=3, gid="extrapolated", **EXTRAP)
            _shade_extrapolated(ax, float(c_runs.max()), float(c.max()))
        if rows and rows[0].get("n_opt_ci95"):
            ax.fill_between(c, [r["n_opt_ci95"][0] for r in rows], [r["n_opt_ci95"][1] for r in rows],
                            color="C0", alpha=0.15, lw=0, label="95% interval")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.margins(MARGIN)
        ax.set_xlabel("training compute C = 6 N D (FLOPs)")
        ax.set_ylabel("compute-optimal parameters N_opt")
        _title(ax, "Compute-optimal model size", subtitle, "; ".join([_runs(len(df)), law_label, interval_label]))
        _legend(ax, ax.get_legend_handles_labels()[0] + _extrapolation_handles(ax))
        return _save(fig, path)


def deploy_speed(df: pd.DataFrame, path: Path, subtitle: str) -> list[str]:
    """Packed models at the largest measured size: decode ms/token at batch 1 and prefill tokens/s vs k, one
    marker per backend format, the 16-bit model (measured in the same jobs) as a grey line with its range."""
    d = df[pd.to_numeric(df.get("decode_ms_b1"), errors="coerce").notna()].copy()
    if d.empty:
        return []
    n_max = d["n_params"].max()
    d = d[d["n_params"] == n_max]
    fmts = sorted(d.groupby(["backend", "packed_format"]).groups)
    cols = dict(zip(fmts, _colors(len(fmts)), strict=True))
    marks = {f: MARKERS[i % len(MARKERS)] for i, f in enumerate(fmts)}
    panels = [("decode_ms_b1", "ref_decode_ms_b1", "decode ms / token (batch 1)"),
              ("prefill_tokens_per_s", "ref_prefill_tokens_per_s", "prefill tokens / s")]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.8))
        fig.subplots_adjust(wspace=0.4)
        for ax, (col, ref, label) in zip(axes, panels, strict=True):
            r = pd.to_numeric(d[ref], errors="coerce").dropna()
            if len(r):
                ax.axhline(float(r.median()), color="0.45", lw=1.2, label="16-bit (bf16), same jobs", gid="ref")
                ax.axhspan(float(r.min()), float(r.max()), color="0.85", lw=0, zorder=0)
            for f, g in d.groupby(["backend", "packed_format"]):
                f = _as_key(f)
                g = g.sort_values("bits")
                ax.plot(g["bits"], pd.to_numeric(g[col]), ls="-", lw=1, marker=marks[f], ms=6, color=cols[f],
                        label="/".join(map(str, f)), gid="data")
            ax.set_xlabel("bits per weight k")
            ax.set_ylabel(label)
            ax.margins(MARGIN)
        _legend(axes[1])
        stats = "; ".join([_runs(len(d)), f"largest model ({n_max:,.0f} parameters)", "medians of the timed repeats",
                           "grey band: range of the 16-bit model over the jobs"])
        _title(None, "Packed models: decode and prefill speed vs k", subtitle, stats, fig=fig)
        return _save(fig, path)


def scheme_frontiers(rows: list[dict[str, Any]], path: Path, subtitle: str, *, law_label: str,
                     interval_label: str, xlabel: str | None = None) -> list[str]:
    """Every scheme at its best k on one plot: loss vs total bits (the lower envelope of its per-k laws) with
    its bootstrap band; solid inside the measured budgets, dashed and shaded beyond."""
    if not rows:
        return []
    labels = list(rows[0]["loss"])
    b = np.array([r["budget_bits"] for r in rows])
    inside = np.array([not r["extrapolated"] for r in rows])
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots()
        cols = _colors(len(labels))
        for i, lab in enumerate(labels):
            y = np.array([r["loss"][lab] for r in rows])
            band = [r.get("loss_ci95", {}).get(lab) for r in rows]
            mk = MARKERS[i % len(MARKERS)]
            ax.plot(b[inside], y[inside], color=cols[i], marker=mk, ms=4, lw=1.5, label=lab, gid="fit")
            if (~inside).any():
                j = max(int(inside.sum()) - 1, 0)
                ax.plot(b[j:], y[j:], color=cols[i], marker=mk, ms=3, gid="extrapolated", **EXTRAP)
            if all(x is not None for x in band):
                lo, hi = np.array([x[0] for x in band]), np.array([x[1] for x in band])
                ax.fill_between(b, lo, hi, color=cols[i], alpha=0.12, lw=0)
        if (~inside).any():
            _shade_extrapolated(ax, float(b[inside].max()) if inside.any() else float(b.min()), float(b.max()))
        ax.set_xscale("log")
        ax.set_xlabel(xlabel or X_LABELS["total_bits"])
        ax.set_ylabel("loss")
        _fit_ylim(ax, [r["loss"][lab] for r in rows if not r["extrapolated"] for lab in labels])
        _legend(ax, title="scheme (at its best k)")
        stats = "; ".join([law_label, interval_label, "each scheme's lower envelope over its k"])
        _title(None, "Schemes at equal total bits", subtitle, stats, fig=fig)
        return _save(fig, path)
