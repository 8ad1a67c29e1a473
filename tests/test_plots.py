"""Every figure renders from synthetic tidy frames, with titles, units, legends, stable arm colours and
repeat bands where repeats exist."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from _report_helpers import synthetic_requests, synthetic_server, synthetic_summary  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402

from pdlab.analysis import plots  # noqa: E402

ARMS = {"1P3D (TP1)": lambda r: r * 0.2, "2P2D (TP1)": lambda r: r * 0.25, "colocated 4×TP1": lambda r: r * 0.22}
RATES = [2.0, 4.0, 8.0]


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _legend_texts(fig):
    return [t.get_text() for lg in fig.legends + [a.get_legend() for a in fig.axes if a.get_legend()] for t in lg.texts]


def test_arm_colors_are_stable_and_distinct():
    a = plots.arm_colors(["2P2D (TP1)", "colocated 4×TP1", "1P3D (TP1)"])
    b = plots.arm_colors(["colocated 4×TP1", "1P3D (TP1)", "2P2D (TP1)"])
    assert a == b
    assert len(set(a.values())) == 3
    assert a["colocated 4×TP1"] == "#222222"


@pytest.mark.parametrize("fn", [plots.ttft_vs_rate, plots.tpot_vs_rate, plots.throughput_per_gpu,
                                plots.goodput_per_gpu, plots.pareto])
def test_summary_figures_have_title_units_legend(fn):
    s = synthetic_summary(ARMS, RATES)
    fig = fn(s, emulated=True)
    assert "emulated" in fig._suptitle.get_text()
    labels = _legend_texts(fig)
    assert set(ARMS) <= set(labels)
    for ax in fig.axes:
        assert ax.get_xlabel() and ax.get_ylabel()
        assert "(" in ax.get_ylabel() or "/" in ax.get_ylabel()


def test_same_arm_same_colour_across_figures():
    s = synthetic_summary(ARMS, RATES)
    colours = []
    for fn in (plots.ttft_vs_rate, plots.goodput_per_gpu):
        ax = fn(s).axes[0]
        colours.append({ln.get_label(): ln.get_color() for ln in ax.get_lines() if not ln.get_label().startswith("_")})
    assert colours[0] == colours[1]


def test_repeat_bands_only_with_repeats():
    one = plots.goodput_per_gpu(synthetic_summary(ARMS, RATES))
    assert not [c for c in one.axes[0].collections if isinstance(c, PolyCollection)]
    rep = plots.goodput_per_gpu(synthetic_summary(ARMS, RATES, repeats=3, spread=0.2))
    assert len([c for c in rep.axes[0].collections if isinstance(c, PolyCollection)]) == 3
    assert "min–max of repeats" in _legend_texts(rep)


def test_cdfs_and_server_timeseries():
    s = synthetic_summary(ARMS, RATES)
    fig = plots.latency_cdfs(synthetic_requests(s), s, emulated=True)
    assert "8 req/s" in fig._suptitle.get_text()
    assert [ax.get_xlabel() for ax in fig.axes] == ["TTFT (ms)", "TPOT (ms)"]
    assert any(t.startswith("2P2D (TP1) (n=") for t in _legend_texts(fig))
    fig = plots.server_timeseries(synthetic_server(s), s)
    assert len(fig.axes) == 3 * 3
    assert {"prefill role", "decode role"} <= set(_legend_texts(fig))
    assert fig.axes[0].get_title() == "1P3D (TP1)"


def test_repeat_spread_bar():
    s = synthetic_summary(ARMS, RATES, repeats=2, spread=0.1)
    fig = plots.repeat_spread(s)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights == pytest.approx([10.0, 10.0, 10.0])


def test_goodput_axis_stays_linear_when_an_arm_falls_to_zero():
    s = synthetic_summary(ARMS, RATES)
    first = s["arm"] == next(iter(ARMS))
    s.loc[first, "goodput_per_gpu"] = [0.5, 0.004] + [0.0] * (int(first.sum()) - 2)  # spans > 20x, then zero
    assert plots.goodput_per_gpu(s).axes[0].get_yscale() == "linear"
    assert plots.ttft_vs_rate(s, log=True).axes[0].get_yscale() == "log"
