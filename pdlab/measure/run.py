"""`pdlab run`: deploy an experiment, drive every load level, scrape, save, tear down.

`run_experiment(exp, ...)` is what the CLI, notebooks and sweeps call. It writes `results/<sweep>/<run>/`
as it goes (see `pdlab.analysis.results`): records spill to disk during a level, so Ctrl-C, a crash or a lost
deployment leaves the requests measured so far, the scraped server metrics and an `incomplete.json` with
the reason; the exception is then re-raised. Only a run that finishes every level gets `summary.json`.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from pdlab.core.errors import PdlabError
from pdlab.core.schema import LOGS, timestamped
from pdlab.core.stats import summarize
from pdlab.deploy.loadjob import image as load_image
from pdlab.experiment.arm import arm_of
from pdlab.experiment.spec import resolved
from pdlab.experiment.topology import build
from pdlab.measure.cachehit import cache_hit_by_role
from pdlab.measure.jobload import LoadJobFailed, run_job_load
from pdlab.measure.load.kinds import make_dataset
from pdlab.measure.load.runner import LevelPlan, LevelStats, RecordSink, run_level_sync
from pdlab.measure.load.shares import check_splittable, per_pod_client_bound
from pdlab.measure.lost import lost_workers
from pdlab.measure.progress import PROGRESS_LOG, Eta, LineReporter, reporter_for
from pdlab.measure.prometheus import PrometheusSource, source_for
from pdlab.measure.scrape import Scraper
from pdlab.measure.writer import RunWriter

if TYPE_CHECKING:
    from pdlab.deploy.base import Deployment
    from pdlab.experiment.spec import Experiment

EXIT_LEVEL_FAILED = 3  # `pdlab run`'s exit code when a level is marked failed (2 is bad input, 130 Ctrl-C)


def default_run_name(exp: Experiment) -> str:
    """'<topology label>-<UTC timestamp>', e.g. '2p1d-20250101-120000'."""
    return timestamped(exp.topology.label.lower())


def level_plans(exp: Experiment) -> list[LevelPlan]:
    """The experiment's load levels as runner plans; each level gets its own deterministic prompt range."""
    w = exp.workload
    plans, first = [], 0
    for i, (kind, value) in enumerate(w.levels):
        plan = LevelPlan(index=i, kind=kind, value=value, arrival=w.arrival,
                         burstiness=w.burstiness if w.arrival == "gamma" else 1.0, duration_s=w.duration_s,
                         num_prompts=w.num_prompts, warmup=w.warmup, max_inflight=w.max_inflight, seed=w.seed,
                         first_prompt=first, drain_s=w.drain_s or w.timeout_s)
        n = plan.expected_requests()
        first += n if n else 100_000
        plans.append(plan)
    return plans


def _collect_logs(dep: Deployment | None, tail: int = 200) -> dict[str, str]:
    out: dict[str, str] = {}
    if dep is None:
        return out
    with contextlib.suppress(Exception):
        for e in dep.endpoints:
            with contextlib.suppress(Exception):
                out[e.name] = dep.logs(e.name, tail=tail)
    return out


def run_experiment(exp: Experiment, *, results: Path | str = "results", sweep: str | None = None,
                   run_name: str | None = None, progress: bool | str | LineReporter = True,
                   deployment: Deployment | None = None, command: str | None = None) -> Path:
    """Deploy (unless `deployment` is given), run every load level, save results; returns the run directory.

    `progress`: True a live bar on a terminal (plain lines otherwise), False only `logs/progress.log`, or a
    reporter (`pdlab.measure.progress`). `command`: the command line recorded in provenance (default: this
    process's own when it is the `pdlab` CLI).

    On Ctrl-C or any error the records gathered so far are saved, `incomplete.json` says why, the deployment
    pdlab started is torn down, and the exception is re-raised."""
    run_name = run_name or default_run_name(exp)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run_name):
        raise PdlabError(f"run name '{run_name}' must be letters, digits, '.', '_' or '-'")
    run_dir = Path(results) / (sweep or exp.name) / run_name
    topo = build(exp)
    plans = level_plans(exp)
    # read (and check) the prompts before anything is written or deployed: a bad trace or JSONL file fails here
    dataset = make_dataset(exp.workload.dataset, seed=exp.workload.seed,
                           context_len=exp.model.architecture().max_position_embeddings)
    dataset.prepare(sum(p.expected_requests() for p in plans) or 1000)
    writer = RunWriter(run_dir)
    backend_info = {"kind": exp.backend.kind, "engine": exp.backend.engine,
                    "deployment": "pdlab" if deployment is None
                    else "shared" if getattr(deployment, "shared", None) else "external",
                    "gpu_profile": gpu_profile_info(exp)}
    t0, t0_unix = time.perf_counter(), time.time()
    try:
        writer.begin(resolved(exp), backend=backend_info, extra={"t0_unix": t0_unix, "run": run_name,
                                                                "sweep": sweep or exp.name,
                                                                "command": command or _own_command(),
                                                                "seed": exp.workload.seed})
    except OSError as e:  # before anything is deployed: nothing to tear down
        raise PdlabError(f"results directory: cannot write the run directory {run_dir} ({e.strerror or e}); "
                         "give --results a writable directory") from None
    sink = writer.record_sink()
    scraper: Scraper | None = None
    prom = source_for(exp)
    job = exp.backend.kind == "k8s" and exp.backend.k8s.load == "job"
    job_written = False  # the load Job's records went to requests.parquet already
    dep: Deployment | None = deployment
    done_levels: list[int] = []
    level_stats: dict[int, LevelStats] = {}
    stack = contextlib.ExitStack()
    prog = reporter_for(progress)
    if prog.log is None:
        prog.log = run_dir / LOGS / PROGRESS_LOG
    eta = Eta([_scheduled_s(p) for p in plans])
    with stack, prog:
        try:
            if job:
                check_splittable(exp.workload.arrival, exp.backend.k8s.load_pods)
            if prom is not None:
                prom.check()  # before anything is deployed
            if dep is None:
                from pdlab.deploy.registry import get_backend

                prog.note(f"deploying {topo.label} ({exp.backend.kind}) …")
                dep = get_backend(exp).deploy(exp, run_dir=run_dir, run_id=f"{sweep or exp.name}-{run_name}")
                stack.enter_context(dep)  # guaranteed teardown (also on SIGTERM)
            writer.write_manifests(dep.manifests())
            info = dep.cluster_info()
            writer.write_provenance(router_url=dep.router_url, deployment=dep.table(),
                                    **({"cluster": info} if info else {}), **_deployment_facts(dep))
            if prom is not None:
                prom.use(dep.endpoints, exp.metrics.file_sd)
                writer.write_provenance(metrics_source=prom.describe())
                prom.wait_for_targets(exp.metrics.wait_s)
            else:
                writer.write_provenance(metrics_source={"kind": "scrape", "interval_s": exp.metrics.step_s})
                scraper = Scraper(dep.endpoints, interval_s=exp.metrics.step_s, t0=t0).start()
            if job:
                prog.note(f"running the load in the cluster: {exp.backend.k8s.load_pods} load pod(s) …")
                load = run_job_load(dep, exp, plans, t0_unix, prog.note)
                n = writer.write_requests_table(load.table)
                job_written = True
                writer.write_manifests([*dep.manifests(), load.job])
                writer.write_logs(load.logs)
                writer.write_provenance(load_job={"pods": load.pods, "image": load_image(exp)})
                if load.problems:
                    raise LoadJobFailed("; ".join(load.problems) + f" ({n} records kept)")
                done_levels.extend(p.index for p in plans)
            for plan in [] if job else plans:
                unit = "req/s" if plan.kind == "rate" else "concurrent"
                desc = f"level {plan.index + 1}/{len(plans)}: {plan.value:g} {unit}"
                prog.level_start(desc, plan.scheduled_requests(), eta.remaining(plan.index))
                started = time.perf_counter()
                stats = level_stats[plan.index] = run_level_sync(
                    dep.router_url, dataset, plan, sink, t0=t0, api=exp.workload.api, model=exp.model.name,
                    timeout_s=exp.workload.timeout_s, on_tick=prog.tick,
                    client_kwargs={"ignore_eos": exp.workload.ignore_eos})
                eta.finished(_scheduled_s(plan), time.perf_counter() - started)
                done_levels.append(plan.index)
                prog.level_end(desc, stats, time.perf_counter() - started, eta.remaining(plan.index + 1),
                               _level_summary(sink, plan, exp, topo.gpus) if prog.wants_summary else None)
            frame = _server_metrics(scraper, prom, t0_unix)
            writer.write_server_metrics(frame)
            if not job:
                n = writer.write_requests(sink)
            writer.write_logs(_collect_logs(dep))
            records = load.table.to_pandas() if job else sink.table().to_pandas()
            summary = summarize(records, slo_ttft_ms=exp.slo.ttft_ms, slo_tpot_ms=exp.slo.tpot_ms,
                                gpus=topo.gpus, max_failed_share=exp.workload.max_failed_share)
            summary = per_pod_client_bound(records, summary) if job else with_level_stats(summary, level_stats, plans)
            sink.close()
            writer.finish({**_summary_doc(exp, run_name, sweep, t0_unix, summary, n),
                           "cache_hit_rate": cache_hit_by_role(frame), "workers_lost": lost_workers(frame)})
        except BaseException as e:
            prog.note(f"run stopped: {type(e).__name__}: {e}; saving what was measured to {run_dir}")
            _save_partial(writer, sink, scraper, dep, e, done_levels, len(plans), prom, t0_unix, job_written)
            raise
    return run_dir


def gpu_profile_info(exp: Experiment) -> dict[str, Any]:
    """Which GPU profile modelled this run (emulated workers) — datasheet defaults, or calibrated where and how."""
    prof = exp.gpu.performance_profile(exp.model.name)
    return {"name": prof.name, "file": exp.gpu.profile, "describe": prof.describe(),
            "provenance": prof.provenance.model_dump(exclude_none=True),
            "used_by": "emulator" if exp.backend.engine == "emulator" else "plan only (real SGLang workers)"}


def _scheduled_s(plan: LevelPlan) -> float | None:
    """How long a level is scheduled to send for (None: bounded by a prompt count at unknown speed)."""
    if plan.duration_s:
        return float(plan.duration_s)
    if plan.kind == "rate" and plan.num_prompts:
        return (plan.num_prompts + plan.warmup) / plan.value
    return None


def _level_summary(sink: Any, plan: LevelPlan, exp: Experiment, gpus: int) -> dict | None:
    """The summary row of one finished level (for live plots), from the records so far."""
    with contextlib.suppress(Exception):
        df = sink.table().to_pandas()
        df = df[df["level"] == plan.index]
        if len(df):
            row = summarize(df, slo_ttft_ms=exp.slo.ttft_ms, slo_tpot_ms=exp.slo.tpot_ms, gpus=gpus)
            return row.iloc[0].to_dict() if len(row) else None
    return None


def _own_command() -> str:
    """This process's command line when it is the pdlab CLI ('pdlab run params.yaml …'), else ''."""
    argv0 = Path(sys.argv[0]).name if sys.argv else ""
    if argv0 in ("pdlab", "__main__.py"):
        return " ".join(["pdlab", *sys.argv[1:]])
    return ""


def with_level_stats(summary: pd.DataFrame, stats: dict[int, LevelStats], plans: list[LevelPlan]) -> pd.DataFrame:
    """Add each level's not_sent / drain_cancelled counts; a level that could not send its schedule is client-bound."""
    out = summary.copy()
    if out.empty:
        return out
    out["not_sent"] = [stats[i].not_sent if i in stats else 0 for i in out["level"]]
    out["drain_cancelled"] = [stats[i].drain_cancelled if i in stats else 0 for i in out["level"]]
    by_index = {p.index: p for p in plans}
    for row, i in enumerate(out["level"]):
        st = stats.get(i)
        if st is None or not st.not_sent:
            continue
        plan = by_index.get(i)
        note = (f"{st.not_sent} of {st.sent + st.not_sent} scheduled requests not sent by the level's end "
                f"({plan.duration_s if plan and plan.duration_s else plan.span_s() if plan else 0:g} s + grace)")
        reason = out.at[row, "client_bound_reason"] if "client_bound_reason" in out else ""
        out.at[row, "client_bound"] = True
        out.at[row, "client_bound_reason"] = f"{reason}; {note}" if reason else note
    return out


def failed_levels(summary: pd.DataFrame) -> list[int]:
    """Indices of the levels marked failed (too large a share of failed requests)."""
    if summary.empty or "level_failed" not in summary:
        return []
    return [int(i) for i, f in zip(summary["level"], summary["level_failed"], strict=True) if bool(f)]


def _summary_doc(exp: Experiment, run_name: str, sweep: str | None, t0_unix: float, summary: pd.DataFrame,
                 n: int) -> dict[str, Any]:
    topo = build(exp)
    return {"run": run_name, "sweep": sweep or exp.name, "experiment": exp.name, "labels": dict(exp.labels),
            "arm": arm_of(exp).to_dict(),
            "topology": {"kind": topo.kind, "label": topo.label, "ratio": exp.topology.label, "gpus": topo.gpus,
                         "roles": topo.describe()},
            "gpu_type": exp.gpu.type, "gpu_profile": gpu_profile_info(exp), "model": exp.model.name,
            "slo": exp.slo.model_dump(), "t0_unix": t0_unix,
            "requests": n, "max_failed_share": exp.workload.max_failed_share,
            "failed_levels": failed_levels(summary), "levels": summary.to_dict("records")}


def _deployment_facts(dep: Deployment) -> dict[str, Any]:
    """Cold-start times and, for a deployment shared by sweep points, which runs share it."""
    out: dict[str, Any] = {}
    cold = dep.cold_start()
    if cold:
        out["cold_start"] = cold
    shared = getattr(dep, "shared", None)
    if shared:
        out["shared_deployment"] = shared
    return out


def _server_metrics(scraper: Scraper | None, prom: PrometheusSource | None, t0_unix: float,
                    final: bool = True) -> pd.DataFrame:
    """The run's server metrics: the direct scraper's samples, or Prometheus' series over the run's window
    (once it has scraped every pod after the last level, so the last state is in)."""
    if prom is not None:
        end = time.time()
        if final:
            end = prom.settle(end)
        return prom.frame(t0_unix, end, t0_unix=t0_unix)
    assert scraper is not None
    scraper.stop(final=final)
    return scraper.frame()


def _save_partial(writer: RunWriter, sink: RecordSink, scraper: Scraper | None, dep: Deployment | None,
                  exc: BaseException, done_levels: list[int], n_levels: int, prom: PrometheusSource | None = None,
                  t0_unix: float = 0.0, requests_written: bool = False) -> None:
    """Best effort: keep every record and sample gathered so far and write incomplete.json."""
    reason = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"
    n = 0
    with contextlib.suppress(Exception):
        if scraper is not None or prom is not None:
            writer.write_server_metrics(_server_metrics(scraper, prom, t0_unix, final=False))
    with contextlib.suppress(Exception):
        n = writer.requests_count() if requests_written else writer.write_requests(sink)
        sink.close()
    with contextlib.suppress(Exception):
        writer.write_logs(_collect_logs(dep))
    with contextlib.suppress(Exception):
        writer.abort(reason, exc, levels_completed=len(done_levels), levels_total=n_levels, requests_saved=n)
