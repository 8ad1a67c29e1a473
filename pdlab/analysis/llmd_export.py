"""`pdlab export RUN_OR_SWEEP --format llm-d`: every run's levels as llm-d-benchmark Benchmark Reports (v0.2).

One report per run × load level (llm-d's "stage"): `run` (uid, eid shared by a run's levels, times),
`scenario.stack` (an `inference_engine` component per worker role, a `generic` one for the router),
`scenario.load` (pdlab's load generator, sequence lengths, rate or concurrency), and `results`:
`request_performance.aggregate` computed from the level's measured requests (TTFT/E2E in ms, TPOT/ITL/NTPOT in
ms/token, token and request rates) and `observability.pod_startup_times` from the run's cold-start record.
Each report is validated against `pdlab.analysis.llmd_schema.schema()` before it is written.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd
import yaml

import pdlab
from pdlab.analysis.llmd_schema import PERCENTILES, SOURCE, VERSION, schema
from pdlab.analysis.results import Run, find_runs, load_run
from pdlab.core.errors import PdlabError
from pdlab.core.fsutil import write_atomic
from pdlab.core.stats import itl_values

_PCT = {"p0p1": 0.1, "p1": 1, "p5": 5, "p10": 10, "p25": 25, "p50": 50, "p75": 75, "p90": 90, "p95": 95,
        "p99": 99, "p99p9": 99.9}
ROLE_KIND = {"prefill": "prefill", "decode": "decode", "worker": "replica"}


def statistics(values: Any, units: str, scale: float = 1.0) -> dict[str, Any] | None:
    """A v0.2 `Statistics` object of the finite values × scale (None when there are none)."""
    v = np.asarray(values, dtype=float) * scale
    v = v[np.isfinite(v)]
    if not v.size:
        return None
    out: dict[str, Any] = {"units": units, "mean": float(v.mean()), "stddev": float(v.std()),
                           "min": float(v.min())}
    out.update({k: float(np.percentile(v, _PCT[k])) for k in PERCENTILES})
    out["max"] = float(v.max())
    return out


def _scalar(value: Any, units: str) -> dict[str, Any] | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return {"units": units, "mean": f} if math.isfinite(f) else None


def _cfg_id(obj: Any) -> str:
    return hashlib.md5(json.dumps(obj, sort_keys=True, default=str).encode(), usedforsecurity=False).hexdigest()


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _dt.datetime.fromtimestamp(float(ts), _dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stack(params: dict) -> list[dict[str, Any]]:
    """scenario.stack: one inference_engine component per worker role, a generic one for the router."""
    topo = params.get("topology") or {}
    engine = (params.get("backend") or {}).get("engine", "sglang")
    tool = "sglang" if engine == "sglang" else f"sglang (pdlab {engine})"
    image = str(params.get("image") or "")
    comps = []
    for role in ("prefill", "decode", "worker"):
        r = topo.get(role)
        if not isinstance(r, dict):
            continue
        args = {**(params.get("engine_args") or {}), **(r.get("args") or {})}
        std = {"kind": "inference_engine", "tool": tool, "tool_version": image, "role": ROLE_KIND[role],
               "replicas": int(r.get("replicas", 1)), "model": {"name": str((params.get("model") or {}).get("name"))},
               "accelerator": {"model": str((params.get("gpu") or {}).get("type")), "count": int(r.get("tp", 1)),
                               "parallelism": {"tp": int(r.get("tp", 1))}}}
        comps.append({"metadata": {"schema_version": "0.0.1", "label": role, "cfg_id": _cfg_id([std, args])},
                      "standardized": std, "native": {"args": {f"--{k}": v for k, v in args.items()}}})
    router = topo.get("router") or {}
    std = {"kind": "generic", "tool": str(router.get("impl", "sglang-router")),
           "tool_version": str(params.get("router_image") or image), "policy": router.get("policy")}
    comps.append({"metadata": {"schema_version": "0.0.1", "label": "router", "cfg_id": _cfg_id([std, router])},
                  "standardized": std, "native": {"args": dict(router.get("args") or {})}})
    return comps


def _seq(value: int, ratio: float) -> dict[str, Any]:
    if not ratio:
        return {"distribution": "fixed", "value": int(value)}
    return {"distribution": "uniform", "value": int(value), "min": int(value * (1 - ratio)),
            "max": int(value * (1 + ratio))}


def load(params: dict, level: dict) -> dict[str, Any]:
    """scenario.load of one level: pdlab's load generator, lengths, and the level's rate or concurrency."""
    w = params.get("workload") or {}
    ds = w.get("dataset") or {}
    kind = ds.get("kind", "random")
    std: dict[str, Any] = {"tool": "pdlab", "tool_version": pdlab.__version__, "parallelism": 1,
                           "source": "random" if kind in ("random", "shared-prefix") else "sampled",
                           "stage": int(level.get("level", 0)),
                           "input_seq_len": _seq(ds.get("input_len", 0), ds.get("range_ratio", 0.0)),
                           "output_seq_len": _seq(ds.get("fixed_output_len") or ds.get("output_len", 0),
                                                  ds.get("range_ratio", 0.0))}
    if kind == "shared-prefix":
        std["prefix"] = {"prefix_len": {"distribution": "fixed", "value": int(ds.get("prefix_len", 0))},
                         "num_groups": int(ds.get("num_groups", 1)), "num_users_per_group": 1, "num_prefixes": 1}
    if level.get("level_kind") == "concurrency":
        std["concurrency"] = float(level["level_value"])
    else:
        std["rate_qps"] = float(level["level_value"])
    return {"metadata": {"schema_version": "0.0.1", "cfg_id": _cfg_id(w),
                         "description": f"pdlab {w.get('arrival', 'poisson')} arrivals, dataset {kind}"},
            "standardized": std, "native": {"config": w}}


def aggregate(requests: pd.DataFrame, level: dict) -> dict[str, Any]:
    """results.request_performance.aggregate of one level from its measured (non-warm-up) requests."""
    meas = requests[~requests["warmup"].astype(bool)] if len(requests) else requests
    ok = meas[meas["ok"].astype(bool)] if len(meas) else meas
    out_tok = ok["output_tokens"].astype(float) if len(ok) else pd.Series(dtype=float)
    ntpot = (ok["e2e_ms"] / out_tok.where(out_tok > 0)) if len(ok) else []
    drop = lambda d: {k: v for k, v in d.items() if v is not None}  # noqa: E731
    return {
        "requests": drop({"total": int(level.get("requests", len(meas))), "failures": int(level.get("failed", 0)),
                          "input_length": statistics(ok["prompt_tokens"] if len(ok) else [], "count"),
                          "output_length": statistics(out_tok, "count")}),
        "latency": drop({"time_to_first_token": statistics(ok["ttft_ms"] if len(ok) else [], "ms"),
                         "normalized_time_per_output_token": statistics(ntpot, "ms/token"),
                         "time_per_output_token": statistics(ok["tpot_ms"] if len(ok) else [], "ms/token"),
                         "inter_token_latency": statistics(itl_values(ok["chunk_times"]) if len(ok) else [],
                                                           "ms/token", 1e3),
                         "request_latency": statistics(ok["e2e_ms"] if len(ok) else [], "ms")}),
        "throughput": drop({"input_token_rate": _scalar(level.get("input_throughput"), "tokens/s"),
                            "output_token_rate": _scalar(level.get("output_throughput"), "tokens/s"),
                            "total_token_rate": _scalar(level.get("total_throughput"), "tokens/s"),
                            "request_rate": _scalar(level.get("request_rate"), "queries/s")}),
    }


def pod_startup_times(provenance: dict, params: dict) -> dict[str, Any] | None:
    """observability.pod_startup_times from provenance.json's `cold_start` (None when not recorded)."""
    cold = provenance.get("cold_start") or {}
    pods = []
    for p in cold.get("pods") or []:
        pods.append({k: v for k, v in {
            "name": p["name"], "model": (params.get("model") or {}).get("name"), "role": p.get("role"),
            "node": p.get("node"), "creation_timestamp": _iso(p.get("created")),
            "ready_timestamp": _iso(p.get("ready")), "startup_seconds": p.get("ready_s")}.items() if v is not None})
    if not pods:
        return None
    out: dict[str, Any] = {"collected_at": _iso(cold.get("collected_at")), "pods": pods}
    agg = statistics([p["startup_seconds"] for p in pods if "startup_seconds" in p], "s")
    if agg:
        out["aggregate"] = agg
    return {k: v for k, v in out.items() if v is not None}


def run_reports(run: Run) -> list[dict[str, Any]]:
    """One Benchmark Report per level of a loaded run."""
    params, prov, meta = run.params, run.provenance, run.meta
    sweep = meta.get("sweep") or run.path.parent.name
    eid = uuid.uuid5(uuid.NAMESPACE_URL, f"pdlab:{sweep}/{run.name}:{prov.get('t0_unix')}").hex
    comps = stack(params)
    obs = pod_startup_times(prov, params)
    docs = []
    for level in run.summary.to_dict("records"):
        lv = int(level.get("level", 0))
        req = run.requests[run.requests["level"] == lv] if len(run.requests) else run.requests
        start = prov.get("t0_unix")
        first = float(req["t_send"].min()) if len(req) else math.nan
        last = float(req["t_end"].max()) if len(req) else math.nan
        t = {}
        if start is not None and math.isfinite(first) and math.isfinite(last):
            t = {"start": _iso(start + first), "end": _iso(start + last), "duration": f"PT{last - first:.3f}S"}
        results: dict[str, Any] = {"request_performance": {"aggregate": aggregate(req, level)}}
        if obs:
            results["observability"] = {"pod_startup_times": obs}
        label = (params.get("labels") or {}).get("arm") or (meta.get("topology") or {}).get("label") or run.name
        docs.append({
            "version": VERSION,
            "run": {k: v for k, v in {
                "uid": uuid.uuid5(uuid.UUID(eid), f"level-{lv}").hex, "eid": eid, "time": t or None,
                "description": f"{(params.get('model') or {}).get('name')} [{sweep}/{run.name}] {label}",
                "keywords": ["pdlab", str(label), *(["incomplete"] if not run.complete else [])]}.items()
                if v is not None},
            "scenario": {"stack": comps, "load": load(params, level)},
            "results": results,
        })
    return docs


def validate(doc: dict[str, Any], where: str = "report", *, strict: bool = True) -> None:
    """Raise PdlabError naming the deepest field that breaks the v0.2 schema."""
    e = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema(strict)).iter_errors(doc))
    if e is None:
        return
    while e.context:  # anyOf/oneOf: descend to the branch that got furthest
        e = max(e.context, key=lambda c: len(c.absolute_path))
    field = ".".join(str(p) for p in e.absolute_path) or "(top level)"
    msg = e.message if len(e.message) < 200 else e.message[:200] + " …"
    raise PdlabError(f"{where}: field {field}: {msg} (llm-d Benchmark Report v{VERSION}, see {SOURCE})")


def export_llmd(path: Path | str, out: Path | str | None = None) -> list[Path]:
    """Write `<out>/<run>-level<i>.yaml` for every run under `path` (default out: `<path>/llm-d`)."""
    root = Path(path)
    runs = find_runs(root)
    if not runs:
        raise PdlabError(f"{root}: no pdlab run directory (with params.yaml) found; give a run or sweep directory")
    out_dir = Path(out) if out else root / "llm-d"
    written = []
    for rd in runs:
        run = load_run(rd)
        for doc in run_reports(run):
            stage = doc["scenario"]["load"]["standardized"]["stage"]
            target = out_dir / f"{rd.name}-level{stage}.yaml"
            validate(json.loads(json.dumps(doc)), str(target))
            write_atomic(target, yaml.safe_dump(doc, sort_keys=False))
            written.append(target)
    return written


__all__ = ["export_llmd", "run_reports", "statistics", "validate"]
