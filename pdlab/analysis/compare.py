"""The data logic behind the compare notebook: A/A bands, verdicts, crossover, Pareto, best config per SLO,
fairness checks. Pure functions over the tidy DataFrames of `pdlab.analysis.results.load_sweep` (one row per run ×
level: arm, topology_kind, gpus, repeat, level_kind, rate/concurrency, the `pdlab.core.stats` summary columns).

Verdicts are only as strong as the noise: with repeats, the A/A band at a load level is the largest
relative spread (max − min) / mean of one arm's repeated runs; a difference between two arms counts only
when it exceeds that band (else "no difference"). Without repeats, a default noise floor
(`DEFAULT_NOISE`, 5 %) stands in for the band and the text says so.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pdlab.analysis.results import run_arm

DEFAULT_NOISE = 0.05


@dataclass(frozen=True)
class Metric:
    """A summary column with its label, unit and direction."""

    column: str
    label: str
    unit: str
    higher_is_better: bool

    def fmt(self, v: float) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "n/a"
        digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
        return f"{v:,.{digits}f} {self.unit}".strip()


METRICS: dict[str, Metric] = {m.column: m for m in [
    Metric("goodput_per_gpu", "goodput per GPU", "req/s/GPU", True),
    Metric("output_throughput_per_gpu", "output throughput per GPU", "tok/s/GPU", True),
    Metric("request_rate_per_gpu", "completed requests per GPU", "req/s/GPU", True),
    Metric("ttft_p50_ms", "TTFT p50", "ms", False),
    Metric("ttft_p99_ms", "TTFT p99", "ms", False),
    Metric("tpot_p50_ms", "TPOT p50", "ms", False),
    Metric("tpot_p99_ms", "TPOT p99", "ms", False),
    Metric("itl_p99_ms", "ITL p99", "ms", False),
    Metric("e2e_p99_ms", "E2E p99", "ms", False),
]}


def metric(column: str) -> Metric:
    """The Metric for a summary column (unknown columns: higher is better, no unit)."""
    return METRICS.get(column, Metric(column, column.replace("_", " "), "", True))


# --------------------------------------------------------------------------- load axis and arms


def x_column(summary: pd.DataFrame) -> str:
    """The load axis: 'rate' (open loop) or 'concurrency' (closed loop)."""
    if "level_kind" in summary and len(summary) and (summary["level_kind"] == "concurrency").all():
        return "concurrency" if "concurrency" in summary else "level_value"
    return "rate" if "rate" in summary else "level_value"


def x_label(summary: pd.DataFrame) -> str:
    """Axis label of the load axis, with unit."""
    return "concurrency (in-flight requests)" if x_column(summary) == "concurrency" else "request rate (req/s)"


def plot_x_label(summary: pd.DataFrame) -> str:
    """Label of a figure's load axis: the offered rate actually scheduled, with the nominal levels."""
    x = x_column(summary)
    if x != "rate" or "offered_rate" not in summary:
        return x_label(summary)
    levels = ", ".join(f"{v:g}" for v in sorted(pd.to_numeric(summary[x], errors="coerce").dropna().unique()))
    return f"offered request rate, as scheduled (req/s); nominal levels {levels}"


def fmt_x(summary: pd.DataFrame, x: float) -> str:
    """'8 req/s' or 'concurrency 16'."""
    v = f"{x:g}" if abs(x - round(x)) < 1e-9 else f"{x:.2f}"
    return f"concurrency {v}" if x_column(summary) == "concurrency" else f"{v} req/s"


def _natural(s: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def is_colocated(summary: pd.DataFrame, arm: str) -> bool:
    """Whether an arm is a colocated baseline (topology_kind column, else its label)."""
    if "topology_kind" in summary:
        kinds = summary.loc[summary["arm"] == arm, "topology_kind"].dropna().unique()
        if len(kinds):
            return kinds[0] == "colocated"
    return "colocated" in arm.lower()


def arms(summary: pd.DataFrame) -> list[str]:
    """The arms in a stable display order: PD arms by label (1P3D, 2P2D, …), then colocated ones."""
    names = [str(a) for a in summary["arm"].dropna().unique()] if "arm" in summary else []
    return sorted(names, key=lambda a: (is_colocated(summary, a), _natural(a)))


# --------------------------------------------------------------------------- repeats and A/A band


def aggregate(summary: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per arm × load level: mean, min, max, std and count over repeats of one summary column."""
    x = x_column(summary)
    d = summary[["arm", x, column]].dropna(subset=[x]).copy()
    d[column] = pd.to_numeric(d[column], errors="coerce")
    g = d.groupby(["arm", x], sort=True)[column]
    out = g.agg(mean="mean", lo="min", hi="max", std="std", n="count").reset_index()
    out = out.rename(columns={x: "x"})
    off = plot_x(summary).groupby([summary["arm"], summary[x]]).mean()
    out["x_plot"] = [float(off.get((a, v), v)) for a, v in zip(out["arm"], out["x"], strict=True)]
    return out


def plot_x(summary: pd.DataFrame) -> pd.Series:
    """Where each row sits on a figure's load axis: the offered rate actually scheduled (open loop; the
    nominal rate where unknown), or the concurrency."""
    x = x_column(summary)
    v = pd.to_numeric(summary[x], errors="coerce")
    if x == "rate" and "offered_rate" in summary:
        return pd.to_numeric(summary["offered_rate"], errors="coerce").fillna(v)
    return v


def aa_band(summary: pd.DataFrame, column: str) -> pd.DataFrame:
    """The A/A band per load level: the largest relative spread (max − min) / |mean| of any arm's repeats
    there. Columns x, band (NaN where no arm has ≥ 2 repeats), n_max."""
    agg = aggregate(summary, column)
    rep = agg[agg["n"] >= 2].copy()
    rows = []
    for x, g in agg.groupby("x", sort=True):
        r = rep[rep["x"] == x]
        if len(r):
            rel = (r["hi"] - r["lo"]) / r["mean"].abs().where(r["mean"].abs() > 0)
            # both zero: no spread; a spread around a zero mean is unbounded
            rel = rel.where(~((r["hi"] - r["lo"]) == 0), 0.0).fillna(math.inf)
            band = float(rel.max())
        else:
            band = math.nan
        rows.append({"x": x, "band": band, "n_max": int(g["n"].max())})
    return pd.DataFrame(rows, columns=["x", "band", "n_max"])


def has_repeats(summary: pd.DataFrame) -> bool:
    """Whether any arm × level was measured more than once."""
    x = x_column(summary)
    return bool(len(summary)) and bool((summary.groupby(["arm", x]).size() >= 2).any())


# --------------------------------------------------------------------------- pairwise verdicts


def rel_diff(a: float, b: float, higher_is_better: bool) -> float:
    """How much better a is than b (> 0: a better), relative to the worse of the two: '30 % more goodput'
    (over the lower value) or '60 % lower TTFT' (under the higher value). 0 when equal; ±inf when the worse
    value is 0 for a higher-is-better metric."""
    if any(v is None or math.isnan(v) for v in (a, b)):
        return math.nan
    if a == b:
        return 0.0
    sign = 1.0 if (a > b) == higher_is_better else -1.0
    worse = min(a, b) if higher_is_better else max(a, b)
    if worse == 0:
        return sign * math.inf
    return sign * abs(a - b) / abs(worse)


def _significant(a: float, b: float, threshold: float) -> bool:
    """Whether |a − b| exceeds the band, relative to the larger magnitude (the conservative reading)."""
    big = max(abs(a), abs(b))
    return big > 0 and abs(a - b) / big > threshold


def compare_arms(summary: pd.DataFrame, a: str, b: str, column: str,
                 noise: float = DEFAULT_NOISE) -> pd.DataFrame:
    """Arm a vs arm b at every common load level on one column: x, a, b, diff (> 0: a better), band,
    band_measured, winner (a, b or '' for no difference)."""
    m = metric(column)
    agg = aggregate(summary, column).set_index(["arm", "x"])
    band = aa_band(summary, column).set_index("x")["band"]
    xs = sorted(set(agg.loc[a].index) & set(agg.loc[b].index)) if a in agg.index and b in agg.index else []
    rows = []
    for x in xs:
        va, vb = float(agg.loc[(a, x), "mean"]), float(agg.loc[(b, x), "mean"])
        bd = float(band.get(x, math.nan))
        measured = not math.isnan(bd)
        thr = bd if measured else noise
        d = rel_diff(va, vb, m.higher_is_better)
        winner = "" if math.isnan(d) or not _significant(va, vb, thr) else (a if d > 0 else b)
        rows.append({"x": x, "a": va, "b": vb, "diff": d, "band": thr, "band_measured": measured, "winner": winner})
    return pd.DataFrame(rows, columns=["x", "a", "b", "diff", "band", "band_measured", "winner"])


def crossover(summary: pd.DataFrame, a: str, b: str, column: str, noise: float = DEFAULT_NOISE) -> float | None:
    """The load level where the better of a and b changes (linear interpolation of the difference of the
    means between the last level one side wins and the first the other side wins, both beyond the A/A band);
    None when the same arm wins throughout (or nothing is decisive)."""
    c = compare_arms(summary, a, b, column, noise)
    decisive = c[c["winner"] != ""]
    if len(decisive) < 2:
        return None
    prev = None
    for _, row in decisive.iterrows():
        if prev is not None and row["winner"] != prev["winner"]:
            x0, x1 = prev["x"], row["x"]
            d0, d1 = prev["a"] - prev["b"], row["a"] - row["b"]
            return float(x0 + (x1 - x0) * (d0 / (d0 - d1))) if d0 != d1 else float((x0 + x1) / 2)
        prev = row
    return None


def rank_arms(summary: pd.DataFrame, column: str, candidates: Iterable[str] | None = None) -> list[str]:
    """Arms ordered best first by the mean over load levels of one column (direction from METRICS)."""
    m = metric(column)
    agg = aggregate(summary, column)
    if candidates is not None:
        agg = agg[agg["arm"].isin(list(candidates))]
    score = agg.groupby("arm")["mean"].mean().dropna()
    return list(score.sort_values(ascending=not m.higher_is_better).index)


def pd_and_baseline(summary: pd.DataFrame, column: str = "goodput_per_gpu") -> tuple[str | None, str | None]:
    """(best PD arm, best colocated arm) by `column`; when one side is missing, the two best arms."""
    all_arms = arms(summary)
    pd_arms = [a for a in all_arms if not is_colocated(summary, a)]
    co_arms = [a for a in all_arms if is_colocated(summary, a)]
    if pd_arms and co_arms:
        return rank_arms(summary, column, pd_arms)[0], rank_arms(summary, column, co_arms)[0]
    ranked = rank_arms(summary, column)
    return (ranked[0] if ranked else None), (ranked[1] if len(ranked) > 1 else None)


def pct(d: float) -> str:
    """A relative difference as a percentage for prose."""
    if math.isinf(d):
        return "∞ %"
    return f"{abs(d) * 100:.1f} %" if abs(d) < 0.1 else f"{abs(d) * 100:.0f} %"


def sentence(summary: pd.DataFrame, a: str, b: str, column: str, row: Mapping[str, Any]) -> str:
    """One verdict sentence for one load level: 'X beats Y by N % at R …' or 'no difference …'."""
    m = metric(column)
    where = fmt_x(summary, row["x"])
    band = (f"A/A band ±{row['band'] * 100:.0f} %" if row["band_measured"] else
            f"single run: noise not measured, differences under ±{row['band'] * 100:.0f} % are not called")
    if math.isnan(row["diff"]):
        return f"at {where}: {m.label} not measured for both"
    if not row["winner"]:
        return (f"at {where}: no difference in {m.label} between {a} and {b} "
                f"({m.fmt(row['a'])} vs {m.fmt(row['b'])}: {pct(row['diff'])} apart, within the {band})")
    win, lose = (a, b) if row["winner"] == a else (b, a)
    vw, vl = (row["a"], row["b"]) if row["winner"] == a else (row["b"], row["a"])
    how = "higher" if m.higher_is_better else "lower"
    return (f"{win} beats {lose} by {pct(row['diff'])} at {where} on {m.label} "
            f"({m.fmt(vw)} vs {m.fmt(vl)}, {how} is better; {band})")


# --------------------------------------------------------------------------- Pareto frontier


def pareto_frontier(df: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The rows not dominated in (x, y), both maximised, sorted by x ascending."""
    d = df.dropna(subset=[x, y]).sort_values([x, y], ascending=[False, False])
    keep, best_y = [], -math.inf
    for idx, row in d.iterrows():
        if row[y] > best_y:
            keep.append(idx)
            best_y = row[y]
    return d.loc[keep].sort_values(x)


def pareto_points(summary: pd.DataFrame) -> pd.DataFrame:
    """Per arm × level (mean over repeats): tokens/s per user (1000 / TPOT p50) and output tok/s per GPU."""
    x = x_column(summary)
    d = summary.copy()
    d["tok_s_per_user"] = 1000.0 / pd.to_numeric(d["tpot_p50_ms"], errors="coerce").where(d["tpot_p50_ms"] > 0)
    g = d.groupby(["arm", x], sort=True)[["tok_s_per_user", "output_throughput_per_gpu"]].mean().reset_index()
    return g.rename(columns={x: "x"})


# --------------------------------------------------------------------------- SLOs


def goodput_at(requests: pd.DataFrame, ttft_ms: float, tpot_ms: float) -> pd.DataFrame:
    """Goodput per run × level under other SLOs, recomputed from request records (run, level, ttft_ms,
    tpot_ms, ok, warmup, t_send, t_end): columns run, level, goodput (req/s)."""
    r = requests[~requests["warmup"].astype(bool)]
    rows = []
    for (run, level), g in r.groupby(["run", "level"], sort=True):
        dur = float(np.nanmax(g["t_end"]) - np.nanmin(g["t_send"])) if len(g) else math.nan
        ok = g[g["ok"].astype(bool)]
        good = (ok["ttft_ms"] <= ttft_ms) & (ok["tpot_ms"].fillna(0.0) <= tpot_ms)
        rows.append({"run": run, "level": level, "goodput": good.sum() / dur if dur > 0 else math.nan})
    return pd.DataFrame(rows, columns=["run", "level", "goodput"])


def best_per_slo(summary: pd.DataFrame, slos: Iterable[tuple[float, float]] | None = None,
                 requests: pd.DataFrame | None = None, noise: float | None = None) -> pd.DataFrame:
    """For each SLO (TTFT ms, TPOT ms): the arm and load level with the highest goodput per GPU (mean over
    repeats), the runner-up arm, and the margin ('tie' within the A/A band, or `noise` without repeats).
    Other SLOs than the runs' own need `requests`."""
    measured = has_repeats(summary)
    if noise is None:
        band = aa_band(summary, "goodput_per_gpu")["band"] if has_repeats(summary) else pd.Series(dtype=float)
        noise = float(band.max()) if band.notna().any() else DEFAULT_NOISE
    base = (float(summary["slo_ttft_ms"].iloc[0]), float(summary["slo_tpot_ms"].iloc[0]))
    slos = list(slos) if slos else [base]
    x = x_column(summary)
    rows = []
    for ttft, tpot in slos:
        d = summary[["run", "level", "arm", x, "gpus", "goodput_per_gpu"]].copy()
        if (ttft, tpot) != base:
            if requests is None or requests.empty:
                continue
            gp = goodput_at(requests, ttft, tpot)
            d = d.drop(columns="goodput_per_gpu").merge(gp, on=["run", "level"], how="left")
            d["goodput_per_gpu"] = d["goodput"] / d["gpus"]
        agg = d.groupby(["arm", x])["goodput_per_gpu"].mean().reset_index()
        best = agg.sort_values("goodput_per_gpu", ascending=False).drop_duplicates("arm")
        row: dict[str, Any] = {"SLO": f"TTFT ≤ {ttft:g} ms, TPOT ≤ {tpot:g} ms"}
        if best.empty or not (best["goodput_per_gpu"].fillna(0) > 0).any():
            row.update({"best arm": "no arm meets it at any measured load", "at": "", "goodput/GPU (req/s)": 0.0,
                        "runner-up": "", "margin": ""})
        else:
            top = best.iloc[0]
            row.update({"best arm": top["arm"], "at": fmt_x(summary, top[x]),
                        "goodput/GPU (req/s)": round(float(top["goodput_per_gpu"]), 3)})
            if len(best) > 1:
                nxt = best.iloc[1]
                row["runner-up"] = nxt["arm"]
                margin = rel_diff(top["goodput_per_gpu"], nxt["goodput_per_gpu"], True)
                sig = _significant(top["goodput_per_gpu"], nxt["goodput_per_gpu"], noise)
                row["margin"] = pct(margin) + ("" if sig else f" (tie: within ±{noise * 100:.0f} %)") + (
                    "" if measured else " (single run: noise not measured)")
            else:
                row["runner-up"], row["margin"] = "", ""
        rows.append(row)
    return pd.DataFrame(rows)


def slo_variants(ttft_ms: float, tpot_ms: float) -> list[tuple[float, float]]:
    """The runs' SLO plus a strict (½×) and a relaxed (2×) variant, for the best-config table."""
    return [(ttft_ms / 2, tpot_ms / 2), (ttft_ms, tpot_ms), (ttft_ms * 2, tpot_ms * 2)]


# --------------------------------------------------------------------------- fairness


_SKIP = ("name", "description", "labels", "topology", "workload.rates", "workload.concurrencies",
         "backend.k8s", "namespace")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def role_args(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Effective engine args per worker role (common engine_args + the role's args)."""
    common = dict(params.get("engine_args") or {})
    t = params.get("topology") or {}
    roles = ("prefill", "decode") if t.get("kind", "pd") == "pd" else ("worker",)
    return {r: {**common, **((t.get(r) or {}).get("args") or {})} for r in roles}


def _is_disagg(key: str) -> bool:
    return key.lstrip("-").replace("_", "-").startswith("disaggregation")


def arms_table(params_by_arm: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per arm: kind, GPUs, TP, replicas per role, engine args per role (disaggregation flags
    included), model and GPU type — the fair-comparison table."""
    rows = []
    for arm, p in params_by_arm.items():
        a = run_arm(p)
        if a is None:
            kind, reps, gpus, tps = (p.get("topology") or {}).get("kind"), "?", None, []
        elif a.kind == "pd":
            kind, gpus, tps = a.kind, a.gpus, sorted({a.prefill_tp, a.decode_tp})
            reps = f"prefill {a.prefill} × TP{a.prefill_tp}, decode {a.decode} × TP{a.decode_tp}"
        else:
            kind, gpus, tps = a.kind, a.gpus, [a.worker_tp]
            reps = f"worker {a.workers} × TP{a.worker_tp}"
        args = "; ".join(f"{r}: " + (", ".join(f"--{k}={v}" for k, v in sorted(a.items())) or "defaults")
                         for r, a in role_args(p).items())
        rows.append({"arm": arm, "kind": kind, "GPUs": gpus, "TP": "/".join(str(x) for x in tps),
                     "replicas": reps, "engine args": args,
                     "model": (p.get("model") or {}).get("name"), "GPU": (p.get("gpu") or {}).get("type")})
    return pd.DataFrame(rows)


def fairness_warnings(params_by_arm: Mapping[str, Mapping[str, Any]],
                      summary: pd.DataFrame | None = None, failed_warn: float = 0.01) -> list[str]:
    """Why a comparison may be unfair: arms differing in anything but the disaggregation settings (engine
    args other than --disaggregation-*, model, GPU type, workload, SLOs, image, emulator), in GPU count or
    TP; client-bound levels; levels with failed requests."""
    warnings: list[str] = []
    names = list(params_by_arm)
    flat = {a: {k: v for k, v in _flatten(p).items() if not k.startswith(_SKIP)} for a, p in params_by_arm.items()}
    keys = sorted(set().union(*(f.keys() for f in flat.values()))) if flat else []
    for k in keys:
        vals = {a: flat[a].get(k, "(default)") for a in names}
        if len({repr(v) for v in vals.values()}) > 1:
            warnings.append(f"arms differ in `{k}`: " + ", ".join(f"{a} = {v}" for a, v in vals.items()))
    # engine args per arm, union over its worker roles, disaggregation flags excluded
    arm_args: dict[str, dict[str, set[str]]] = {}
    for a, p in params_by_arm.items():
        merged: dict[str, set[str]] = {}
        for ra in role_args(p).values():
            for k, v in ra.items():
                if not _is_disagg(k):
                    merged.setdefault(k, set()).add(repr(v))
        arm_args[a] = merged
    for k in sorted(set().union(*(m.keys() for m in arm_args.values())) if arm_args else []):
        vals = {a: ("/".join(sorted(m[k])) if k in m else "(default)") for a, m in arm_args.items()}
        if len(set(vals.values())) > 1:
            warnings.append(f"engine arg `--{k}` differs between arms: " + ", ".join(f"{a}: {v}" for a, v in vals.items()))
    tab = arms_table(params_by_arm)
    if len(tab) and tab["GPUs"].nunique() > 1:
        warnings.append("arms use different GPU counts (" + ", ".join(f"{r.arm}: {r.GPUs}" for r in tab.itertuples())
                        + "); per-GPU figures are shown, but the comparison is not at equal GPU count")
    if len(tab) and tab["TP"].nunique() > 1:
        warnings.append("arms use different tensor parallelism (" + ", ".join(f"{r.arm}: TP{r.TP}" for r in tab.itertuples())
                        + "); part of any difference is TP, not disaggregation")
    if summary is not None and len(summary):
        x = x_column(summary)
        if "client_bound" in summary:
            cb = summary[summary["client_bound"].fillna(False).astype(bool)]
            for r in cb.itertuples():
                reason = getattr(r, "client_bound_reason", "") or ""
                warnings.append(f"run `{r.run}` ({r.arm}) at {fmt_x(summary, getattr(r, x))} was client-bound"
                                f"{': ' + reason if reason else ''} — it measured the load generator, not the server")
        if {"failed", "requests"} <= set(summary.columns):
            frac = summary["failed"] / summary["requests"].where(summary["requests"] > 0)
            for r, f in zip(summary.itertuples(), frac, strict=True):
                if f > failed_warn:
                    err = getattr(r, "top_error", "") or ""
                    warnings.append(f"run `{r.run}` ({r.arm}) at {fmt_x(summary, getattr(r, x))}: {f:.0%} of requests "
                                    f"failed{' (' + err[:120] + ')' if err else ''}")
    return warnings


# --------------------------------------------------------------------------- caveats


def client_bound_caveats(summary: pd.DataFrame) -> list[str]:
    """One caveat naming the levels where the load generator fell behind (their latencies measure it)."""
    if "client_bound" not in summary:
        return []
    cb = summary[summary["client_bound"].fillna(False).astype(bool)]
    if not len(cb):
        return []
    where = ", ".join(sorted({f"{r.arm} at {fmt_x(summary, getattr(r, x_column(summary)))}" for r in cb.itertuples()}))
    return [f"client-bound levels ({where}): the load generator fell behind there, so those latencies partly "
            "measure the client; re-run them on a less loaded machine"]


KEY_COLUMNS = {"ttft_p50_ms": "TTFT p50 (ms)", "ttft_p99_ms": "TTFT p99 (ms)", "tpot_p50_ms": "TPOT p50 (ms)",
               "tpot_p99_ms": "TPOT p99 (ms)", "output_throughput_per_gpu": "output tok/s/GPU",
               "goodput_per_gpu": "goodput req/s/GPU", "client_bound": "client-bound"}
MIN_SAMPLES = 100  # percentiles from fewer completed requests than this are marked with FEW
FEW = "†"


def _num(v: float) -> str:
    """A number for tables: thousands separated, three significant digits below 100, never scientific."""
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3g}" if abs(v) >= 0.01 or v == 0 else f"{v:.4f}"


def _cell(v: pd.Series) -> str:
    """Mean over repeats, '± half the spread' when repeated, 'n/a' when unmeasured."""
    v = pd.to_numeric(v, errors="coerce")
    if not v.notna().any():
        return "n/a"
    text = _num(v.mean())
    return text + (f" ± {_num((v.max() - v.min()) / 2)}" if v.count() > 1 else "")


def key_table(summary: pd.DataFrame, columns: Mapping[str, str] = KEY_COLUMNS) -> pd.DataFrame:
    """The headline numbers per arm × load level (mean over repeats, '± spread/2' when repeated): nominal
    and offered rate, SLO attainment, the `columns`; percentiles from fewer than MIN_SAMPLES completed
    requests are marked FEW; client-bound says yes or no."""
    x = x_column(summary)
    cols = [c for c in columns if c in summary]
    out = []
    for (arm, xv), g in summary.groupby(["arm", x], sort=False):
        row: dict[str, Any] = {"arm": arm, x_label(summary).replace("request rate", "nominal rate"): f"{xv:g}"}
        if x == "rate" and "offered_rate" in g:
            row["offered (req/s)"] = _cell(g["offered_rate"])
        row["runs"] = len(g)
        n = int(pd.to_numeric(g.get("completed", pd.Series([MIN_SAMPLES])), errors="coerce").min())
        row["requests"] = n
        if "good_fraction" in g:
            att = pd.to_numeric(g["good_fraction"], errors="coerce") * 100
            row["SLO attainment %"] = _cell(att.round(1))
        for c in cols:
            if c == "client_bound":
                row[columns[c]] = "yes" if g[c].fillna(False).astype(bool).any() else "no"
                continue
            text = _cell(g[c])
            if "_p" in c and c.endswith("_ms") and n < MIN_SAMPLES and text != "n/a":
                text += f" {FEW}"
            row[columns[c]] = text
        out.append(row)
    df = pd.DataFrame(out)
    if df.empty:
        return df
    order = {a: i for i, a in enumerate(arms(summary))}
    xcol = df.columns[1]
    df["_x"] = [float(v) for v in df[xcol]]
    df["_o"] = df["arm"].map(order)
    return df.sort_values(["_o", "_x"]).drop(columns=["_o", "_x"]).reset_index(drop=True)


def few_samples_note(summary: pd.DataFrame) -> str:
    """The footnote for FEW, or '' when every level has enough samples."""
    if "completed" not in summary or not (pd.to_numeric(summary["completed"], errors="coerce") < MIN_SAMPLES).any():
        return ""
    return (f"{FEW} percentile from fewer than {MIN_SAMPLES} completed requests (the `requests` column): a p99 "
            "of so few samples is close to the maximum and moves a lot between runs.")
