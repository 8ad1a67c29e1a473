"""What the deployments of a sweep cost and who shared them: cold-start times per arm and role, and the runs
that used one deployment (`pdlab sweep` reuses a deployment for points differing only in workload/SLOs).

Both read each run's provenance.json (`cold_start`, `shared_deployment`) through the sweep's summary rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

STAGES = ("scheduled", "started", "ready")


def _provenance(run_dir: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(run_dir) / "provenance.json").read_text())
    except (OSError, ValueError):
        return {}


def _runs(summary: pd.DataFrame) -> pd.DataFrame:
    if summary.empty or "run_dir" not in summary:
        return pd.DataFrame(columns=["run", "run_dir", "arm", "repeat"])
    cols = [c for c in ("run", "run_dir", "arm", "repeat") if c in summary]
    return summary.drop_duplicates("run")[cols].sort_values([c for c in ("arm", "repeat", "run") if c in cols])


def cold_start_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per arm × role: seconds from apply until the role's slowest pod was scheduled, its container
    started and it was ready, plus the router's first answer (first repeat that deployed its own)."""
    rows, seen = [], set()
    for r in _runs(summary).itertuples():
        prov = _provenance(r.run_dir)
        cold = prov.get("cold_start") or {}
        shared = prov.get("shared_deployment") or {}
        if not cold.get("roles") or r.arm in seen or (shared and shared.get("runs", [r.run])[0] != r.run):
            continue
        seen.add(r.arm)
        for role, t in sorted(cold["roles"].items()):
            rows.append({"arm": r.arm, "role": role, "pods": t.get("pods"),
                         **{f"{s} s": t.get(f"{s}_s") for s in STAGES}})
        if cold.get("router_ready_s") is not None:
            rows.append({"arm": r.arm, "role": "router answers", "pods": None, "scheduled s": None,
                         "started s": None, "ready s": cold["router_ready_s"]})
    return pd.DataFrame(rows, columns=["arm", "role", "pods", *(f"{s} s" for s in STAGES)])


def shared_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per deployment that several runs shared: its group and the runs, in order."""
    groups: dict[str, list[str]] = {}
    for r in _runs(summary).itertuples():
        shared = _provenance(r.run_dir).get("shared_deployment") or {}
        if shared.get("group"):
            groups.setdefault(shared["group"], list(shared.get("runs") or []))
    return pd.DataFrame([{"deployment": g, "runs": ", ".join(runs), "points": len(runs)}
                         for g, runs in groups.items()], columns=["deployment", "runs", "points"])


__all__ = ["cold_start_table", "shared_table"]
