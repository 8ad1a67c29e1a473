"""The results store: `results/<sweep>/<run>/`, written as a run goes, read back as tidy DataFrames.

Files of a run directory (`pdlab.core.schema`; docs/architecture.md, "The path of the data"):
  params.yaml             `pdlab.experiment.spec.resolved(exp)` (secrets redacted)
  manifests.yaml          the k8s manifests (multi-document YAML) or the local process table
  provenance.json         pdlab version, git commit, backend, host/cluster info, start/end times, t0_unix
  requests.parquet        one row per request (schema `pdlab.measure.load.runner.REQUEST_SCHEMA`)
  server_metrics.parquet  scraped Prometheus samples, long format (`pdlab.measure.scrape.COLUMNS`)
  summary.json            written LAST and atomically (tmp + os.replace): its presence means complete
  incomplete.json         instead of summary.json when a run crashed or was interrupted: reason, error
  logs/<name>.log         tail of each process/pod log (best effort)

`load_run(path) -> Run`:
  run.requests: REQUEST_SCHEMA columns (level, level_kind, level_value, req_id, warmup, t_sched, t_send,
    t_first, t_end [s from the run's t0], chunk_times [list, s], input_len, max_tokens, prompt_tokens,
    output_tokens, tokens_source, status, ok, error) + derived ttft_ms, tpot_ms, e2e_ms, lag_ms.
  run.summary: one row per level with the `pdlab.core.stats.summarize` columns (computed from the requests
    when the run is incomplete). run.server_metrics: time, t, name, role, metric, labels (JSON), value.
  run.params (dict), run.provenance (dict), run.complete (bool), run.incomplete (dict | None).

`load_sweep(path) -> DataFrame`, one row per run × level, for plots. Columns:
  sweep, run, run_dir, complete          where the row comes from
  arm                                    labels['arm'] if set, else the topology label ('2P1D', 'colocated-3x')
  topology_kind ('pd'|'colocated'), ratio ('2P1D' | 'colocated-3x'), prefill, decode, workers (replicas;
  0 where not applicable), tp, gpus, gpu_type, gpu_profile (which GPU profile modelled it), model, dataset,
  api, arrival, burstiness
  repeat (int labels['repeat'], default 0), label_<key> for every other experiment label
  level, level_kind ('rate'|'concurrency'), rate (target req/s, NaN for closed loop), concurrency (target,
  NaN for open loop), level_duration_s, scheduled_requests, offered_rate (requests scheduled ÷ the level's
  duration: the rate actually offered), slo_attainment (the params' threshold, NaN if unset)
  every summary figure: requests, completed, failed, warmup_requests, duration_s, total_input_tokens,
  total_output_tokens, request_rate, input_throughput, output_throughput, total_throughput, mean_concurrency,
  {ttft,tpot,itl,e2e}_{mean,p50,p90,p95,p99}_ms, slo_ttft_ms, slo_tpot_ms, good_requests, goodput,
  good_fraction, {request_rate,input_throughput,output_throughput,total_throughput,goodput}_per_gpu,
  dispatch_lag_{p50,p99,max}_ms, scheduled_send_rate, achieved_send_rate, client_bound, client_bound_reason,
  top_error
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pdlab.core.errors import PdlabError
from pdlab.core.schema import (
    INCOMPLETE,
    PARAMS,
    PROVENANCE,
    REQUEST_SCHEMA,
    REQUESTS,
    SERVER_METRIC_COLUMNS,
    SERVER_METRICS,
    SUMMARY,
    is_run_dir,
)
from pdlab.core.stats import request_latencies, summarize
from pdlab.experiment.arm import Arm, arm_of
from pdlab.experiment.loader import experiment_from_dict


@dataclass
class Run:
    """One run directory, loaded: tidy DataFrames plus the params, provenance and completion state."""

    path: Path
    params: dict
    summary: pd.DataFrame
    requests: pd.DataFrame
    server_metrics: pd.DataFrame
    provenance: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    incomplete: dict | None = None

    @property
    def complete(self) -> bool:
        return self.incomplete is None and bool(self.meta.get("complete"))

    @property
    def name(self) -> str:
        return self.path.name

    def _repr_html_(self) -> str:
        state = "complete" if self.complete else f"INCOMPLETE: {(self.incomplete or {}).get('reason', '?')}"
        return f"<p><b>{self.path}</b> ({state})</p>" + self.summary.to_html(index=False, max_cols=20)


def _read_json(p: Path) -> dict | None:
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as e:
        raise PdlabError(f"{p}: unreadable ({e}); the run may be corrupt — re-run it") from None


def _with_derived(req: pd.DataFrame) -> pd.DataFrame:
    if req.empty:
        for c in ("ttft_ms", "tpot_ms", "e2e_ms", "lag_ms"):
            req[c] = pd.Series(dtype=float)
        return req
    d = request_latencies(req)
    req["ttft_ms"], req["tpot_ms"], req["e2e_ms"], req["lag_ms"] = (d["ttft"] * 1e3, d["tpot"] * 1e3,
                                                                    d["e2e"] * 1e3, d["lag"] * 1e3)
    return req


def load_requests(path: Path | str) -> pd.DataFrame:
    """The run's requests.parquet as a DataFrame (empty with the schema's columns if absent)."""
    p = Path(path) / REQUESTS
    if not p.exists():
        return REQUEST_SCHEMA.empty_table().to_pandas()
    return pd.read_parquet(p)


def load_run(path: Path | str) -> Run:
    """Load one run directory into tidy DataFrames (see the module docstring for the columns)."""
    p = Path(path)
    if not is_run_dir(p):
        raise PdlabError(f"{p} is not a pdlab run directory (no {PARAMS})")
    params = yaml.safe_load((p / PARAMS).read_text()) or {}
    meta = _read_json(p / SUMMARY)
    incomplete = _read_json(p / INCOMPLETE) if meta is None else None
    if meta is None and incomplete is None:
        incomplete = {"reason": "no summary.json (still running, or killed before it could mark itself)"}
    req = _with_derived(load_requests(p))
    sm = p / SERVER_METRICS
    server = pd.read_parquet(sm) if sm.exists() else pd.DataFrame(columns=SERVER_METRIC_COLUMNS)
    if meta is not None:
        summary = pd.DataFrame(meta.get("levels") or [])
    else:
        slo = params.get("slo") or {}
        arm = run_arm(params)
        share = (params.get("workload") or {}).get("max_failed_share")
        summary = summarize(req, slo_ttft_ms=slo.get("ttft_ms"), slo_tpot_ms=slo.get("tpot_ms"),
                            gpus=arm.gpus if arm else None,
                            **({"max_failed_share": share} if share is not None else {})) if len(req) else pd.DataFrame()
        meta = {"complete": False}
    return Run(p, params, summary, req, server, _read_json(p / PROVENANCE) or {}, meta, incomplete)


def run_arm(params: dict, summary: dict | None = None) -> Arm | None:
    """The run's Arm: as stored in summary.json, else computed from its params (None if they no longer
    validate, e.g. a run written by an older pdlab without an `arm` in its summary)."""
    if summary and summary.get("arm"):
        return Arm.from_dict(summary["arm"])
    try:
        return arm_of(experiment_from_dict(params))
    except PdlabError:
        return None


def run_columns(params: dict, summary: dict | None = None) -> dict[str, Any]:
    """The per-run columns of load_sweep: the Arm's fields, workload, repeat, other labels and the prefix-cache
    hit rate per role (`cache_hit_<role>`, from summary.json)."""
    w = params.get("workload") or {}
    labels = dict(params.get("labels") or {})
    labels.pop("arm", None)
    try:
        repeat = int(labels.pop("repeat", 0))
    except (TypeError, ValueError):
        repeat = 0
    arm = run_arm(params, summary)
    cols: dict[str, Any] = {"arm": None, "topology_kind": None, "ratio": None, "gpus": None}
    if arm is not None:
        cols = {"arm": arm.label, "topology_kind": arm.kind, "ratio": arm.ratio, "prefill": arm.prefill,
                "decode": arm.decode, "workers": arm.workers, "tp": arm.tp, "prefill_tp": arm.prefill_tp,
                "decode_tp": arm.decode_tp, "gpus": arm.gpus}
    out = {**cols, "gpu_type": (params.get("gpu") or {}).get("type"),
           "gpu_profile": ((summary or {}).get("gpu_profile") or {}).get("describe")
           or (params.get("gpu") or {}).get("profile") or (params.get("gpu") or {}).get("type"),
           "model": (params.get("model") or {}).get("name"), "dataset": (w.get("dataset") or {}).get("kind"),
           "api": w.get("api"), "arrival": w.get("arrival"), "burstiness": w.get("burstiness"), "repeat": repeat}
    out.update({f"label_{k}": v for k, v in labels.items()})
    out.update({f"cache_hit_{k}": v for k, v in ((summary or {}).get("cache_hit_rate") or {}).items()})
    return out


def find_runs(path: Path | str) -> list[Path]:
    """Run directories (holding params.yaml) under `path`, or `path` itself; sorted."""
    p = Path(path)
    if is_run_dir(p):
        return [p]
    return sorted(q.parent for q in p.rglob(PARAMS) if not any(s.startswith(".") for s in q.parts[-3:-1]))


def offered_columns(level: dict, params: dict) -> dict[str, Any]:
    """The level's scheduled duration, the offered rate actually scheduled (requests scheduled ÷ that
    duration: a seeded Poisson schedule offers more or less than its nominal rate), and the SLO attainment
    threshold of the params (`slo.attainment`, absent: NaN)."""
    w = params.get("workload") or {}
    slo = params.get("slo") or {}
    dur = w.get("duration_s")
    scheduled = sum(int(level.get(k) or 0) for k in ("requests", "warmup_requests", "not_sent"))
    rate = level.get("target_rate")
    offered = scheduled / dur if dur and rate is not None and level.get("level_kind", "rate") == "rate" else None
    return {"level_duration_s": dur, "scheduled_requests": scheduled,
            "offered_rate": offered if offered is not None else rate,
            "slo_attainment": slo.get("attainment")}


def load_sweep(path: Path | str, *, include_incomplete: bool = False) -> pd.DataFrame:
    """One tidy row per run × level across every run under `path` (see the module docstring)."""
    rows = []
    root = Path(path)
    if not root.exists():
        raise PdlabError(f"{root}: no such results directory")
    for rd in find_runs(root):
        meta = _read_json(rd / SUMMARY)
        if meta is None and not include_incomplete:
            continue
        params = yaml.safe_load((rd / PARAMS).read_text()) or {}
        if meta is not None:
            levels = meta.get("levels") or []
        else:
            levels = load_run(rd).summary.to_dict("records")
        base = {"sweep": rd.parent.name, "run": rd.name, "run_dir": str(rd), "complete": meta is not None}
        base.update(run_columns(params, meta))
        for lv in levels:
            row = dict(base)
            row.update({k: v for k, v in lv.items() if k not in ("gpus",)})
            row["rate"] = lv.get("target_rate")
            row["concurrency"] = lv.get("target_concurrency")
            row.update(offered_columns(lv, params))
            rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    for c in df.columns:  # JSON null → NaN for numeric columns
        if df[c].dtype == object and c not in ("client_bound_reason", "top_error"):
            conv = pd.to_numeric(df[c], errors="coerce")
            if conv.notna().sum() == df[c].notna().sum() and df[c].notna().any():
                df[c] = conv
    order = ["sweep", "run", "arm", "topology_kind", "ratio", "gpus", "repeat", "level", "level_kind", "rate",
             "concurrency"]
    return df[[c for c in order if c in df.columns] + [c for c in df.columns if c not in order]]
