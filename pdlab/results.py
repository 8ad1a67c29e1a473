"""The results store: `results/<sweep>/<run>/`, written as a run goes, read back as tidy DataFrames.

Files of a run directory (DESIGN.md "Results layout"):
  params.yaml             `pdlab.spec.resolved(exp)` (secrets redacted)
  manifests.yaml          the k8s manifests (multi-document YAML) or the local process table
  provenance.json         pdlab version, git commit, backend, host/cluster info, start/end times, t0_unix
  requests.parquet        one row per request (schema `pdlab.load.runner.REQUEST_SCHEMA`)
  server_metrics.parquet  scraped Prometheus samples, long format (`pdlab.scrape.COLUMNS`)
  summary.json            written LAST and atomically (tmp + os.replace): its presence means complete
  incomplete.json         instead of summary.json when a run crashed or was interrupted: reason, error
  logs/<name>.log         tail of each process/pod log (best effort)

`load_run(path) -> Run`:
  run.requests: REQUEST_SCHEMA columns (level, level_kind, level_value, req_id, warmup, t_sched, t_send,
    t_first, t_end [s from the run's t0], chunk_times [list, s], input_len, max_tokens, prompt_tokens,
    output_tokens, tokens_source, status, ok, error) + derived ttft_ms, tpot_ms, e2e_ms, lag_ms.
  run.summary: one row per level with the `pdlab.metrics.summarize` columns (computed from the requests
    when the run is incomplete). run.server_metrics: time, t, name, role, metric, labels (JSON), value.
  run.params (dict), run.provenance (dict), run.complete (bool), run.incomplete (dict | None).

`load_sweep(path) -> DataFrame`, one row per run × level, for plots. Columns:
  sweep, run, run_dir, complete          where the row comes from
  arm                                    labels['arm'] if set, else the topology label ('2P1D', 'colocated-3x')
  topology_kind ('pd'|'colocated'), ratio ('2P1D' | 'colocated-3x'), prefill, decode, workers (replicas;
  0 where not applicable), tp, gpus, gpu_type, model, dataset, api, arrival, burstiness
  repeat (int labels['repeat'], default 0), label_<key> for every other experiment label
  level, level_kind ('rate'|'concurrency'), rate (target req/s, NaN for closed loop), concurrency (target,
  NaN for open loop)
  every summary figure: requests, completed, failed, warmup_requests, duration_s, total_input_tokens,
  total_output_tokens, request_rate, input_throughput, output_throughput, total_throughput, mean_concurrency,
  {ttft,tpot,itl,e2e}_{mean,p50,p90,p95,p99}_ms, slo_ttft_ms, slo_tpot_ms, good_requests, goodput,
  good_fraction, {request_rate,input_throughput,output_throughput,total_throughput,goodput}_per_gpu,
  dispatch_lag_{p50,p99,max}_ms, scheduled_send_rate, achieved_send_rate, client_bound, client_bound_reason,
  top_error
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

import pdlab
from pdlab.errors import PdlabError
from pdlab.spec import dump_yaml, redact
from pdlab.util import write_atomic

SUMMARY = "summary.json"
INCOMPLETE = "incomplete.json"
SCHEMA_VERSION = 1
_RUN_FILES = ("manifests.yaml", "provenance.json", "requests.parquet", "server_metrics.parquet", SUMMARY,
              INCOMPLETE, "params.yaml")


def now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def dump_json(obj: Any) -> str:
    """JSON with NaN → null (strict JSON for other tools)."""
    return json.dumps(_nan_to_none(obj), indent=2, default=_json_default, allow_nan=False) + "\n"


def _nan_to_none(o: Any) -> Any:
    if isinstance(o, float) and o != o:
        return None
    if isinstance(o, dict):
        return {k: _nan_to_none(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_nan_to_none(v) for v in o]
    if hasattr(o, "item") and not isinstance(o, str):
        return _nan_to_none(o.item())
    return o


def git_commit(where: Path | None = None) -> dict[str, Any]:
    """{'commit': sha | None, 'dirty': bool | None} of the repository holding `where` (pdlab's source)."""
    where = where or Path(pdlab.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def host_info() -> dict[str, Any]:
    return {"hostname": platform.node(), "platform": platform.platform(), "python": sys.version.split()[0],
            "cpus": os.cpu_count()}


class RunWriter:
    """Writes one run directory; `finish(summary)` marks it complete, `abort(reason)` incomplete."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir)
        self.provenance: dict[str, Any] = {}

    def begin(self, params: dict, *, backend: dict | None = None, extra: dict | None = None) -> None:
        """Create the directory (clearing a crashed run's files), write params.yaml and provenance."""
        if (self.dir / SUMMARY).exists():
            raise PdlabError(f"{self.dir} already holds a complete run (summary.json); choose another run name "
                             "or remove the directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in _RUN_FILES:
            (self.dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.dir / ".requests.parts", ignore_errors=True)
        write_atomic(self.dir / "params.yaml", dump_yaml(redact(params)))
        self.provenance = {
            "pdlab_version": pdlab.__version__, **{f"git_{k}": v for k, v in git_commit().items()},
            "backend": backend or {}, "host": host_info(), "argv": list(sys.argv),
            "started_at": now_iso(), "finished_at": None, **(extra or {}),
        }
        self.write_provenance()

    def write_provenance(self, **updates: Any) -> None:
        self.provenance.update(updates)
        write_atomic(self.dir / "provenance.json", dump_json(self.provenance))

    def write_manifests(self, manifests: str | list[dict] | dict | None) -> None:
        """manifests.yaml: a YAML string as is, k8s objects as multi-doc YAML, else {processes: rows}."""
        if manifests is None:
            return
        if isinstance(manifests, str):
            text = manifests
        elif isinstance(manifests, dict):
            text = dump_yaml(redact(manifests))
        elif all(isinstance(m, dict) and "apiVersion" in m and "kind" in m for m in manifests) and manifests:
            text = yaml.safe_dump_all([_redact_k8s(m) for m in manifests], sort_keys=False)
        else:
            text = dump_yaml({"processes": redact(list(manifests))})
        write_atomic(self.dir / "manifests.yaml", text)

    def write_server_metrics(self, df: pd.DataFrame) -> None:
        tmp = self.dir / ".server_metrics.parquet.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, self.dir / "server_metrics.parquet")

    def write_logs(self, logs: dict[str, str]) -> None:
        if not logs:
            return
        d = self.dir / "logs"
        d.mkdir(exist_ok=True)
        for name, text in logs.items():
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
            if not (d / f"{safe}.log").exists():  # the local backend already writes full logs there
                (d / f"{safe}.log").write_text(text)

    def finish(self, summary: dict[str, Any]) -> Path:
        """Write summary.json last and atomically: the run is complete."""
        self.write_provenance(finished_at=now_iso(), complete=True)
        (self.dir / INCOMPLETE).unlink(missing_ok=True)
        summary = {"schema": SCHEMA_VERSION, "complete": True, **summary}
        write_atomic(self.dir / SUMMARY, dump_json(summary))
        return self.dir / SUMMARY

    def abort(self, reason: str, exc: BaseException | None = None, **info: Any) -> Path:
        """Mark the run incomplete (incomplete.json with the reason); what was measured stays on disk."""
        self.write_provenance(finished_at=now_iso(), complete=False)
        doc = {"schema": SCHEMA_VERSION, "complete": False, "reason": reason, "at": now_iso(), **info}
        if exc is not None:
            doc["error_type"] = type(exc).__name__
            doc["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
        write_atomic(self.dir / INCOMPLETE, dump_json(doc))
        return self.dir / INCOMPLETE


def _redact_k8s(obj: dict) -> dict:
    obj = redact(obj)
    if obj.get("kind") == "Secret":
        obj = dict(obj)
        for k in ("data", "stringData"):
            if k in obj:
                obj[k] = {key: "<redacted>" for key in obj[k] or {}}
    return obj


# --------------------------------------------------------------------------- loading


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
    from pdlab.metrics import request_latencies

    d = request_latencies(req)
    req["ttft_ms"], req["tpot_ms"], req["e2e_ms"], req["lag_ms"] = (d["ttft"] * 1e3, d["tpot"] * 1e3,
                                                                    d["e2e"] * 1e3, d["lag"] * 1e3)
    return req


def load_requests(path: Path | str) -> pd.DataFrame:
    """The run's requests.parquet as a DataFrame (empty with the schema's columns if absent)."""
    from pdlab.load.runner import REQUEST_SCHEMA

    p = Path(path) / "requests.parquet"
    if not p.exists():
        return REQUEST_SCHEMA.empty_table().to_pandas()
    return pd.read_parquet(p)


def load_run(path: Path | str) -> Run:
    """Load one run directory into tidy DataFrames (see the module docstring for the columns)."""
    p = Path(path)
    if not (p / "params.yaml").exists():
        raise PdlabError(f"{p} is not a pdlab run directory (no params.yaml)")
    params = yaml.safe_load((p / "params.yaml").read_text()) or {}
    meta = _read_json(p / SUMMARY)
    incomplete = _read_json(p / INCOMPLETE) if meta is None else None
    if meta is None and incomplete is None:
        incomplete = {"reason": "no summary.json (still running, or killed before it could mark itself)"}
    req = _with_derived(load_requests(p))
    sm = p / "server_metrics.parquet"
    server = pd.read_parquet(sm) if sm.exists() else pd.DataFrame(columns=["time", "t", "name", "role", "metric",
                                                                           "labels", "value"])
    if meta is not None:
        summary = pd.DataFrame(meta.get("levels") or [])
    else:
        from pdlab.metrics import summarize

        slo = params.get("slo") or {}
        summary = summarize(req, slo_ttft_ms=slo.get("ttft_ms"), slo_tpot_ms=slo.get("tpot_ms"),
                            gpus=_gpus(params)) if len(req) else pd.DataFrame()
        meta = {"complete": False}
    return Run(p, params, summary, req, server, _read_json(p / "provenance.json") or {}, meta, incomplete)


def _gpus(params: dict) -> int | None:
    t = params.get("topology") or {}
    try:
        if t.get("kind") == "pd":
            return t["prefill"]["replicas"] * t["prefill"]["tp"] + t["decode"]["replicas"] * t["decode"]["tp"]
        return t["worker"]["replicas"] * t["worker"]["tp"]
    except (KeyError, TypeError):
        return None


def run_columns(params: dict, labels: dict | None = None) -> dict[str, Any]:
    """The per-run columns of load_sweep (arm, topology, ratio, GPUs, workload, repeat, labels)."""
    t = params.get("topology") or {}
    w = params.get("workload") or {}
    kind = t.get("kind", "pd")
    labels = dict(labels if labels is not None else params.get("labels") or {})
    if kind == "pd":
        p, d = t.get("prefill", {}), t.get("decode", {})
        ratio = f"{p.get('replicas')}P{d.get('replicas')}D"
        cols = {"prefill": p.get("replicas", 0), "decode": d.get("replicas", 0), "workers": 0, "tp": p.get("tp")}
    else:
        wk = t.get("worker", {})
        ratio = f"colocated-{wk.get('replicas')}x"
        cols = {"prefill": 0, "decode": 0, "workers": wk.get("replicas", 0), "tp": wk.get("tp")}
    try:
        repeat = int(labels.pop("repeat", 0))
    except (TypeError, ValueError):
        repeat = 0
    arm = labels.pop("arm", None) or ratio
    out = {"arm": arm, "topology_kind": kind, "ratio": ratio, **cols, "gpus": _gpus(params),
           "gpu_type": (params.get("gpu") or {}).get("type"), "model": (params.get("model") or {}).get("name"),
           "dataset": (w.get("dataset") or {}).get("kind"), "api": w.get("api"), "arrival": w.get("arrival"),
           "burstiness": w.get("burstiness"), "repeat": repeat}
    out.update({f"label_{k}": v for k, v in labels.items()})
    return out


def find_runs(path: Path | str) -> list[Path]:
    """Run directories (holding params.yaml) under `path`, or `path` itself; sorted."""
    p = Path(path)
    if (p / "params.yaml").exists():
        return [p]
    return sorted(q.parent for q in p.rglob("params.yaml") if not any(s.startswith(".") for s in q.parts[-3:-1]))


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
        params = yaml.safe_load((rd / "params.yaml").read_text()) or {}
        if meta is not None:
            levels = meta.get("levels") or []
        else:
            levels = load_run(rd).summary.to_dict("records")
        base = {"sweep": rd.parent.name, "run": rd.name, "run_dir": str(rd), "complete": meta is not None}
        base.update(run_columns(params))
        for lv in levels:
            row = dict(base)
            row.update({k: v for k, v in lv.items() if k not in ("gpus",)})
            row["rate"] = lv.get("target_rate")
            row["concurrency"] = lv.get("target_concurrency")
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
