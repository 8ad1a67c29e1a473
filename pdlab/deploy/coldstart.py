"""Cold-start timing: when each pod (or process) of a deployment passed apply → scheduled → container started →
ready, and when the router answered, so model loading shows up per role in provenance.json and the report.

`ColdStart` is fed by the backend as it watches: `applied()` once the objects are applied (or the processes
spawned), `observe(pod)` with every pod object the watch delivers (k8s), `mark(name, role, stage)` for
stages the backend sees itself (local processes), `router_ready()` when the router answers. Times are
unix seconds as pdlab observed them (sub-second, unlike the API's 1 s timestamps); `as_dict()` adds
per-pod and per-role seconds since apply (the role's slowest pod, i.e. when the role was complete).
"""

from __future__ import annotations

import time
from typing import Any

STAGES = ("created", "scheduled", "started", "ready")
ROLE_LABELS = ("pdlab.io/role", "rolebasedgroup.workloads.x-k8s.io/role")  # pdlab's own first


class ColdStart:
    """Per-pod stage times of one deployment, from apply to router ready."""

    def __init__(self) -> None:
        self.apply: float | None = None
        self.router: float | None = None
        self.pods: dict[str, dict[str, Any]] = {}

    def applied(self, at: float | None = None) -> None:
        """The deployment's objects were applied (first call wins)."""
        if self.apply is None:
            self.apply = time.time() if at is None else at

    def mark(self, name: str, role: str, stage: str, *, node: str | None = None, at: float | None = None) -> None:
        """Record that `name` reached `stage` (the first time it is seen there)."""
        p = self.pods.setdefault(name, {"name": name, "role": role})
        if node and not p.get("node"):
            p["node"] = node
        p.setdefault(stage, time.time() if at is None else at)

    def observe(self, pod: dict) -> None:
        """Record the stages a pod object shows (creation, PodScheduled, container running, Ready)."""
        meta, st, spec = pod.get("metadata") or {}, pod.get("status") or {}, pod.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        lab = meta.get("labels") or {}
        name, role = meta.get("name", ""), next((lab[k] for k in ROLE_LABELS if k in lab), "")
        node = spec.get("nodeName")
        self.mark(name, role, "created", node=node)
        conds = {c.get("type"): c.get("status") for c in st.get("conditions") or []}
        if conds.get("PodScheduled") == "True" or node:
            self.mark(name, role, "scheduled", node=node)
        if any("running" in (cs.get("state") or {}) for cs in st.get("containerStatuses") or []):
            self.mark(name, role, "started", node=node)
        if conds.get("Ready") == "True":
            self.mark(name, role, "ready", node=node)

    def router_ready(self, at: float | None = None) -> None:
        """The router answered /health through the chosen access path."""
        if self.router is None:
            self.router = time.time() if at is None else at

    def as_dict(self) -> dict[str, Any]:
        """provenance.json's `cold_start`: apply and router times, each pod's stages, per-role seconds."""
        t0 = self.apply
        pods = []
        for p in self.pods.values():
            q = dict(p)
            if t0 is not None:
                for s in STAGES:
                    if s in p:
                        q[f"{s}_s"] = round(p[s] - t0, 3)
            pods.append(q)
        roles: dict[str, dict[str, float]] = {}
        for q in pods:
            r = roles.setdefault(q["role"], {"pods": 0})
            r["pods"] += 1
            for s in STAGES:
                if f"{s}_s" in q:
                    r[f"{s}_s"] = max(r.get(f"{s}_s", 0.0), q[f"{s}_s"])
        out: dict[str, Any] = {"apply": t0, "router_ready": self.router, "collected_at": time.time(),
                               "pods": pods, "roles": roles}
        if t0 is not None and self.router is not None:
            out["router_ready_s"] = round(self.router - t0, 3)
        return out


def table(cold: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for the report: one per role (seconds from apply to each stage, slowest pod) plus the router."""
    rows = [{"role": role, "pods": r.get("pods"), **{s: r.get(f"{s}_s") for s in STAGES}}
            for role, r in sorted((cold.get("roles") or {}).items())]
    if cold.get("router_ready_s") is not None:
        rows.append({"role": "router answers", "pods": None, "created": None, "scheduled": None, "started": None,
                     "ready": cold["router_ready_s"]})
    return rows


__all__ = ["ColdStart", "STAGES", "table"]
