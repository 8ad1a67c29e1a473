"""The plan as data and text: ranked configurations, the PD-vs-colocated verdict, cost, the --json object.

`summarize(exp, search)` turns a search into the JSON-able dict that `--json` prints (keys: configs, best_pd,
best_colocated, verdict, seconds, and the counts); `format_plan` renders the same dict as a table.
"""

from __future__ import annotations

import math
from typing import Any

from pdlab.experiment.spec import Experiment
from pdlab.plan.pareto import frontier
from pdlab.plan.search import TOL, Result, Search


def config_row(r: Result, statistic: str = "mean") -> dict[str, Any]:
    """One configuration as the --json `configs` item (figures at its max rate, or at its closest miss); TTFT and
    TPOT are the SLO's statistic (means for mean and attainment)."""
    c, p = r.candidate, r.best or r.closest
    f = p.figures if p else {}
    stat = statistic if statistic.startswith("p") else "mean"
    return {
        "kind": c.kind, "label": c.label, "gpus": c.gpus, "replicas": c.replicas,
        "prefill": c.prefill * c.replicas if c.kind == "pd" else 0, "prefill_tp": c.prefill_tp,
        "decode": c.decode * c.replicas if c.kind == "pd" else 0,
        "decode_tp": c.decode_tp if c.kind == "pd" else c.prefill_tp,
        "max_running_requests": c.cap, "max_rate": round(r.max_rate, 4),
        "output_tok_s_per_gpu": round(r.tok_s_per_gpu, 2),
        "tok_s_per_user": _round(f.get("tok_s_per_user")) if r.meets else None,
        "ttft_ms": _round(max(f.get(f"ttft_{stat}_ms", math.nan), f.get("ttft_steady_floor_ms", 0.0))
                          if stat == "mean" else f.get(f"ttft_{stat}_ms")),
        "tpot_ms": _round(f.get(f"tpot_{stat}_ms")),
        "ttft_p99_ms": _round(f.get("ttft_p99_ms")), "tpot_p99_ms": _round(f.get("tpot_p99_ms")),
        "attainment": _round(f.get("attainment"), 4), "meets_slo": r.meets,
        "miss": None if r.meets or not p else (p.why or "misses"),
        "bound_rate": round(r.candidate.replicas and r.bound.rate, 4),
    }


def _round(v: Any, n: int = 2) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else round(float(v), n)


def usd_per_million(tok_s_per_gpu: float, gpu_hour_usd: float | None) -> float | None:
    """$ per million output tokens at a GPU-hour price (None without a price or throughput)."""
    if not gpu_hour_usd or tok_s_per_gpu <= 0:
        return None
    return gpu_hour_usd / (tok_s_per_gpu * 3600) * 1e6


def verdict(best_pd: dict | None, best_col: dict | None) -> str:
    """'PD', 'colocated' (with the margin in tok/s/GPU), or that nothing meets the SLO."""
    if not best_pd and not best_col:
        return "no configuration meets the SLO"
    if not best_pd:
        return "colocated: no PD configuration meets the SLO"
    if not best_col:
        return "PD: no colocated configuration meets the SLO"
    a, b = best_pd["output_tok_s_per_gpu"], best_col["output_tok_s_per_gpu"]
    tie = "; within the search's resolution, a tie" if max(a, b) / min(a, b) < 1 + 2 * TOL else ""
    if a >= b:
        return f"PD, {a / b:.2f}× the best colocated tok/s/GPU ({best_pd['label']} vs {best_col['label']}{tie})"
    return f"colocated, {b / a:.2f}× the best PD tok/s/GPU ({best_col['label']} vs {best_pd['label']}{tie})"


def summarize(exp: Experiment, s: Search, budget: int) -> dict[str, Any]:
    """The plan as one JSON-able object (see the module docstring)."""
    ranked = sorted(s.results, key=lambda r: (-r.tok_s_per_gpu, -r.max_rate))
    configs = [config_row(r, exp.slo.statistic) for r in ranked]
    for row in configs:
        row["usd_per_million_tokens"] = _round(usd_per_million(row["output_tok_s_per_gpu"], exp.cost.gpu_hour_usd), 3)
    meeting = [c for c in configs if c["meets_slo"]]
    best_pd = next((c for c in meeting if c["kind"] == "pd"), None)
    best_col = next((c for c in meeting if c["kind"] == "colocated"), None)
    closest = None
    if not meeting:
        missed = [r for r in s.results if r.closest is not None]
        if missed:
            closest = config_row(min(missed, key=lambda r: r.closest.miss), exp.slo.statistic)
            closest["miss_ratio"] = _round(min(missed, key=lambda r: r.closest.miss).closest.miss, 3)
        elif s.infeasible:
            c, b = min(s.infeasible, key=lambda x: x[1].miss)
            closest = {"label": c.label, "kind": c.kind, "gpus": c.gpus, "miss": b.reason}
    points = [{"label": r.candidate.label, "kind": r.candidate.kind, "rate": p.rate,
               "output_tok_s_per_gpu": p.figures["output_tok_s_per_gpu"],
               "tok_s_per_user": p.figures["tok_s_per_user"]} for r in s.results for p in r.probes if p.meets]
    slo = exp.slo
    return {
        "model": exp.model.name, "gpu": exp.gpu.type, "budget": budget,
        "workload": {"input_len": exp.workload.dataset.input_len, "output_len": exp.workload.dataset.output_len,
                     "range_ratio": exp.workload.dataset.range_ratio, "arrival": exp.workload.arrival},
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms, "statistic": slo.statistic,
                "attainment": slo.attainment if slo.statistic == "attainment" else None},
        "configs": configs, "best_pd": best_pd, "best_colocated": best_col,
        "verdict": verdict(best_pd, best_col), "closest_miss": closest,
        "pareto": frontier(points), "points": points,
        "considered": s.considered, "pruned": s.pruned, "infeasible": len(s.infeasible),
        "simulated": len(s.results), "probes": s.probes, "seconds": round(s.seconds, 3),
    }


def _stat_label(exp_slo: dict) -> str:
    if exp_slo["statistic"] == "attainment":
        return f"{exp_slo['attainment']:.0%} of requests meet TTFT ≤ {exp_slo['ttft_ms']:g} ms and TPOT ≤ " \
               f"{exp_slo['tpot_ms']:g} ms"
    return f"{exp_slo['statistic']} TTFT ≤ {exp_slo['ttft_ms']:g} ms and {exp_slo['statistic']} TPOT ≤ " \
           f"{exp_slo['tpot_ms']:g} ms"


def format_plan(plan: dict[str, Any], top: int = 10) -> str:
    """The plan as text: ranked table, verdict, counts; emulated figures in virtual time."""
    w = plan["workload"]
    lines = [f"{plan['model']} on {plan['budget']}× {plan['gpu']}, input {w['input_len']} / output {w['output_len']} "
             f"tokens, {w['arrival']} arrivals; SLO: {_stat_label(plan['slo'])}",
             f"{plan['considered']} configurations considered, {plan['infeasible']} infeasible by bounds, "
             f"{plan['pruned']} pruned by capacity bounds, {plan['simulated']} simulated ({plan['probes']} probes) "
             f"in {plan['seconds']:.1f} s", ""]
    cost = any(c.get("usd_per_million_tokens") is not None for c in plan["configs"])
    head = (f"{'':1}{'configuration':<26} {'GPUs':>4} {'max req/s':>9} {'tok/s/GPU':>9} {'tok/s/user':>10} "
            f"{'TTFT ms':>8} {'TPOT ms':>8}" + (f" {'$/M tok':>8}" if cost else ""))
    lines.append(head)
    stat = plan["slo"]["statistic"]
    shown = [c for c in plan["configs"] if c["meets_slo"]][:top]
    for c in shown:
        mark = "*" if c in (plan["best_pd"], plan["best_colocated"]) else " "
        usd = f" {c['usd_per_million_tokens']:>8.2f}" if cost and c["usd_per_million_tokens"] is not None else ""
        lines.append(f"{mark}{c['label']:<26} {c['gpus']:>4} {c['max_rate']:>9.2f} {c['output_tok_s_per_gpu']:>9.1f} "
                     f"{c['tok_s_per_user']:>10.1f} {c['ttft_ms']:>8.0f} {c['tpot_ms']:>8.1f}{usd}")
    if not shown:
        lines.append("  (none)")
    shown_stat = stat if stat.startswith("p") else "mean"
    lines.append(f"TTFT/TPOT: {shown_stat} at the max rate; * = best of its kind; SLO judged on {stat}; "
                 f"tok/s/GPU per GPU used (of {plan['budget']}); emulated, virtual time")
    lines.append("")
    if plan["closest_miss"]:
        m = plan["closest_miss"]
        lines.append(f"No configuration meets the SLO. Closest miss: {m['label']} ({m.get('miss')}).")
    else:
        lines.append(f"Verdict: {plan['verdict']}")
    return "\n".join(lines)
