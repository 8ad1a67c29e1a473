"""The sweep's verdict, judged on capacity at the SLO (see `pdlab.analysis.capacity`).

The headline compares the best PD arm with the best colocated baseline on the highest offered rate each
sustains with SLO attainment ≥ the threshold. A margin is stated only where it means something: never
between two arms that both miss the threshold (both are overloaded there, whatever their goodput), only as a
lower bound where one arm met the SLO at every level, and always with its noise: the spread of repeated runs,
or the words "single run: noise not measured".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from pdlab.analysis import capacity as cap
from pdlab.analysis import compare

NOT_MEASURED = "single run: noise not measured"


@dataclass
class Conclusion:
    """The verdict of a sweep: headline, per-level sentences, caveats (Markdown via .markdown())."""

    headline: str
    details: list[str] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    capacities: dict[str, cap.Capacity] = field(default_factory=dict)
    pair: tuple[str | None, str | None] = (None, None)

    def markdown(self) -> str:
        """The headline, then the per-level details and the caveats as Markdown lists."""
        parts = [self.headline]
        if self.details:
            parts.append("\n".join(f"- {d}" for d in self.details))
        if self.caveats:
            parts.append("\n".join(f"- ⚠ {c}" for c in self.caveats))
        return "\n\n".join(parts)

    def _repr_markdown_(self) -> str:
        return self.markdown()


def best_pair(caps: dict[str, cap.Capacity], summary: pd.DataFrame) -> tuple[str | None, str | None]:
    """(best PD arm, best colocated arm) by capacity; the two best arms when one side is missing."""
    def key(a: str) -> tuple[int, float]:
        c = caps[a]
        rank = {"at least": 2, "interpolated": 1, "below": 0}.get(c.bound, -1)
        return rank, (c.value if not math.isnan(c.value) else -math.inf)

    all_arms = [a for a in compare.arms(summary) if a in caps]
    pd_arms = sorted((a for a in all_arms if not compare.is_colocated(summary, a)), key=key, reverse=True)
    co_arms = sorted((a for a in all_arms if compare.is_colocated(summary, a)), key=key, reverse=True)
    if pd_arms and co_arms:
        return pd_arms[0], co_arms[0]
    ranked = sorted(all_arms, key=key, reverse=True)
    return (ranked[0] if ranked else None), (ranked[1] if len(ranked) > 1 else None)


def noise_text(a: cap.Capacity, b: cap.Capacity) -> tuple[float, str]:
    """(the A/A band of the pair, the words saying it): the larger spread of their repeats, or NOT_MEASURED."""
    spreads = [c.spread for c in (a, b) if not math.isnan(c.spread)]
    if not spreads:
        return math.nan, NOT_MEASURED
    band = max(spreads)
    n = min(a.repeats, b.repeats)
    return band, f"A/A band ±{band * 100:.0f} % from {n} repeats"


def _pct(x: float) -> str:
    return f"{x * 100:.0f} %"


def capacity_headline(a: cap.Capacity, b: cap.Capacity, slo: str, threshold: float) -> str:
    """One sentence comparing two arms' capacity at the SLO, with the noise in it."""
    band, noise = noise_text(a, b)
    at = f"at the SLO ({slo}, attainment ≥ {_pct(threshold)})"
    if a.bound == "below" and b.bound == "below":
        return (f"**Both {a.arm} and {b.arm} are overloaded at every measured load**: neither reaches "
                f"{_pct(threshold)} SLO attainment even at {min(a.value, b.value):.2f} req/s, so no margin is "
                f"claimed; lower the rates to find their capacity ({noise}).")
    if a.bound == "at least" and b.bound == "at least":
        return (f"**Both {a.arm} and {b.arm} meet the SLO at every measured load** (up to "
                f"{min(a.value, b.value):.2f} req/s), so no margin is claimed; raise the rates to find their "
                f"capacity ({noise}).")
    hi, lo = (a, b) if _ahead(a, b) else (b, a)
    if lo.bound == "below" and hi.bound != "below":
        if hi.value <= lo.value:
            return (f"**{hi.arm} reaches the SLO only near {lo.value:.2f} req/s and {lo.arm} not at all**: "
                    f"{hi.arm} {hi.text()} vs {lo.arm} {lo.text()} {at} ({noise}).")
        return (f"**{hi.arm} sustains {hi.text()} {at}; {lo.arm} misses it even at its lowest level "
                f"({lo.text()})**: {hi.arm} has more than {_pct(hi.value / lo.value - 1)} more capacity ({noise}).")
    if hi.bound == "at least":
        if hi.value <= lo.value:
            return (f"**{hi.arm} {hi.text()} vs {lo.arm} {lo.text()} {at}: not ranked** — {hi.arm} met the SLO "
                    f"at every level, so its capacity is unknown above {hi.value:.2f} req/s; raise the rates ({noise}).")
        return (f"**{hi.arm} sustains {hi.text()} {at} vs {lo.text()} for {lo.arm}**: at least "
                f"{_pct(hi.value / lo.value - 1)} more capacity ({noise}).")
    diff = hi.value / lo.value - 1 if lo.value > 0 else math.inf
    rel = abs(hi.value - lo.value) / max(hi.value, lo.value) if max(hi.value, lo.value) > 0 else 0.0
    if not math.isnan(band) and rel <= band:
        return (f"**No difference in capacity {at}** between {a.arm} ({a.text()}) and {b.arm} ({b.text()}): "
                f"{_pct(diff)} apart, within the {noise}.")
    return (f"**{hi.arm} sustains {hi.text()} {at} vs {lo.text()} for {lo.arm}: {_pct(diff)} more capacity** "
            f"({noise}).")


def _ahead(a: cap.Capacity, b: cap.Capacity) -> bool:
    rank = {"at least": 2, "interpolated": 1, "below": 0, "unknown": -1}
    if a.bound == "below" or b.bound == "below":
        return rank[a.bound] >= rank[b.bound] if a.bound != b.bound else a.value >= b.value
    return a.value >= b.value


def level_sentences(summary: pd.DataFrame, a: str, b: str, threshold: float,
                    column: str = "goodput_per_gpu") -> list[str]:
    """Per load level: attainment of both arms; a margin on `column` only where at least one meets the SLO."""
    x = compare.x_column(summary)
    d = summary.assign(_att=cap.attainment(summary), _off=cap.offered(summary))
    g = d.groupby(["arm", x]).agg(att=("_att", "mean"), off=("_off", "mean")).reset_index()
    comp = compare.compare_arms(summary, a, b, column).set_index("x") if column in summary else None
    out = []
    for xv in sorted(set(g.loc[g["arm"] == a, x]) & set(g.loc[g["arm"] == b, x])):
        ra = g[(g["arm"] == a) & (g[x] == xv)].iloc[0]
        rb = g[(g["arm"] == b) & (g[x] == xv)].iloc[0]
        offered = f"offered {ra['off']:.2f} req/s" if x == "rate" and not math.isnan(ra["off"]) else ""
        where = compare.fmt_x(summary, xv) + (f" ({offered})" if offered else "")
        atts = (f"{offered}, " if offered else "") + f"SLO attainment {_pct(ra['att'])} vs {_pct(rb['att'])}"
        if ra["att"] < threshold and rb["att"] < threshold:
            out.append(f"at {where}: both {a} and {b} are overloaded (SLO attainment {_pct(ra['att'])} vs "
                       f"{_pct(rb['att'])}, below {_pct(threshold)}); "
                       "no margin is claimed")
        elif comp is not None and xv in comp.index:
            row = comp.loc[xv].to_dict() | {"x": xv}
            out.append(compare.sentence(summary, a, b, column, row) + f"; {atts}")
    return out


def conclude(summary: pd.DataFrame, *, threshold: float | None = None, emulated: bool = False,
             noise_floor: float = compare.DEFAULT_NOISE) -> Conclusion:
    """The verdict from the data: capacity at the SLO of the best PD arm vs the best colocated one,
    per-level attainment, and the caveats (client-bound levels, single runs)."""
    if summary is None or summary.empty:
        return Conclusion("No completed runs: nothing to conclude.")
    thr = cap.threshold_of(summary, threshold)
    caps = cap.capacities(summary, thr)
    a, b = best_pair(caps, summary)
    tag = "Emulated results (pdlab's modelled SGLang workers, not real GPUs): " if emulated else ""
    caveats = compare.client_bound_caveats(summary)
    if a is None or b is None:
        only = a or b or "?"
        c = caps.get(only)
        return Conclusion(f"{tag}only one arm ({only}) was measured: capacity at the SLO "
                          f"{c.text() if c else 'n/a'}; there is nothing to compare.", caveats=caveats,
                          capacities=caps, pair=(a, b))
    slo = f"TTFT ≤ {summary['slo_ttft_ms'].iloc[0]:g} ms, TPOT ≤ {summary['slo_tpot_ms'].iloc[0]:g} ms"
    head = capacity_headline(caps[a], caps[b], slo, thr)
    others = [r for r in compare.arms(summary) if r not in (a, b)]
    if others:
        head += " Also measured: " + ", ".join(f"{o} {caps[o].text()}" for o in others if o in caps) + "."
    if not compare.has_repeats(summary):
        caveats.append(f"{NOT_MEASURED}: set `repeats: 2` (or more) in the sweep file to measure the A/A band; "
                       f"per-level differences under ±{noise_floor * 100:.0f} % are not called")
    return Conclusion(tag + head, level_sentences(summary, a, b, thr), caveats, caps, (a, b))
