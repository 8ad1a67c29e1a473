"""Capacity at the SLO: the highest offered request rate an arm sustains with SLO attainment ≥ a threshold.

This is the number a verdict compares arms on, and the objective `pdlab plan` searches for. Per arm and
repeat, its load levels are taken in order of offered rate; the capacity is interpolated linearly between
the last level whose attainment (share of measured requests meeting both SLOs) reaches the threshold and
the first level below it (the first crossing: a later level meeting it again does not count). When every
measured level meets the threshold the capacity is only known to be *at least* the highest level; when the
lowest level already misses, *below* it. Repeats give the noise: the spread of an arm's capacities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

DEFAULT_ATTAINMENT = 0.9


def offered(summary: pd.DataFrame) -> pd.Series:
    """The offered rate actually scheduled per row (req/s): `offered_rate`, else the nominal `rate`."""
    nominal = pd.to_numeric(summary["rate"], errors="coerce") if "rate" in summary else pd.Series(
        math.nan, index=summary.index)
    if "offered_rate" not in summary:
        return nominal
    return pd.to_numeric(summary["offered_rate"], errors="coerce").fillna(nominal)


def attainment(summary: pd.DataFrame) -> pd.Series:
    """Share (0..1) of each level's measured requests that met both SLOs."""
    if "good_fraction" in summary:
        return pd.to_numeric(summary["good_fraction"], errors="coerce")
    good = pd.to_numeric(summary["good_requests"], errors="coerce")
    return good / pd.to_numeric(summary["requests"], errors="coerce").where(summary["requests"] > 0)


def threshold_of(summary: pd.DataFrame, threshold: float | None = None) -> float:
    """The attainment threshold: `threshold` if given, else the runs' `slo_attainment`, else 0.9."""
    if threshold is not None:
        return float(threshold)
    if "slo_attainment" in summary and summary["slo_attainment"].notna().any():
        return float(summary["slo_attainment"].dropna().iloc[0])
    return DEFAULT_ATTAINMENT


@dataclass(frozen=True)
class Capacity:
    """An arm's capacity at the SLO: value (req/s), how it is bounded, and its spread over repeats."""

    arm: str
    value: float  # req/s: the interpolated capacity, or the bound for 'at least' / 'below'
    bound: str  # 'interpolated' | 'at least' | 'below' | 'unknown'
    repeats: int = 1
    spread: float = math.nan  # (max − min) / mean over repeats; NaN for a single run
    gpus: float = math.nan

    def text(self) -> str:
        """'5.20 req/s', '≥ 6.10 req/s', '< 2.00 req/s' or 'n/a'."""
        if self.bound == "unknown" or math.isnan(self.value):
            return "n/a"
        sign = {"at least": "≥ ", "below": "< "}.get(self.bound, "")
        return f"{sign}{self.value:.2f} req/s"


def capacity_of(x: list[float], att: list[float], threshold: float) -> tuple[float, str]:
    """(capacity, bound) from offered rates and attainments of one run's levels (any order)."""
    pts = sorted((a, b) for a, b in zip(x, att, strict=True) if not (math.isnan(a) or math.isnan(b)))
    if not pts:
        return math.nan, "unknown"
    if pts[0][1] < threshold:
        return pts[0][0], "below"
    for (x0, a0), (x1, a1) in zip(pts, pts[1:], strict=False):
        if a1 < threshold:
            return x0 + (x1 - x0) * (a0 - threshold) / (a0 - a1), "interpolated"
    return pts[-1][0], "at least"


def per_run(summary: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """Capacity per arm × repeat: columns arm, repeat, capacity, bound, gpus."""
    thr = threshold_of(summary, threshold)
    d = summary.assign(_x=offered(summary), _a=attainment(summary))
    if "repeat" not in d:
        d["repeat"] = 0
    rows = []
    for (arm, rep), g in d.groupby(["arm", "repeat"], sort=True):
        cap, bound = capacity_of(g["_x"].astype(float).to_list(), g["_a"].astype(float).to_list(), thr)
        gpus = float(pd.to_numeric(g["gpus"], errors="coerce").iloc[0]) if "gpus" in g else math.nan
        rows.append({"arm": arm, "repeat": int(rep), "capacity": cap, "bound": bound, "gpus": gpus})
    return pd.DataFrame(rows, columns=["arm", "repeat", "capacity", "bound", "gpus"])


def capacities(summary: pd.DataFrame, threshold: float | None = None) -> dict[str, Capacity]:
    """Per arm: the mean capacity over repeats, its bound, and the spread of repeats (A/A noise)."""
    out: dict[str, Capacity] = {}
    for arm, g in per_run(summary, threshold).groupby("arm", sort=True):
        vals = g["capacity"].dropna()
        bounds = set(g["bound"])
        bound = bounds.pop() if len(bounds) == 1 else "interpolated"
        mean = float(vals.mean()) if len(vals) else math.nan
        spread = float((vals.max() - vals.min()) / mean) if len(vals) > 1 and mean > 0 else math.nan
        out[str(arm)] = Capacity(str(arm), mean, bound, len(g), spread, float(g["gpus"].iloc[0]))
    return out


def table(summary: pd.DataFrame, threshold: float | None = None) -> pd.DataFrame:
    """The capacity table for reports: arm, capacity at the SLO, per GPU, how it is bounded, repeats, spread."""
    rows = []
    for c in capacities(summary, threshold).values():
        per_gpu = c.value / c.gpus if c.gpus and not math.isnan(c.value) else math.nan
        rows.append({"arm": c.arm, "capacity at SLO": c.text(),
                     "per GPU (req/s)": "n/a" if math.isnan(per_gpu) else f"{per_gpu:.3f}",
                     "bound": {"interpolated": "interpolated between levels",
                               "at least": "met at every level (lower bound)",
                               "below": "missed at every level (upper bound)"}.get(c.bound, "unknown"),
                     "repeats": c.repeats,
                     "spread over repeats": "not measured" if math.isnan(c.spread) else f"±{c.spread * 100:.0f} %"})
    return pd.DataFrame(rows)
