"""Rate-curve mode: every xPyD ratio and the equal-GPU colocated baseline at the workload's rates, in virtual time.

`plan(exp)` runs the emulator's own engine (the same scheduler and performance model the emulated workers
use, configured from the same argument lists) as a discrete-event simulation — no processes, no HTTP —
for each arm at each of the workload's request rates, and returns one row per arm × rate with the
bench_serving figures. Use it to pick which arms are worth a real (or emulated real-time) sweep.
Every figure is "emulated"; requests are routed by the params' router policy (`pdlab.plan.routing`) and built by
`pdlab.plan.requests` (the spec's lengths, the dataset's own lengths, or the real prompts' token ids for
chat-shaped workloads). An arm is only ever marked best at a rate where it meets the SLO (slo.statistic) and its
queue drains (not collapsed: arrivals stop at the level's end and everything finishes within UNBOUNDED × one
request's SLO budget after).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from pdlab.core.errors import SpecError
from pdlab.core.stats import level_duration, meets_slo, percentile
from pdlab.emulator.engine import SimRequest, simulate
from pdlab.experiment.loader import experiment_from_dict
from pdlab.experiment.topology import build, enumerate_ratios
from pdlab.plan.requests import level_requests
from pdlab.plan.routing import policies
from pdlab.plan.simulate import UNBOUNDED, engine_config, judge

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment

COLUMNS = ["arm", "kind", "prefill", "decode", "workers", "tp", "gpus", "rate", "requests", "ttft_p50_ms",
           "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "output_throughput_per_gpu", "goodput_per_gpu", "meets_slo",
           "collapsed"]


def arms(exp: Experiment, budget: int | None = None, tp: int | None = None) -> list[Experiment]:
    """The experiments to compare: every xPyD at `tp` using exactly `budget` GPUs, plus colocated budget/tp×TP."""
    topo = build(exp)
    tp = tp or topo.workers[0].tp
    budget = budget or topo.gpus
    if budget % tp:
        raise SpecError(f"a budget of {budget} GPUs does not split into TP{tp} instances", field="--budget")
    base = exp.model_dump(mode="json")
    router = base["topology"].get("router", {})
    out = []
    for p, d in enumerate_ratios(budget, tp):
        doc = dict(base, topology={"kind": "pd", "prefill": {"replicas": p, "tp": tp},
                                   "decode": {"replicas": d, "tp": tp}, "router": router})
        out.append(experiment_from_dict(doc, source="pdlab plan"))
    doc = dict(base, topology={"kind": "colocated", "worker": {"replicas": budget // tp, "tp": tp},
                               "router": router})
    out.append(experiment_from_dict(doc, source="pdlab plan"))
    return out


def workload(exp: Experiment, rate: float, duration_s: float, seed: int) -> list[SimRequest]:
    """Arrivals of one level (the spec's arrival process) with seeded prompts (see pdlab.plan.requests)."""
    return level_requests(exp, rate, duration_s, seed)


def simulate_arm(exp: Experiment, rate: float, *, duration_s: float, seed: int = 0) -> dict:
    """One arm at one rate in virtual time → a row of figures (ms, per-GPU throughput and goodput)."""
    topo = build(exp)
    reqs = workload(exp, rate, duration_s, seed)
    if exp.topology.kind == "pd":
        timings = simulate(reqs, engine_config(exp, "prefill"), prefill_workers=topo.role("prefill").replicas,
                           decode_workers=topo.role("decode").replicas,
                           decode_config=engine_config(exp, "decode"), **policies(exp))
        p, d, w = topo.role("prefill").replicas, topo.role("decode").replicas, 0
    else:
        timings = simulate(reqs, engine_config(exp, "worker"), workers=topo.role("worker").replicas,
                           **policies(exp))
        p, d, w = 0, 0, topo.role("worker").replicas
    ttft = np.array([t.ttft for t in timings]) * 1e3
    tpot = np.array([t.tpot if t.output_tokens > 1 else np.nan for t in timings]) * 1e3
    span = level_duration([t.arrival for t in timings], [t.arrival + t.e2e for t in timings])
    span = span if span > 0 else duration_s
    good = int(meets_slo(ttft / 1e3, tpot / 1e3, exp.slo.ttft_ms, exp.slo.tpot_ms).sum())
    pct = percentile
    ds = exp.workload.dataset
    drain_budget = UNBOUNDED * (exp.slo.ttft_ms + ds.output_len * (1 + ds.range_ratio) * exp.slo.tpot_ms) / 1e3
    last_arrival = max((r.arrival for r in reqs), default=0.0)
    finish = max((t.arrival + t.e2e for t in timings), default=0.0)
    collapsed = bool(timings) and finish > last_arrival + drain_budget
    done = ~np.isnan(tpot)
    meets = bool(len(ttft) and done.any()) and judge(exp, ttft / 1e3, tpot[done] / 1e3)[0]

    return {"arm": topo.label, "kind": exp.topology.kind, "prefill": p, "decode": d, "workers": w,
            "tp": topo.workers[0].tp, "gpus": topo.gpus, "rate": rate, "requests": len(timings),
            "ttft_p50_ms": pct(ttft, 50), "ttft_p99_ms": pct(ttft, 99), "tpot_p50_ms": pct(tpot, 50),
            "tpot_p99_ms": pct(tpot, 99),
            "output_throughput_per_gpu": sum(t.output_tokens for t in timings) / span / topo.gpus,
            "goodput_per_gpu": good / span / topo.gpus, "meets_slo": bool(meets) and not collapsed,
            "collapsed": collapsed, **cache_hit_rates(timings, pd=exp.topology.kind == "pd")}


def cache_hit_rates(timings: list, *, pd: bool) -> dict[str, float]:
    """Prompt tokens served from the radix cache ÷ prompt tokens, per role (prefill or colocated, decode)."""
    prompt = sum(t.prompt_tokens for t in timings) or 1
    out = {"cache_hit_" + ("prefill" if pd else "worker"): sum(t.cached_tokens for t in timings) / prompt}
    if pd:
        out["cache_hit_decode"] = sum(t.decode_cached_tokens for t in timings) / prompt
    return out


def plan(exp: Experiment, *, budget: int | None = None, tp: int | None = None, rates: list[float] | None = None,
         duration_s: float | None = None, progress: bool = False) -> pd.DataFrame:
    """Every arm (xPyD + colocated at equal GPUs) × every rate, simulated in virtual time; one row each."""
    levels = rates or [v for k, v in exp.workload.levels if k == "rate"]
    if not levels:
        raise SpecError("planning needs request rates (workload.rates); closed-loop concurrencies are not "
                        "simulated", field="workload.rates")
    duration = duration_s or exp.workload.duration_s or 60.0
    rows = []
    candidates = arms(exp, budget, tp)
    for i, arm in enumerate(candidates):
        for rate in levels:
            rows.append(simulate_arm(arm, rate, duration_s=duration, seed=exp.workload.seed))
        if progress:
            print(f"  simulated {build(arm).label} ({i + 1}/{len(candidates)})", flush=True)
    return pd.DataFrame(rows, columns=COLUMNS)


def best_per_rate(table: pd.DataFrame) -> pd.DataFrame:
    """The arm with the most goodput per GPU at each rate among those meeting the SLO without collapsing (ties:
    lower TTFT p99); a rate where none does has arm None."""
    cols = ["rate", "arm", "goodput_per_gpu", "ttft_p99_ms", "tpot_p99_ms"]
    ok = table[table["meets_slo"].astype(bool)]
    ranked = ok.sort_values(["rate", "goodput_per_gpu", "ttft_p99_ms"], ascending=[True, False, True])
    best = ranked.groupby("rate", as_index=False).first()[cols]
    missing = sorted(set(table["rate"]) - set(best["rate"]))
    if missing:
        none = pd.DataFrame({"rate": missing, "arm": [None] * len(missing)})
        best = pd.concat([best, none], ignore_index=True).sort_values("rate", ignore_index=True)
    return best[cols]


def format_plan(table: pd.DataFrame) -> str:
    """The plan as text: one block per rate, arms ranked by goodput per GPU, the winner marked."""
    lines = [f"{'rate':>5}  {'arm':<20} {'TTFT p50':>9} {'TTFT p99':>9} {'TPOT p50':>9} {'TPOT p99':>9} "
             f"{'out tok/s/GPU':>13} {'goodput/GPU':>11}"]
    for rate, grp in table.groupby("rate"):
        grp = grp.sort_values(["meets_slo", "goodput_per_gpu", "ttft_p99_ms"], ascending=[False, False, True])
        for j, r in enumerate(grp.itertuples()):
            mark = "*" if j == 0 and r.meets_slo else " "
            note = " collapsed" if r.collapsed else ("" if r.meets_slo else " misses SLO")
            lines.append(f"{rate:>5g} {mark}{r.arm:<20} {r.ttft_p50_ms:>9.0f} {r.ttft_p99_ms:>9.0f} "
                         f"{r.tpot_p50_ms:>9.1f} {r.tpot_p99_ms:>9.1f} {r.output_throughput_per_gpu:>13.1f} "
                         f"{r.goodput_per_gpu:>11.3f}{note}")
        if not grp["meets_slo"].any():
            lines.append(f"{rate:>5g}  no arm meets the SLO at this rate")
    lines.append("latencies in ms; * = most goodput per GPU among arms meeting the SLO (collapsed: queue grows "
                 "without bound); emulated, virtual time")
    return "\n".join(lines)
