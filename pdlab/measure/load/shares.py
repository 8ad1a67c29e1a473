"""Splitting a run's load over N load pods, and putting their records back together.

`share_plan(plan, pod, pods)`: pod `pod` of `pods` drives an independent share of a level: rate / N with its
own seed (independent Poisson streams of rate r/N superpose to one Poisson stream of rate r, so the offered
load keeps its distribution and total), concurrency and prompt counts split as evenly as integers allow,
and a prompt range of its own. Only Poisson arrivals split this way (the superposition of gamma or
constant streams is neither), so other arrivals need one pod.
`merge(tables)`: each pod's records, with times moved from the pod's clock (its own t0, reported as unix
time) to the run's, and a `load_pod` column. `per_pod_client_bound(records, summary)`: a level is
client-bound when any pod's own dispatch was (judged on that pod's records alone).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import pyarrow as pa

from pdlab.core.errors import SpecError
from pdlab.core.stats import client_health
from pdlab.measure.load.runner import LevelPlan

POD_COLUMN = "load_pod"
SEED_STRIDE = 7919  # pod seeds: plan.seed + STRIDE × (pod + 1), distinct from the single-client seed
TIME_COLUMNS = ("t_sched", "t_send", "t_first", "t_end")


def check_splittable(arrival: str, pods: int) -> None:
    """Raise SpecError unless `pods` load pods can keep the arrival process."""
    if pods > 1 and arrival != "poisson":
        raise SpecError(f"backend.k8s.load_pods: {pods} splits the load into independent streams, which keeps "
                        f"Poisson arrivals Poisson but not '{arrival}' ones: use workload.arrival: poisson, or "
                        "load_pods: 1")


def _part(n: int, pod: int, pods: int) -> int:
    return n // pods + (1 if pod < n % pods else 0)


def share_plan(plan: LevelPlan, pod: int, pods: int) -> LevelPlan | None:
    """Pod `pod`'s share of a level (None when it gets nothing to do, e.g. concurrency < pods)."""
    if pods == 1:
        return plan
    value = plan.value / pods if plan.kind == "rate" else float(_part(int(plan.value), pod, pods))
    if value <= 0:
        return None
    num = _part(plan.num_prompts, pod, pods) if plan.num_prompts else None
    if plan.num_prompts and not num:
        return None
    span = plan.expected_requests() or 100_000
    return dataclasses.replace(plan, value=value, num_prompts=num, warmup=_part(plan.warmup, pod, pods),
                               seed=plan.seed + SEED_STRIDE * (pod + 1), first_prompt=plan.first_prompt + pod * span,
                               max_inflight=max(1, _part(plan.max_inflight, pod, pods)))


def merge(parts: list[tuple[int, float, pa.Table]], t0_unix: float) -> pa.Table:
    """Records of each (pod, pod's t0 unix, table) on the run's clock, with a `load_pod` column; by send time."""
    tables = []
    for pod, pod_t0_unix, table in parts:
        shift = pod_t0_unix - t0_unix
        cols = {}
        for name in table.column_names:
            col = table[name]
            if name in TIME_COLUMNS:
                col = pa.compute.add(col, shift)
            elif name == "chunk_times":
                col = pa.array([None if v is None else [x + shift for x in v] for v in col.to_pylist()],
                               type=col.type)
            cols[name] = col
        cols[POD_COLUMN] = pa.array([pod] * table.num_rows, type=pa.int32())
        tables.append(pa.table(cols))
    if not tables:
        return pa.table({POD_COLUMN: pa.array([], type=pa.int32())})
    out = pa.concat_tables(tables, promote_options="default")
    return out.sort_by([("level", "ascending"), ("t_send", "ascending")])


def per_pod_client_bound(records: pd.DataFrame, summary: pd.DataFrame) -> pd.DataFrame:
    """The summary with `client_bound` / `client_bound_reason` judged per load pod (any pod bound → bound)."""
    if POD_COLUMN not in records or summary.empty:
        return summary
    out = summary.copy()
    from pdlab.core.stats import request_latencies

    d = request_latencies(records)
    for i, row in out.iterrows():
        lv = d[d["level"] == row["level"]]
        reasons = []
        for pod, part in lv.groupby(POD_COLUMN):
            h: dict[str, Any] = client_health(part, str(row["level_kind"]))
            if h["client_bound"]:
                reasons.append(f"load pod {pod}: {h['client_bound_reason']}")
        out.at[i, "client_bound"] = bool(reasons)
        out.at[i, "client_bound_reason"] = "; ".join(reasons)
    return out


__all__ = ["POD_COLUMN", "check_splittable", "merge", "per_pod_client_bound", "share_plan"]
