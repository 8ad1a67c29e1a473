"""One `Arm`: what a run deployed, in the terms every comparison uses (kind, label, ratio, replicas and TP per
role, GPUs). Computed once from the experiment, stored in summary.json, read back by results, compare, plots,
sweeps and notebooks; see docs/architecture.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

from pdlab.experiment.topology import Topology, build

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment


@dataclass(frozen=True)
class Arm:
    """An experiment arm. `label` is the legend name (a sweep baseline's name, else the topology label);
    `ratio` is '2P1D' or 'colocated-3x'; replica/TP fields are 0 where a role does not exist."""

    kind: str  # "pd" | "colocated"
    label: str
    ratio: str
    topology: str  # the topology label, e.g. '2P1D (TP2)' or 'colocated 3×TP2'
    prefill: int = 0
    decode: int = 0
    workers: int = 0
    prefill_tp: int = 0
    decode_tp: int = 0
    worker_tp: int = 0
    gpus: int = 0

    @property
    def tp(self) -> int:
        """The TP of the arm's first worker role (prefill for PD)."""
        return self.prefill_tp or self.worker_tp

    def to_dict(self) -> dict[str, Any]:
        """Plain data for summary.json."""
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Arm:
        """Read back what `to_dict` wrote (unknown keys from newer versions are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in doc.items() if k in names})


def arm_of_topology(topo: Topology, label: str | None = None) -> Arm:
    """The arm of a built topology; `label` overrides the legend label (e.g. a sweep baseline's name)."""
    if topo.kind == "pd":
        p, d = topo.role("prefill"), topo.role("decode")
        return Arm("pd", label or topo.label, f"{p.replicas}P{d.replicas}D", topo.label, prefill=p.replicas,
                   decode=d.replicas, prefill_tp=p.tp, decode_tp=d.tp, gpus=topo.gpus)
    w = topo.role("worker")
    return Arm("colocated", label or topo.label, f"colocated-{w.replicas}x", topo.label, workers=w.replicas,
               worker_tp=w.tp, gpus=topo.gpus)


def arm_of(exp: Experiment) -> Arm:
    """The experiment's arm; the label is `exp.arm` when a sweep set one, else the topology label."""
    return arm_of_topology(build(exp), label=exp.arm)
