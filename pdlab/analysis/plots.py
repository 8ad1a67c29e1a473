"""Matplotlib figures for a sweep: one function a figure, each taking the tidy DataFrames of `pdlab.analysis.results`
(summary rows of `load_sweep`; request and server-metric rows with `run`/`arm` columns as
`pdlab.analysis.sweepdata.load` gives them) and returning a Figure with title, units, legend and the same colour
per arm in every figure. Where an arm × load level was repeated, the line is the mean and the band spans
min–max of the repeats. `emulated=True` marks every title as emulated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from pdlab.analysis import compare

_PD_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
              "#17becf", "#393b79", "#637939", "#8c6d31"]
_CO_COLORS = ["#222222", "#777777", "#aaaaaa"]
ROLE_COLORS = {"prefill": "#1f77b4", "decode": "#d62728", "worker": "#444444", "scheduler": "#999999"}
SERVER_METRICS = (("sglang:num_queue_reqs", "queued requests", "sum over a role's instances"),
                  ("sglang:num_running_reqs", "running requests", "sum over a role's instances"),
                  ("sglang:token_usage", "KV cache usage", "fraction, mean over instances"))


def arm_colors(arms: Iterable[str], colocated: Iterable[str] | None = None) -> dict[str, str]:
    """A stable colour per arm: PD arms in natural label order take distinct colours, colocated baselines
    (those in `colocated`, else labels containing 'colocated') take black/greys. Same arms → same colours."""
    names = sorted(set(arms), key=compare._natural)
    co = set(colocated) if colocated is not None else {a for a in names if "colocated" in a.lower()}
    out: dict[str, str] = {}
    pd_arms = [a for a in names if a not in co]
    for i, a in enumerate(pd_arms):
        out[a] = _PD_COLORS[i % len(_PD_COLORS)]
    for i, a in enumerate(a for a in names if a in co):
        out[a] = _CO_COLORS[i % len(_CO_COLORS)]
    return out


def _style(summary: pd.DataFrame) -> tuple[list[str], dict[str, str], set[str]]:
    arms = compare.arms(summary)
    co = {a for a in arms if compare.is_colocated(summary, a)}
    return arms, arm_colors(arms, co), co


def _title(fig: Figure, text: str, emulated: bool) -> None:
    fig.suptitle(text + (" — emulated" if emulated else ""), fontsize=13, fontweight="bold")


def _line(ax: Axes, agg: pd.DataFrame, arm: str, color: str, dashed: bool, label: str | None) -> None:
    d = agg[agg["arm"] == arm].sort_values("x")
    if d.empty:
        return
    xs = d["x_plot"] if "x_plot" in d else d["x"]
    ax.plot(xs, d["mean"], marker="o", ms=4, color=color, ls="--" if dashed else "-", label=label)
    if (d["n"] > 1).any():
        ax.fill_between(xs, d["lo"], d["hi"], color=color, alpha=0.18, lw=0)


def _finish(fig: Figure, axes: Sequence[Axes], summary: pd.DataFrame | None) -> Figure:
    handles, labels = axes[0].get_legend_handles_labels()
    if summary is not None and compare.has_repeats(summary):
        from matplotlib.patches import Patch

        handles.append(Patch(color="grey", alpha=0.3))
        labels.append("min–max of repeats")
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 5), frameon=False)
    return fig


def _wide(values: pd.Series | np.ndarray, ratio: float = 20.0) -> bool:
    """Whether positive values span more than `ratio`× (then a log axis reads better)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    return bool(v.size) and v.max() / v.min() > ratio


def metric_vs_load(summary: pd.DataFrame, columns: Sequence[str], *, title: str, emulated: bool = False,
                   slo: float | None = None, log: bool | None = None) -> Figure:
    """One panel per summary column vs the load axis, one line per arm (mean, min–max band of repeats);
    `log=None` picks a log y axis when the values span more than 20×."""
    arms, colors, co = _style(summary)
    fig = Figure(figsize=(6.2 * len(columns), 4.4), layout="constrained")
    axes = fig.subplots(1, len(columns), squeeze=False)
    axs = list(axes[0])
    for ax, col in zip(axs, columns, strict=True):
        m = compare.metric(col)
        agg = compare.aggregate(summary, col) if col in summary else pd.DataFrame(columns=["arm", "x"])
        for a in arms:
            _line(ax, agg, a, colors[a], a in co, a if ax is axs[0] else None)
        if slo is not None and np.isfinite(slo):
            ax.axhline(slo, color="#c00000", lw=1, ls=":")
            ax.annotate(f"SLO {slo:g} {m.unit}", (0.01, slo), xycoords=("axes fraction", "data"),
                        fontsize=8, color="#c00000", va="bottom")
        ax.set_title(m.label)
        ax.set_xlabel(compare.plot_x_label(summary))
        ax.set_ylabel(f"{m.label} ({m.unit})" if m.unit else m.label)
        if log or (log is None and col in summary and _wide(summary[col])):
            ax.set_yscale("log")
            ax.set_ylabel(ax.get_ylabel() + ", log scale")
        ax.grid(alpha=0.3)
    _title(fig, title, emulated)
    return _finish(fig, axs, summary)


def ttft_vs_rate(summary: pd.DataFrame, *, emulated: bool = False, log: bool | None = None) -> Figure:
    """TTFT p50 and p99 (ms) vs request rate, per arm, with the TTFT SLO line."""
    slo = float(summary["slo_ttft_ms"].iloc[0]) if "slo_ttft_ms" in summary and len(summary) else None
    return metric_vs_load(summary, ["ttft_p50_ms", "ttft_p99_ms"], title="Time to first token vs load",
                          emulated=emulated, slo=slo, log=log)


def tpot_vs_rate(summary: pd.DataFrame, *, emulated: bool = False, log: bool | None = None) -> Figure:
    """TPOT p50 and p99 (ms) vs request rate, per arm, with the TPOT SLO line."""
    slo = float(summary["slo_tpot_ms"].iloc[0]) if "slo_tpot_ms" in summary and len(summary) else None
    return metric_vs_load(summary, ["tpot_p50_ms", "tpot_p99_ms"], title="Time per output token vs load",
                          emulated=emulated, slo=slo, log=log)


def throughput_per_gpu(summary: pd.DataFrame, *, emulated: bool = False) -> Figure:
    """Output token throughput per GPU (tok/s/GPU) vs request rate, per arm."""
    return metric_vs_load(summary, ["output_throughput_per_gpu"], title="Output throughput per GPU vs load",
                          emulated=emulated)


def goodput_per_gpu(summary: pd.DataFrame, *, emulated: bool = False) -> Figure:
    """Goodput per GPU (requests/s meeting both SLOs, per GPU) vs request rate, per arm."""
    t = ""
    if {"slo_ttft_ms", "slo_tpot_ms"} <= set(summary.columns) and len(summary):
        t = f" (TTFT ≤ {summary['slo_ttft_ms'].iloc[0]:g} ms, TPOT ≤ {summary['slo_tpot_ms'].iloc[0]:g} ms)"
    # linear axis: goodput falls to zero where an arm misses the SLOs, and zero has no place on a log axis
    return metric_vs_load(summary, ["goodput_per_gpu"], title="Goodput per GPU at the SLOs" + t, emulated=emulated,
                          log=False)


def pareto(summary: pd.DataFrame, *, emulated: bool = False) -> Figure:
    """Output tokens/s per GPU vs tokens/s per user (1000 / TPOT p50), one point per arm × load level
    (labelled with the load), and the Pareto frontier over all arms."""
    arms, colors, co = _style(summary)
    pts = compare.pareto_points(summary)
    fig = Figure(figsize=(8.5, 5.6), layout="constrained")
    ax = fig.subplots()
    for a in arms:
        d = pts[pts["arm"] == a].sort_values("x")
        ax.plot(d["tok_s_per_user"], d["output_throughput_per_gpu"], marker="o", color=colors[a],
                ls="--" if a in co else "-", label=a, alpha=0.9)
        for r in d.itertuples():
            ax.annotate(f"{r.x:g}", (r.tok_s_per_user, r.output_throughput_per_gpu), textcoords="offset points",
                        xytext=(4, 3), fontsize=7, color=colors[a])
    front = compare.pareto_frontier(pts, "tok_s_per_user", "output_throughput_per_gpu")
    if len(front) > 1:
        ax.plot(front["tok_s_per_user"], front["output_throughput_per_gpu"], color="black", lw=6, alpha=0.15,
                solid_capstyle="round", label="Pareto frontier", zorder=0)
    ax.set_xlabel("tokens/s per user (1000 / TPOT p50)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.grid(alpha=0.3)
    _title(fig, "Throughput–interactivity Pareto frontier", emulated)
    unit = "req/s" if compare.x_column(summary) != "concurrency" else "in flight"
    ax.set_title(f"labels: offered load ({unit}); mean over repeats", fontsize=9, color="#555555")
    return _finish(fig, [ax], None)


def latency_cdfs(requests: pd.DataFrame, summary: pd.DataFrame, load: float | None = None, *,
                 emulated: bool = False) -> Figure:
    """CDFs of TTFT and TPOT (ms) per arm at one load level (default: the highest common one), over every
    measured request of every repeat (`requests` rows need arm, level_value, ttft_ms, tpot_ms, ok, warmup)."""
    arms, colors, co = _style(summary)
    if load is None:
        load = common_load(summary)
    r = requests[(requests["level_value"] == load) & requests["ok"].astype(bool) & ~requests["warmup"].astype(bool)]
    fig = Figure(figsize=(12.4, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, col, name in ((axes[0], "ttft_ms", "TTFT"), (axes[1], "tpot_ms", "TPOT")):
        for a in arms:
            v = np.sort(r.loc[r["arm"] == a, col].dropna().to_numpy())
            if v.size:
                ax.plot(v, np.arange(1, v.size + 1) / v.size, color=colors[a], ls="--" if a in co else "-",
                        label=f"{a} (n={v.size})")
        if _wide(r[col], 50.0):
            ax.set_xscale("log")
            name_unit = f"{name} (ms, log scale)"
        else:
            name_unit = f"{name} (ms)"
        slo_col = "slo_ttft_ms" if col == "ttft_ms" else "slo_tpot_ms"
        if slo_col in summary and len(summary):
            ax.axvline(summary[slo_col].iloc[0], color="#c00000", lw=1, ls=":")
        ax.set_xlabel(name_unit)
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{name} CDF")
        ax.set_ylim(0, 1.01)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    _title(fig, f"Latency distributions at {compare.fmt_x(summary, load)}", emulated)
    return fig


def common_load(summary: pd.DataFrame) -> float:
    """The highest load level every arm was measured at (else the highest measured)."""
    x = compare.x_column(summary)
    sets = [set(g[x].dropna()) for _, g in summary.groupby("arm")]
    common = set.intersection(*sets) if sets else set()
    return float(max(common) if common else summary[x].max())


def server_timeseries(server: pd.DataFrame, summary: pd.DataFrame | None = None, *,
                      metrics: Sequence[tuple[str, str, str]] = SERVER_METRICS, repeat: int = 0,
                      emulated: bool = False) -> Figure:
    """Server gauges over the run (queued and running requests, KV usage) per role: one column per arm
    (its repeat `repeat`), one row per metric, the sum (requests) or mean (usage) over a role's instances."""
    s = server[server["metric"].isin([m for m, _, _ in metrics])]
    if "repeat" in s:
        s = s[s["repeat"].fillna(0).astype(int) == repeat]
    arm_names = compare.arms(summary) if summary is not None else sorted(s["arm"].unique(), key=compare._natural)
    arm_names = [a for a in arm_names if a in set(s["arm"])] or arm_names[:1]
    ncol = max(1, len(arm_names))
    fig = Figure(figsize=(3.6 * ncol + 1.2, 2.3 * len(metrics) + 0.8), layout="constrained")
    axes = fig.subplots(len(metrics), ncol, squeeze=False, sharex="col")
    seen_roles: dict[str, Line2D] = {}
    for j, arm in enumerate(arm_names):
        d = s[s["arm"] == arm]
        for i, (mname, label, unit) in enumerate(metrics):
            ax = axes[i][j]
            dm = d[d["metric"] == mname]
            for role, g in dm.groupby("role", sort=True):
                how = "mean" if "usage" in mname else "sum"
                ts = g.assign(tb=g["t"].round(0)).groupby(["tb", "name"])["value"].mean().groupby("tb").agg(how)
                (ln,) = ax.plot(ts.index, ts.to_numpy(), color=ROLE_COLORS.get(role, "#555555"), lw=1.2,
                                drawstyle="steps-post")
                seen_roles.setdefault(str(role), ln)
            if i == 0:
                ax.set_title(arm, fontsize=10)
            if j == 0:
                ax.set_ylabel(f"{label}\n({unit})", fontsize=9)
            if i == len(metrics) - 1:
                ax.set_xlabel("time in run (s)")
            ax.grid(alpha=0.3)
    if seen_roles:
        fig.legend(list(seen_roles.values()), [f"{r} role" for r in seen_roles],
                   loc="outside lower center", ncol=len(seen_roles), frameon=False)
    _title(fig, "Server state over time per role (all load levels in sequence)", emulated)
    return fig


def repeat_spread(summary: pd.DataFrame, column: str = "goodput_per_gpu", *, emulated: bool = False) -> Figure:
    """The A/A band per load level: relative spread of repeated runs of the same arm, for one column."""
    band = compare.aa_band(summary, column)
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    ax.bar([compare.fmt_x(summary, x) for x in band["x"]], band["band"].fillna(0) * 100, color="#888888")
    ax.set_ylabel("max spread of repeats (%)")
    ax.set_xlabel(compare.x_label(summary))
    ax.grid(alpha=0.3, axis="y")
    _title(fig, f"A/A band of {compare.metric(column).label}", emulated)
    return fig


def attainment_vs_load(summary: pd.DataFrame, threshold: float | None = None, *, emulated: bool = False) -> Figure:
    """SLO attainment (% of requests meeting both SLOs) vs offered rate per arm, the threshold line, and each
    arm's capacity at the SLO (where its line crosses the threshold) marked on the axis."""
    from pdlab.analysis import capacity

    thr = capacity.threshold_of(summary, threshold)
    d = summary.assign(good_pct=capacity.attainment(summary) * 100)
    arms, colors, co = _style(d)
    agg = compare.aggregate(d, "good_pct")
    fig = Figure(figsize=(8.5, 4.8), layout="constrained")
    ax = fig.subplots()
    for a in arms:
        _line(ax, agg, a, colors[a], a in co, a)
    ax.axhline(thr * 100, color="#c00000", lw=1, ls=":")
    ax.annotate(f"threshold {thr * 100:g} %", (0.01, thr * 100), xycoords=("axes fraction", "data"), fontsize=8,
                color="#c00000", va="bottom")
    for a, c in capacity.capacities(d, thr).items():
        if c.bound == "interpolated" and a in colors:
            ax.axvline(c.value, color=colors[a], lw=1, ls=":", alpha=0.8)
            ax.annotate(f"{c.value:.2f}", (c.value, 2), fontsize=7, color=colors[a], rotation=90, va="bottom")
    ax.set_ylim(0, 102)
    ax.set_xlabel(compare.plot_x_label(summary))
    ax.set_ylabel("SLO attainment (% of requests)")
    ax.grid(alpha=0.3)
    _title(fig, "SLO attainment vs load (dotted verticals: capacity at the SLO)", emulated)
    return _finish(fig, [ax], d)
