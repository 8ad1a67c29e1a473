"""One deployment shared by several sweep points: a handle file the owner writes, a `SharedDeployment` a
point's kernel attaches to.

`pdlab sweep` deploys once for consecutive points whose params differ only in workload/rates (and SLOs),
writes `save_handle(dep, path, ...)` (router URL, endpoints, table, manifests, cluster facts, cold start,
which runs share it) and passes the path to each point's notebook; `attach(path)` gives a Deployment whose
teardown does nothing (the sweep tears down after the group's last point) and whose logs are read from
the owner's log files where the backend keeps them on disk.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pdlab.core.errors import DeployError, PdlabError
from pdlab.core.fsutil import dump_json, write_atomic
from pdlab.deploy.base import Deployment, Endpoint
from pdlab.experiment.topology import build

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment


def save_handle(dep: Deployment, path: Path | str, *, group: str, runs: list[str],
                log_files: dict[str, str] | None = None) -> Path:
    """Write what a kernel needs to use `dep` (no credentials: URLs, names, facts, times)."""
    doc = {"group": group, "runs": list(runs), "run_id": dep.run_id, "router_url": dep.router_url,
           "endpoints": [asdict(e) for e in dep.endpoints], "table": dep.table(), "manifests": dep.manifests(),
           "cluster_info": dep.cluster_info(), "cold_start": dep.cold_start(),
           "log_files": dict(log_files or {})}
    write_atomic(Path(path), dump_json(doc))
    return Path(path)


class SharedDeployment(Deployment):
    """A deployment another process owns: usable for load and scraping, never torn down from here."""

    def __init__(self, exp: Experiment, doc: dict[str, Any]):
        self.experiment = exp
        self.topology = build(exp)
        self.run_id = doc["run_id"]
        self.doc = doc
        self._endpoints = [Endpoint(**e) for e in doc["endpoints"]]

    @property
    def router_url(self) -> str:
        return self.doc["router_url"]

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    def cluster_info(self) -> dict[str, Any]:
        return dict(self.doc.get("cluster_info") or {})

    def cold_start(self) -> dict[str, Any] | None:
        return self.doc.get("cold_start")

    @property
    def shared(self) -> dict[str, Any]:
        """provenance.json's `shared_deployment`: the group and every run that used it."""
        return {"group": self.doc["group"], "runs": self.doc["runs"], "run_id": self.run_id}

    def table(self) -> list[dict[str, Any]]:
        return list(self.doc.get("table") or [])

    def manifests(self) -> list[dict[str, Any]]:
        return list(self.doc.get("manifests") or self.table())

    def wait_ready(self, timeout: float | None = None) -> None:
        """Check the router still answers (the owner waited for readiness already)."""
        try:
            r = httpx.get(self.router_url + "/health", timeout=timeout or 10.0, trust_env=False)
        except httpx.HTTPError as e:
            raise DeployError(f"the shared deployment's router {self.router_url} does not answer ({e})") from None
        if r.status_code != 200:
            raise DeployError(f"the shared deployment's router {self.router_url}/health answered {r.status_code}")

    def logs(self, name: str, tail: int = 100) -> str:
        f = (self.doc.get("log_files") or {}).get(name)
        if not f or not Path(f).exists():
            return ""
        return "\n".join(Path(f).read_text(errors="replace").splitlines()[-tail:])

    def scale(self, role: str, replicas: int) -> None:
        raise DeployError("a shared deployment belongs to the sweep that started it; scale it there")

    def teardown(self) -> None:
        """Nothing: the owner (the sweep) tears it down after the group's last point."""


def attach(exp: Experiment, path: Path | str) -> SharedDeployment:
    """The shared deployment described by the handle at `path`, for `exp` (a point of its group)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise PdlabError(f"{p}: unreadable shared-deployment handle ({e}); re-run the sweep") from None
    return SharedDeployment(exp, doc)


__all__ = ["SharedDeployment", "attach", "save_handle"]
