"""`pdlab import FILE...`: llm-d Benchmark Reports (v0.2.x, from llm-d-benchmark or any tool) as pdlab runs.

Reports are grouped into runs by `run.eid` (a run's stages share it; else the description, else the file),
each stage becoming one level. Every run is written as `<into>/<run>/` with `params.yaml` (topology, GPU
type and model from `scenario.stack`, lengths from `scenario.load`, label `arm`), `summary.json` (the
levels, in pdlab's summary columns, latencies converted to ms) and `provenance.json` (the source files),
so `load_sweep` and the compare notebook and report show it as one more arm. Goodput and client health
are not in the format and stay empty. A report of another schema version is refused, naming the file.
"""

from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import yaml

from pdlab.analysis.llmd_export import validate
from pdlab.core.errors import PdlabError
from pdlab.core.fsutil import dump_json, now_iso, write_atomic
from pdlab.experiment.arm import Arm

SUPPORTED = re.compile(r"0\.2(\.\d+)?")
TIME_MS = {"ms": 1.0, "s": 1000.0, "ms/token": 1.0, "s/token": 1000.0}
LATENCY = {"ttft": "time_to_first_token", "tpot": "time_per_output_token", "itl": "inter_token_latency",
           "e2e": "request_latency"}
THROUGHPUT = {"input_throughput": "input_token_rate", "output_throughput": "output_token_rate",
              "total_throughput": "total_token_rate", "request_rate": "request_rate"}


def read_report(path: Path | str) -> dict[str, Any]:
    """Load one report file (YAML or JSON), check its version and validate it; PdlabError names the fix."""
    p = Path(path)
    try:
        doc = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise PdlabError(f"{p}: no such file") from None
    except (OSError, yaml.YAMLError) as e:
        raise PdlabError(f"{p}: not a readable YAML/JSON file ({type(e).__name__}); give an llm-d Benchmark "
                         "Report") from None
    if not isinstance(doc, dict):
        raise PdlabError(f"{p}: not an llm-d Benchmark Report (expected a mapping with version, run, results)")
    version = str(doc.get("version", ""))
    if not SUPPORTED.fullmatch(version):
        raise PdlabError(f"{p}: field version: '{version or '(missing)'}' is not a supported Benchmark Report "
                         "version; pdlab imports v0.2 and v0.2.x: convert it with llm-d-benchmark's "
                         "benchmark-report tools (a v0.2 report) first")
    validate(json.loads(json.dumps(doc, default=str)), str(p), strict=False)
    return doc


def _ms(stat: dict | None, key: str) -> float:
    if not stat or stat.get(key) is None:
        return math.nan
    return float(stat[key]) * TIME_MS.get(str(stat.get("units")), math.nan)


def _mean(stat: dict | None) -> float:
    return float(stat["mean"]) if stat and stat.get("mean") is not None else math.nan


def _duration_s(run: dict) -> float:
    m = re.fullmatch(r"PT(?:(\d+(?:\.\d+)?)H)?(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?",
                     str(((run.get("time") or {}).get("duration")) or ""))
    if not m or not any(m.groups()):
        return math.nan
    h, mi, s = (float(x) if x else 0.0 for x in m.groups())
    return h * 3600 + mi * 60 + s


def engines(doc: dict) -> dict[str, dict]:
    """role (prefill/decode/replica) → the inference_engine component's standardized section."""
    out = {}
    for c in ((doc.get("scenario") or {}).get("stack") or []):
        std = c.get("standardized") or {}
        if std.get("kind") == "inference_engine":
            out[std.get("role", "replica")] = std
    return out


def gpus(doc: dict) -> int | None:
    """GPUs of the stack: Σ replicas × accelerators per replica (None when the stack is not described)."""
    eng = engines(doc)
    if not eng:
        return None
    return sum(int(e.get("replicas", 1)) * int((e.get("accelerator") or {}).get("count", 1)) for e in eng.values())


def level_row(doc: dict, index: int) -> dict[str, Any]:
    """One pdlab summary row from a report's load and aggregate results."""
    std = ((doc.get("scenario") or {}).get("load") or {}).get("standardized") or {}
    agg = ((doc.get("results") or {}).get("request_performance") or {}).get("aggregate") or {}
    req, lat, thr = agg.get("requests") or {}, agg.get("latency") or {}, agg.get("throughput") or {}
    kind = "concurrency" if std.get("concurrency") and not std.get("rate_qps") else "rate"
    value = std.get("concurrency") if kind == "concurrency" else std.get("rate_qps")
    row: dict[str, Any] = {"level": index, "level_kind": kind,
                           "level_value": float(value) if value is not None else _mean(thr.get("request_rate")),
                           "target_rate": float(value) if kind == "rate" and value is not None else math.nan,
                           "target_concurrency": float(value) if kind == "concurrency" else math.nan}
    total, failed = int(req.get("total", 0) or 0), int(req.get("failures", 0) or 0)
    row.update({"requests": total, "completed": total - failed, "failed": failed,
                "duration_s": _duration_s(doc.get("run") or {})})
    for col, key in THROUGHPUT.items():
        row[col] = _mean(thr.get(key))
    for short, key in LATENCY.items():
        row[f"{short}_mean_ms"] = _ms(lat.get(key), "mean")
        for p in (50, 90, 95, 99):
            row[f"{short}_p{p}_ms"] = _ms(lat.get(key), f"p{p}")
    n = gpus(doc)
    row["gpus"] = n if n else math.nan
    for k in ("request_rate", "input_throughput", "output_throughput", "total_throughput"):
        row[f"{k}_per_gpu"] = row[k] / n if n else math.nan
    row.update({"goodput": math.nan, "client_bound": False, "client_bound_reason": "", "top_error": ""})
    return row


def params_of(doc: dict, arm: str) -> dict[str, Any]:
    """A params.yaml-shaped dict (topology, GPU type, model, workload lengths, labels) from a report."""
    eng = engines(doc)
    any_eng = next(iter(eng.values()), {})
    role = lambda e: {"replicas": int(e.get("replicas", 1)),  # noqa: E731
                      "tp": int(((e.get("accelerator") or {}).get("parallelism") or {}).get("tp", 1))}
    if "prefill" in eng or "decode" in eng:
        topo = {"kind": "pd", "prefill": role(eng.get("prefill", {"replicas": 0})),
                "decode": role(eng.get("decode", {"replicas": 0}))}
    else:
        topo = {"kind": "colocated", "worker": role(eng.get("replica", {"replicas": 0}))}
    std = ((doc.get("scenario") or {}).get("load") or {}).get("standardized") or {}
    return {"name": _slug(arm), "backend": {"kind": "imported", "engine": str(any_eng.get("tool", "unknown"))},
            "model": {"name": (any_eng.get("model") or {}).get("name")},
            "gpu": {"type": (any_eng.get("accelerator") or {}).get("model")}, "topology": topo,
            "image": any_eng.get("tool_version"),
            "workload": {"dataset": {"kind": f"llm-d:{std.get('source', 'unknown')}",
                                     "input_len": (std.get("input_seq_len") or {}).get("value"),
                                     "output_len": (std.get("output_seq_len") or {}).get("value")},
                         "arrival": f"{std.get('tool', 'unknown')} (llm-d report)",
                         "num_prompts": int(((((doc.get("results") or {}).get("request_performance") or {})
                                              .get("aggregate") or {}).get("requests") or {}).get("total", 0))},
            "labels": {"arm": arm, "source": "llm-d"}}


def arm_of_report(doc: dict, label: str) -> Arm:
    """The report's stack as a pdlab Arm (replicas and TP per role, GPUs), labelled `label`."""
    eng = engines(doc)
    tp = lambda e: int(((e.get("accelerator") or {}).get("parallelism") or {}).get("tp", 1))  # noqa: E731
    n = gpus(doc) or 0
    if "prefill" in eng or "decode" in eng:
        p, d = eng.get("prefill", {}), eng.get("decode", {})
        pr, dr = int(p.get("replicas", 0)), int(d.get("replicas", 0))
        return Arm("pd", label, f"{pr}P{dr}D", f"{pr}P{dr}D (llm-d)", prefill=pr, decode=dr,
                   prefill_tp=tp(p) if p else 0, decode_tp=tp(d) if d else 0, gpus=n)
    w = eng.get("replica", {})
    wr = int(w.get("replicas", 0))
    return Arm("colocated", label, f"colocated-{wr}x", f"colocated {wr}×TP{tp(w)} (llm-d)", workers=wr,
               worker_tp=tp(w), gpus=n)


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-._")[:80] or "llmd"


def import_reports(files: list[Path | str], into: Path | str, *, arm: str | None = None) -> list[Path]:
    """Import report files as runs under `into` (a sweep directory); returns the run directories written.
    Every file is read and checked before anything is written."""
    docs = [(Path(f), read_report(f)) for f in files]
    groups: dict[str, list[tuple[Path, dict]]] = defaultdict(list)
    for f, d in docs:
        r = d.get("run") or {}
        groups[str(r.get("eid") or r.get("description") or f.stem)].append((f, d))
    out = []
    for key, members in groups.items():
        members.sort(key=lambda fd: ((((fd[1].get("scenario") or {}).get("load") or {}).get("standardized") or {})
                                     .get("stage", 0), fd[0].name))
        first = members[0][1]
        label = arm or (first.get("run") or {}).get("description") or key
        name = "llmd-" + _slug(str((first.get("run") or {}).get("eid") or key))[:40]
        rd = Path(into) / name
        params = params_of(first, str(label))
        levels = [level_row(d, i) for i, (_, d) in enumerate(members)]
        arm = arm_of_report(first, str(label))
        write_atomic(rd / "params.yaml", yaml.safe_dump(params, sort_keys=False))
        write_atomic(rd / "provenance.json", dump_json({
            "imported": {"format": "llm-d Benchmark Report", "versions": sorted({str(d["version"]) for _, d in members}),
                         "files": [str(f) for f, _ in members], "at": now_iso(),
                         "run_uids": [(d.get("run") or {}).get("uid") for _, d in members]}}))
        write_atomic(rd / "summary.json", dump_json({
            "run": name, "sweep": Path(into).name, "experiment": label, "labels": params["labels"],
            "arm": arm.to_dict(),
            "topology": {"kind": arm.kind, "label": arm.topology, "ratio": arm.ratio, "gpus": arm.gpus},
            "gpu_type": params["gpu"]["type"], "model": params["model"]["name"], "imported": True,
            "requests": sum(lv["requests"] for lv in levels), "levels": levels}))
        out.append(rd)
    return out


__all__ = ["import_reports", "read_report"]
