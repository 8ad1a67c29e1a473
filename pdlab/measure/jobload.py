"""Drive a run's load from inside the cluster (`backend.k8s.load: job`) and bring the records back.

`run_job_load(dep, exp, plans, t0_unix)` starts the load Job (`pdlab.deploy.loadjob`) with every pod's spec
(`pdlab.measure.loadpod.load_spec`, a common start `load_start_delay_s` from now), waits for the pods,
decodes each pod's records from its log, merges them onto the run's clock with their pod index
(`pdlab.measure.load.shares.merge`) and deletes the Job. A pod that failed, was evicted or never finished
is listed in `problems` (its records up to then are kept); the caller marks the run incomplete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pdlab.core.errors import PdlabError
from pdlab.core.schema import REQUEST_SCHEMA
from pdlab.deploy.loadjob import LoadJob, LoadJobTimeout, PodResult, in_cluster_router_url, render_job
from pdlab.measure.load.runner import LevelPlan
from pdlab.measure.load.shares import POD_COLUMN, merge
from pdlab.measure.loadpod import MARK_REC, decode, load_spec

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment


class LoadJobFailed(PdlabError):
    """A load pod failed, was evicted or did not finish; the records it wrote are kept."""


@dataclass
class JobLoad:
    """What the load Job measured: merged records, per-pod logs (without the record lines), problems."""

    table: pa.Table
    logs: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)
    job: dict[str, Any] = field(default_factory=dict)  # the Job as applied (for the run's manifests.yaml)


def budget_s(exp: Experiment, plans: list[LevelPlan]) -> float:
    """How long the load Job may take: start delay, every level's duration (or prompts at its rate) and drain."""
    w = exp.workload
    per = [(p.duration_s or (p.expected_requests() / p.value if p.kind == "rate" else 600.0))
           + min(w.timeout_s, 600.0) + 30 for p in plans]
    return exp.backend.k8s.load_start_delay_s + sum(per) + 120


def collect(results: list[PodResult], t0_unix: float) -> JobLoad:
    """Decode every pod's log into records (merged, with `load_pod`) and note the pods that ended badly."""
    parts, logs, problems, pods = [], {}, [], []
    for r in sorted(results, key=lambda r: r.index):
        start, tables, end = decode(r.log)
        pod = int(start.get("pod", r.index))
        if tables:
            parts.append((pod, float(start["t0_unix"]), pa.concat_tables(tables)))
        logs[r.name] = "\n".join(ln for ln in r.log.splitlines() if not ln.startswith(MARK_REC + " "))
        ok = r.phase == "Succeeded" and bool(end and end.get("done"))
        pods.append({"pod": pod, "name": r.name, "phase": r.phase, "records": sum(t.num_rows for t in tables),
                     "late_s": start.get("late_s"), "ok": ok})
        if not ok:
            why = r.reason or (end or {}).get("reason") or f"ended {r.phase} without finishing its levels"
            problems.append(f"load pod {pod} ({r.name}): {why}")
        elif start.get("late_s"):
            logs[r.name] += f"\nnote: started {start['late_s']:.1f} s after the common start"
    table = merge(parts, t0_unix) if parts else REQUEST_SCHEMA.empty_table().append_column(
        POD_COLUMN, pa.array([], type=pa.int32()))
    return JobLoad(table, logs, problems, pods)


def run_job_load(dep: Any, exp: Experiment, plans: list[LevelPlan], t0_unix: float,
                 note: Callable[[str], None] = lambda _m: None) -> JobLoad:
    """Run every level through the load Job; the Job is deleted whatever happens."""
    import time

    k = exp.backend.k8s
    rest = getattr(dep, "rest", None)
    if rest is None:  # a deployment shared by sweep points (its owner holds the client): connect here
        from pdlab.deploy.k8s import K8sBackend

        rest = K8sBackend(k).rest()
    job = LoadJob(rest, exp, run_id=getattr(dep, "run_id", None), on_event=note, fail_fast_s=k.fail_fast_s)
    spec = load_spec(exp, in_cluster_router_url(exp), plans, k.load_pods,
                     start_unix=time.time() + k.load_start_delay_s)
    try:
        job.start(spec)
        try:
            results = job.wait(k.load_pods, budget_s(exp, plans))
            timeout = ""
        except LoadJobTimeout as e:
            results, timeout = e.results, str(e)
    finally:
        job.close()
    out = collect(results, t0_unix)
    out.job = render_job(exp, spec, getattr(dep, "run_id", None))
    if timeout:
        out.problems.insert(0, timeout)
    missing = set(range(k.load_pods)) - {p["pod"] for p in out.pods}
    if missing:
        out.problems.append(f"load pod(s) {', '.join(map(str, sorted(missing)))} never ran")
    return out


__all__ = ["JobLoad", "LoadJobFailed", "budget_s", "collect", "run_job_load"]
