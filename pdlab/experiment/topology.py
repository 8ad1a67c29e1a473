"""Roles, replicas, TP and GPU accounting; the equal-GPU colocated baseline; xPyD enumeration.

A topology is a list of roles. Worker roles own GPUs (replicas × TP); the router role owns none.
PD and colocated arms are only compared at equal GPU count, which this module computes and checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pdlab.core.errors import SpecError

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment, PDTopology, RoleSpec

ROUTER_ROLE = "scheduler"
WORKER_ROLES = ("prefill", "decode", "worker")


@dataclass(frozen=True)
class Role:
    """One role of the group: `prefill`, `decode`, `worker` (colocated) or `scheduler` (router)."""

    name: str
    replicas: int
    tp: int = 0
    mode: str = "null"  # disaggregation mode: prefill | decode | null
    args: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def gpus(self) -> int:
        return self.replicas * self.tp

    @property
    def is_worker(self) -> bool:
        return self.name != ROUTER_ROLE


@dataclass(frozen=True)
class Topology:
    """The roles of one experiment arm, with GPU accounting."""

    kind: str  # "pd" | "colocated"
    roles: tuple[Role, ...]
    router_impl: str = "sglang-router"

    @property
    def workers(self) -> tuple[Role, ...]:
        return tuple(r for r in self.roles if r.is_worker)

    @property
    def gpus(self) -> int:
        return sum(r.gpus for r in self.workers)

    def role(self, name: str) -> Role:
        for r in self.roles:
            if r.name == name:
                return r
        raise KeyError(f"no role '{name}' in this topology (roles: {', '.join(r.name for r in self.roles)})")

    @property
    def label(self) -> str:
        """Short human label: '2P1D (TP2)' or 'colocated 3×TP2'."""
        if self.kind == "pd":
            p, d = self.role("prefill"), self.role("decode")
            tp = f"TP{p.tp}" if p.tp == d.tp else f"TP{p.tp}/{d.tp}"
            return f"{p.replicas}P{d.replicas}D ({tp})"
        w = self.role("worker")
        return f"colocated {w.replicas}×TP{w.tp}"

    def describe(self) -> list[dict]:
        """A row per role: name, replicas, tp, gpus, mode — for tables in notebooks and the CLI."""
        return [
            {"role": r.name, "replicas": r.replicas, "tp": r.tp, "gpus": r.gpus, "mode": r.mode}
            for r in self.roles
        ]


def _merged(common: dict, role: RoleSpec) -> dict:
    out = dict(common)
    out.update(role.args)
    return out


def build(exp: Experiment) -> Topology:
    """The topology of an experiment: PD → scheduler, prefill, decode; colocated → scheduler, worker."""
    t = exp.topology
    router = Role(ROUTER_ROLE, 1, 0, args=dict(t.router.args))
    if t.kind == "pd":
        roles = (
            router,
            Role("prefill", t.prefill.replicas, t.prefill.tp, "prefill", _merged(exp.engine_args, t.prefill)),
            Role("decode", t.decode.replicas, t.decode.tp, "decode", _merged(exp.engine_args, t.decode)),
        )
    else:
        roles = (router, Role("worker", t.worker.replicas, t.worker.tp, "null", _merged(exp.engine_args, t.worker)))
    return Topology(t.kind, roles, t.router.impl)


def check_feasible(exp: Experiment) -> None:
    """Reject topologies a cluster of `gpu.nodes` × `gpu.per_node` GPUs cannot host (SpecError names the field)."""
    per_node, budget = exp.gpu.per_node, exp.gpu.budget
    t = exp.topology
    roles = [("prefill", t.prefill), ("decode", t.decode)] if t.kind == "pd" else [("worker", t.worker)]
    for name, role in roles:
        field_path = f"topology.{name}.tp"
        if role.tp > per_node:
            raise SpecError(
                f"TP {role.tp} needs {role.tp} GPUs in one node but gpu.per_node is {per_node}; "
                f"lower the TP or raise gpu.per_node", field=field_path)
        if per_node % role.tp:
            divisors = [d for d in range(1, per_node + 1) if per_node % d == 0]
            raise SpecError(
                f"TP {role.tp} does not divide the node's {per_node} GPUs, so instances would straddle nodes; "
                f"use one of {divisors}", field=field_path)
    topo = build(exp)
    if topo.gpus > budget:
        raise SpecError(
            f"the topology needs {topo.gpus} GPUs ({_role_sum(topo)}) but gpu.nodes × gpu.per_node = "
            f"{exp.gpu.nodes} × {per_node} = {budget}; reduce replicas/TP or raise gpu.nodes",
            field="topology")
    # instances must pack into whole nodes
    instances = sorted((r.tp for r in topo.workers for _ in range(r.replicas)), reverse=True)
    if not _packs(instances, exp.gpu.nodes, per_node):
        raise SpecError(
            f"the instances ({_role_sum(topo)}) do not pack into {exp.gpu.nodes} node(s) of {per_node} GPUs",
            field="topology")


def _role_sum(topo: Topology) -> str:
    return " + ".join(f"{r.name} {r.replicas}×TP{r.tp}" for r in topo.workers)


def _packs(instances: list[int], nodes: int, per_node: int) -> bool:
    free = [per_node] * nodes
    for size in instances:  # first-fit decreasing; exact for power-of-two TP sizes
        for i, f in enumerate(free):
            if f >= size:
                free[i] -= size
                break
        else:
            return False
    return True


def colocated_baseline(pd: PDTopology | Topology, tp: int | None = None) -> tuple[int, int]:
    """(replicas, tp) of the colocated baseline with the same GPU count: 2P1D at TP2 (6 GPUs) → (3, 2)."""
    if isinstance(pd, Topology):
        gpus = pd.gpus
        tp = tp or pd.workers[0].tp
    else:
        gpus = pd.prefill.replicas * pd.prefill.tp + pd.decode.replicas * pd.decode.tp
        tp = tp or pd.prefill.tp
    if gpus % tp:
        raise SpecError(f"{gpus} GPUs cannot be split into colocated TP{tp} instances; choose a TP dividing {gpus}")
    return gpus // tp, tp


def enumerate_ratios(gpu_budget: int, tp: int = 2, *, exact: bool = True,
                     decode_tp: int | None = None) -> list[tuple[int, int]]:
    """Every (prefill, decode) replica pair at this TP that uses the whole budget (or fits it, exact=False)."""
    dtp = decode_tp or tp
    out = []
    for p in range(1, gpu_budget // tp + 1):
        for d in range(1, gpu_budget // dtp + 1):
            used = p * tp + d * dtp
            if used == gpu_budget or (not exact and used <= gpu_budget):
                out.append((p, d))
    return out
