"""Figures a reader can trust, checked on the matplotlib objects and saved files (not pixels): each figure
states n, the law and how its intervals were made; laws are solid only where fitted; markers tell series
apart in black and white; limits hug the data; legends stay off the data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex

from analysis import optimal, plot
from analysis.fit import fit_law

EXTRAP = 10.0


def synthetic_runs(dtypes: tuple[str, ...] = ("int",), seed: int = 0) -> pd.DataFrame:
    """6 sizes x k in {3, 4} (x dtypes): loss = 1.7 + 300 B^-0.3 with 0.5% noise; nf a little better."""
    rng = np.random.default_rng(seed)
    rows = []
    for dtype in dtypes:
        for k in (3.0, 4.0):
            for n in np.geomspace(1e5, 3e7, 6):
                b = n * (k + 0.25)
                shift = 1.3 if dtype == "nf" else 1.0
                rows.append({"bits": k, "dtype": dtype, "method": "rtn", "n_params": n, "total_bits": b,
                             "val_loss": (1.7 + 300 * (b * shift) ** -0.3) * np.exp(rng.normal(0, 0.005))})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def runs() -> pd.DataFrame:
    return synthetic_runs()


@pytest.fixture(scope="module")
def fits(runs):
    return {(k,): fit_law(g, "power_bits", "val_loss", n_boot=30) for k, g in runs.groupby("bits")}


@pytest.fixture(scope="module")
def drawn(runs, fits, tmp_path_factory):
    """The per-k figure with the law extrapolated 10x, drawn once: (figure, saved files, folder)."""
    folder = tmp_path_factory.mktemp("curves")
    files = _draw_curves(folder, runs, fits, extrapolate=EXTRAP)
    return plot._last_figure, files, folder


def _flat(text: str) -> str:
    return " ".join(text.split())


def _caption(fig=None) -> str:
    return (fig or plot._last_figure)._ksir_caption


def _axes(fig=None):
    return (fig or plot._last_figure).axes[0]


def _lines(ax, gid: str) -> list:
    return [line for line in ax.get_lines() if line.get_gid() == gid]


def _draw_curves(tmp_path, runs, fits, **kw) -> list[str]:
    return plot.curves(runs, "val_loss", ["bits"], tmp_path / "bits", "Bit-level scaling",
                       "val_loss of 12 runs", fits=fits, **kw)


def test_curves_title_and_caption_state_n_law_and_interval_method(drawn, fits):
    fig = drawn[0]
    method = {"cases": "runs", "residuals": "residuals"}[fits[(3.0,)].boot_method]
    expected = ["n = 12 runs", "law power_bits", f"95% bootstrap percentile bands, 30 resamples of {method}"]
    title = _flat(_axes(fig).get_title(loc="left"))
    assert all(e in _caption(fig) and e in title for e in expected), (_caption(fig), title)
    assert _caption(fig).startswith("Bit-level scaling. val_loss of 12 runs. ")


def test_curves_without_fits_say_there_is_no_law_and_no_interval(tmp_path, runs):
    plot.curves(runs, "val_loss", ["bits"], tmp_path / "raw", "Raw", "val_loss")
    assert "n = 12 runs" in _caption() and "no law fitted" in _caption() and "no intervals" in _caption()
    assert not _lines(_axes(), "fit") and not _lines(_axes(), "extrapolated")


def test_laws_are_solid_over_their_runs_and_dashed_beyond(drawn):
    ax = _axes(drawn[0])
    for data in _lines(ax, "data"):
        x = np.asarray(data.get_xdata(), float)
        same = [line for line in ax.get_lines() if to_hex(line.get_color()) == to_hex(data.get_color())]
        (fitted,) = [line for line in same if line.get_gid() == "fit"]
        (beyond,) = [line for line in same if line.get_gid() == "extrapolated"]
        fx, bx = np.asarray(fitted.get_xdata(), float), np.asarray(beyond.get_xdata(), float)
        assert fitted.get_linestyle() == "-" and beyond.get_linestyle() == "--"
        assert fx.min() >= x.min() * (1 - 1e-9) and fx.max() <= x.max() * (1 + 1e-9)
        assert np.isclose(fx.min(), x.min()) and np.isclose(fx.max(), x.max())
        assert np.isclose(bx[0], x.max()) and np.isclose(bx[-1], x.max() * EXTRAP)
        assert beyond.get_linewidth() < fitted.get_linewidth()


def test_bands_cover_only_each_laws_fitted_range_and_let_the_points_show(drawn, runs):
    """A band per curve over the whole plot hid the points (7 curves in the demo): each band now spans only
    the runs its law was fitted on, at an opacity that leaves the points and the other bands visible."""
    ax = _axes(drawn[0])
    bands = [c for c in ax.collections if c.get_gid() == "band"]
    assert len(bands) == runs["bits"].nunique()
    spans = sorted((float(b.get_paths()[0].vertices[:, 0].min()), float(b.get_paths()[0].vertices[:, 0].max()))
                   for b in bands)
    want = sorted((float(g.min()), float(g.max())) for _, g in runs.groupby("bits")["total_bits"])
    assert np.allclose(spans, want, rtol=1e-6)  # not a point beyond the largest run
    assert all(b.get_alpha() <= plot.BAND_ALPHA for b in bands)


def test_extrapolated_region_is_shaded_and_in_the_legend(tmp_path, runs, fits, drawn):
    ax = _axes(drawn[0])
    (span,) = [p for p in ax.patches if "extrapolated" in p.get_label()]
    x0, x1 = span.get_x(), span.get_x() + span.get_width()
    assert np.isclose(x0, runs["total_bits"].max()) and np.isclose(x1, runs["total_bits"].max() * EXTRAP)
    assert any("extrapolated" in t.get_text() for t in ax.get_legend().get_texts())

    _draw_curves(tmp_path, runs, fits)  # extrapolate=1: nothing drawn beyond the runs
    ax = _axes()
    assert not [p for p in ax.patches if "extrapolated" in p.get_label()] and not _lines(ax, "extrapolated")


def test_y_limits_hug_the_data_even_when_the_law_runs_far_beyond(tmp_path, runs, fits):
    _draw_curves(tmp_path, runs, fits, extrapolate=1e4)  # the extrapolated curves fall far below the runs
    ax = _axes()
    lo, hi = ax.get_ylim()
    y = runs["val_loss"]
    span = y.max() - y.min()
    assert y.min() - 0.2 * span <= lo < y.min() and y.max() < hi <= y.max() + 0.2 * span
    assert min(np.min(line.get_ydata()) for line in _lines(ax, "extrapolated")) < lo  # clipped, not followed
    xlo, xhi = ax.get_xlim()
    assert xlo < runs["total_bits"].min() and xhi > runs["total_bits"].max() * 1e4
    assert np.log(xhi / xlo) < 1.1 * np.log(runs["total_bits"].max() * 1e4 / runs["total_bits"].min())


def test_every_series_has_its_own_marker_and_a_long_legend_goes_outside(tmp_path):
    df = synthetic_runs(("int", "nf"))
    fits4 = {key: fit_law(g, "power_bits", "val_loss", n_boot=0) for key, g in df.groupby(["bits", "dtype"])}
    plot.curves(df, "val_loss", ["bits", "dtype"], tmp_path / "schemes", "Per scheme", "val_loss", fits4,
                EXTRAP, "dtype")  # positionally, as report.py calls it
    ax = _axes()
    markers = [line.get_marker() for line in _lines(ax, "data")]
    assert len(markers) == 4 and len(set(markers)) == 4
    assert {line.get_linestyle() for line in _lines(ax, "fit")} == {"-", "-."}  # style_key: dtype
    assert {line.get_linestyle() for line in _lines(ax, "extrapolated")} == {"--"}
    legend = ax.get_legend()
    fig = plot._last_figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # the figure was saved and closed
    box = legend.get_window_extent(renderer).transformed(ax.transAxes.inverted())
    assert len(legend.get_texts()) > plot.LEGEND_INSIDE_MAX and box.y1 < 0  # below the axes, off the data
    assert legend._ncols > 1 and box.x0 >= -0.01 and box.x1 <= 1.01  # in columns, no wider than the axes
    assert "no intervals" in _caption() and "n = 24 runs" in _caption()


def test_png_and_pdf_are_saved_with_the_caption_as_title(drawn):
    from PIL import Image

    fig, files, folder = drawn
    assert sorted(p.rsplit(".", 1)[1] for p in files) == ["pdf", "png"]
    assert Image.open(folder / "bits.png").text["Title"] == _caption(fig)
    pdf = (folder / "bits.pdf").read_bytes()
    assert b"n = 12 runs" in pdf and b"law power_bits" in pdf and b"95% bootstrap percentile bands" in pdf


def test_optimal_k_names_its_source_and_n_marks_its_lines_and_shades_extrapolation(tmp_path, runs, fits):
    top = runs["total_bits"].max()
    per_k = optimal.per_k_optimum(fits, optimal.budget_grid(runs, n=12, extrapolate=EXTRAP), top)
    plot.optimal_k(per_k, None, tmp_path / "optimal_k", "val_loss of 12 runs", source="per-k power laws",
                   n_runs=12, interval_label=plot.describe_intervals(fits.values(), "intervals"),
                   observed_max=top)
    ax = _axes()
    assert "n = 12 runs" in _caption() and "answer from per-k power laws" in _caption()
    assert "95% bootstrap percentile intervals, 30 resamples" in _flat(ax.get_title(loc="left"))
    (step,) = _lines(ax, "data")
    assert step.get_marker() == "o" and len(step.get_xdata()) == 12
    assert {line.get_marker() for line in _lines(ax, "band_edge")} == {"v", "^"}
    (span,) = [p for p in ax.patches if "extrapolated" in p.get_label()]
    assert np.isclose(span.get_x(), top)
    assert max(max(line.get_xdata()) for line in _lines(ax, "fit")) <= top * (1 + 1e-9)
    assert min(min(line.get_xdata()) for line in _lines(ax, "extrapolated")) >= top * (1 - 1e-9)
    assert ax.get_xlabel().startswith("total-bit budget") and "k" in ax.get_ylabel()
    lo, hi = ax.get_ylim()
    assert lo < 3 and hi > 4 and hi - lo < 1.5  # every swept k shown, no more


def test_optimal_k_positional_call_and_continuous_k(tmp_path, runs, fits):
    budgets = optimal.budget_grid(runs, n=8, extrapolate=EXTRAP)
    per_k = optimal.per_k_optimum(fits, budgets, runs["total_bits"].max())
    cont = [{"budget_bits": b, "k_star": 3.5, "k_star_ci95": (3.2, 3.9)} for b in budgets]
    plot.optimal_k(per_k, cont, tmp_path / "optimal_k", "val_loss", continuous_source="law precision")
    markers = {line.get_marker() for line in _lines(_axes(), "data")}
    assert markers == {"o", "D"} and "continuous k* from law precision" in _caption()
    assert "n = ?" in _caption()  # n not given: said, not invented


def test_residuals_have_a_marker_per_curve_a_zero_line_the_law_and_n(tmp_path, runs, fits):
    plot.residuals(runs, "val_loss", ["bits"], fits, tmp_path / "residuals", "val_loss of 12 runs")
    ax = _axes()
    markers = [line.get_marker() for line in _lines(ax, "data")]
    assert len(markers) == 2 and len(set(markers)) == 2
    assert any(np.allclose(line.get_ydata(), 0) for line in ax.get_lines() if line.get_gid() is None)
    assert "n = 12 runs" in _caption() and "law power_bits" in _caption()


def test_schemes_at_fixed_k_marks_each_scheme_and_states_n_per_panel(tmp_path):
    df = synthetic_runs(("int", "nf"))
    plot.schemes_at_fixed_k(df, "val_loss", ["dtype", "method"], tmp_path / "schemes", "val_loss of 24 runs")
    axes = plot._last_figure.axes
    assert [ax.get_title() for ax in axes] == ["k = 3 (n = 12 runs)", "k = 4 (n = 12 runs)"]
    per_panel = [[line.get_marker() for line in _lines(ax, "data")] for ax in axes]
    assert per_panel[0] == per_panel[1] and len(set(per_panel[0])) == 2
    assert "n = 24 runs" in _caption() and "no intervals" in _caption()
