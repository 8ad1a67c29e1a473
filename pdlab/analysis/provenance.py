"""Where a sweep's numbers come from, for the report: pdlab version and commit, dates, the command line,
backend and cluster or emulator, performance profile, seed and host — read from `sweep.json` and every run's
`provenance.json` and `params.yaml`, so a reviewer can tell what produced each figure and repeat it."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

import pdlab


def _join(values: Iterable[Any]) -> str:
    """Distinct non-empty values, in first-seen order, joined by ' · '."""
    seen: list[str] = []
    for v in values:
        t = str(v) if v not in (None, "") else ""
        if t and t not in seen:
            seen.append(t)
    return " · ".join(seen) or "not recorded"


def commit_text(prov: Mapping[str, Any]) -> str:
    """'abc1234' (+ ' (uncommitted changes)'), or 'not a git checkout'."""
    sha = prov.get("git_commit")
    if not sha:
        return "not a git checkout"
    return str(sha)[:12] + (" (uncommitted changes)" if prov.get("git_dirty") else "")


def cluster_text(params: Mapping[str, Any], prov: Mapping[str, Any]) -> str:
    """What served the requests: emulated workers on this host, pdlab's fake cluster, or a named cluster."""
    b = params.get("backend") or {}
    cluster = prov.get("cluster") or {}
    if b.get("kind", "local") == "local":
        engine = b.get("engine", "emulator")
        return ("local processes: pdlab's emulated SGLang workers + sglang-router" if engine == "emulator"
                else f"local processes: {engine} workers + sglang-router")
    name = cluster.get("context") or cluster.get("server") or (b.get("k8s") or {}).get("context") or "?"
    return f"Kubernetes {name}" + (" (pdlab's fake cluster, emulated workers)" if cluster.get("emulated") else "")


def profile_text(params: Mapping[str, Any], prov: Mapping[str, Any]) -> str:
    """The performance profile behind emulated timings (a calibrated file, else the built-in GPU profile)."""
    if prov.get("perf_profile"):
        return str(prov["perf_profile"])
    gpu = params.get("gpu") or {}
    if gpu.get("profile"):
        return str(gpu["profile"])
    return f"built-in {gpu.get('type', '?')} profile (pdlab/experiment/profiles/gpus.yaml)"


def checkout_relative(path: str | None) -> str:
    """A file's path relative to the pdlab checkout holding it ('params/demo-sweep.yaml'), else as given."""
    if not path:
        return "not recorded"
    p = Path(path)
    for parent in p.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "params").is_dir() and (parent / "notebooks").is_dir():
            return str(p.relative_to(parent))
    return str(p)


def command_text(meta: Mapping[str, Any], provs: Iterable[Mapping[str, Any]]) -> str:
    """The command that produced the sweep (sweep.json's `command`), else the runs' commands."""
    if meta.get("command"):
        return str(meta["command"])
    return _join(p.get("command") for p in provs)


def table(meta: Mapping[str, Any], provenance_by_run: Mapping[str, Mapping[str, Any]],
          params_by_run: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Two columns, field and value: one row per provenance item a reviewer needs."""
    provs = list(provenance_by_run.values())
    params = list(params_by_run.values())
    pairs = [(provenance_by_run.get(r, {}), params_by_run.get(r, {})) for r in params_by_run]
    started = sorted(p.get("started_at") for p in provs if p.get("started_at"))
    finished = sorted(p.get("finished_at") for p in provs if p.get("finished_at"))
    seeds = _join((p.get("workload") or {}).get("seed") for p in params)
    rows = [
        ("pdlab version (runs)", _join(p.get("pdlab_version") for p in provs)),
        ("git commit (runs)", _join(commit_text(p) for p in provs)),
        ("measured", f"{started[0]} … {finished[-1]}" if started and finished else "not recorded"),
        ("command", command_text(meta, provs)),
        ("sweep file", checkout_relative(meta.get("file"))),
        ("backend", _join(f"{(q.get('backend') or {}).get('kind', 'local')}" for q in params)),
        ("cluster or emulator", _join(cluster_text(q, p) for p, q in pairs)),
        ("performance profile", _join(profile_text(q, p) for p, q in pairs)),
        ("workload seed", seeds + (" (repeats replay the same seeded schedule)" if meta.get("repeats", 1) > 1 else "")),
        ("host", _join(f"{(p.get('host') or {}).get('hostname')}, {(p.get('host') or {}).get('cpus')} CPUs, "
                       f"Python {(p.get('host') or {}).get('python')}" for p in provs)),
        ("report rendered", f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} by pdlab {pdlab.__version__}"),
    ]
    return pd.DataFrame(rows, columns=["field", "value"])
