"""Deployment reuse in a sweep: points whose params differ only in workload or SLOs (same topology, engine,
model, image, backend, repeat) run on one deployment instead of redeploying for each.

`groups(points)` keys each point by its params without `workload`, `slo`, `labels` and `description` (the
repeat stays in the key: a repeat re-measures the deployment too); groups of two or more points share.
`backend.reuse_deployment: false` in a point's params keeps it on its own deployment. `order(planned)` runs
a group's points one after another. `SharedDeployments` deploys a group on its first point (in the sweep
process), hands each point's notebook a handle (`pdlab.deploy.shared`), tears it down after the group's
last point, after a failed point (the next one redeploys) and on exit.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pdlab.deploy.base import Deployment
from pdlab.deploy.registry import get_backend
from pdlab.deploy.shared import save_handle
from pdlab.experiment.spec import Experiment, resolved
from pdlab.experiment.sweepspec import Point

IGNORED = ("workload", "slo", "labels", "description")
SHARED_DIR = ".shared"


def deployment_key(point: Point) -> str | None:
    """What a point's deployment depends on, hashed; None when the point opts out of reuse."""
    exp = point.experiment
    if not exp.backend.reuse_deployment:
        return None
    doc = {k: v for k, v in resolved(exp).items() if k not in IGNORED}
    doc["repeat"] = point.repeat
    return hashlib.sha1(json.dumps(doc, sort_keys=True, default=str).encode(), usedforsecurity=False).hexdigest()


def groups(points: Iterable[Point]) -> dict[str, list[str]]:
    """group name → the runs that share its deployment (only groups of two or more points)."""
    by_key: dict[str, list[str]] = {}
    for p in points:
        key = deployment_key(p)
        if key is not None:
            by_key.setdefault(key, []).append(p.run)
    return {f"shared-{runs[0]}"[:50].rstrip("-._"): runs for runs in by_key.values() if len(runs) > 1}


def order(items: list[Any], run_of: Callable[[Any], str], shared: dict[str, list[str]]) -> list[Any]:
    """`items` with each group's points moved next to its first one (otherwise in the sweep's order)."""
    group_of = {r: g for g, runs in shared.items() for r in runs}
    out: list[Any] = []
    placed: set[int] = set()
    for i, it in enumerate(items):
        if i in placed:
            continue
        g = group_of.get(run_of(it))
        members = [j for j, x in enumerate(items) if g is not None and group_of.get(run_of(x)) == g] or [i]
        for j in members:
            placed.add(j)
            out.append(items[j])
    return out


class SharedDeployments:
    """The live shared deployment (at most one at a time) and the handles given to the points' notebooks."""

    def __init__(self, sweep: str, sweep_dir: Path, shared: dict[str, list[str]],
                 on_event: Callable[[str], None] = lambda _m: None):
        self.sweep, self.dir, self.shared = sweep, Path(sweep_dir) / SHARED_DIR, shared
        self.group_of = {r: g for g, runs in shared.items() for r in runs}
        self.say = on_event
        self.live: tuple[str, Deployment] | None = None

    def handle_for(self, run: str, exp: Experiment) -> str | None:
        """The handle path for `run`'s notebook (deploying its group first if needed); None if it deploys alone."""
        group = self.group_of.get(run)
        if group is None:
            return None
        if self.live is not None and self.live[0] != group:
            self.release()
        if self.live is None:
            self.say(f"deploying once for {len(self.shared[group])} points ({', '.join(self.shared[group])}) …")
            run_dir = self.dir / group
            dep = get_backend(exp).deploy(exp, run_dir=run_dir, run_id=f"{self.sweep}-{group}"[:63].rstrip("-._"))
            self.live = (group, dep)
        dep = self.live[1]
        logs = {r["name"]: r["log"] for r in dep.table() if r.get("log")}
        return str(save_handle(dep, self.dir / f"{group}.json", group=group, runs=self.shared[group],
                               log_files=logs))

    def done(self, run: str, failed: bool) -> None:
        """After a point: tear its group down when it was the group's last point or the point failed."""
        group = self.group_of.get(run)
        if self.live is None or group != self.live[0]:
            return
        if failed or run == self.shared[group][-1]:
            self.release()

    def release(self) -> None:
        """Tear down the live shared deployment (if any)."""
        if self.live is not None:
            _, dep = self.live
            self.live = None
            with contextlib.suppress(Exception):
                dep.teardown()

    def __enter__(self) -> SharedDeployments:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["SharedDeployments", "deployment_key", "groups", "order"]
