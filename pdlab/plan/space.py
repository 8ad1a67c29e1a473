"""The search space of `pdlab plan`: every deployment unit of a GPU budget, and the experiment each one is.

A candidate is a *unit* (one colocated instance, or one xPyD group with its own prefill TP and decode TP)
replicated to fill the budget: `2×(1P1D) (TP2)` is the 1P1D unit twice. Under round-robin routing n copies
of a unit at n× the rate behave like one copy, so the planner simulates one unit and scales. PD units are
enumerated with coprime (x, y): 2P2D is 2×(1P1D), and at most MAX_INSTANCES per role. TPs are {1, 2, 4, 8} that divide the node and fit the
model: weights plus the KV of the workload's longest request at the configured memory fraction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pdlab.core.errors import SpecError
from pdlab.emulator import perfmodel
from pdlab.experiment import profiles
from pdlab.experiment.loader import experiment_from_dict
from pdlab.experiment.spec import Experiment

TPS = (1, 2, 4, 8)
CAPS = (32, 64, 128)
MAX_INSTANCES = 16  # per role in one PD unit; larger deployments are replicas of a unit  # --max-running-requests values tried on the decoding role (refinement step)
DEFAULT_MEM_FRACTION = 0.88


@dataclass(frozen=True)
class Candidate:
    """One deployment: a unit (colocated worker, or P prefill + D decode instances) × replicas, optional cap."""

    kind: str  # "pd" | "colocated"
    prefill: int  # colocated: 1 (the worker)
    prefill_tp: int  # colocated: the worker's TP
    decode: int = 0
    decode_tp: int = 0
    replicas: int = 1
    cap: int | None = None  # max-running-requests of the decoding role (decode, or the colocated worker)

    @property
    def unit_gpus(self) -> int:
        """GPUs of one unit."""
        return self.prefill * self.prefill_tp + self.decode * self.decode_tp

    @property
    def gpus(self) -> int:
        """GPUs of the whole deployment (all replicas)."""
        return self.unit_gpus * self.replicas

    @property
    def label(self) -> str:
        """'colocated 2×TP4', '2×(1P1D) (TP2)', '1P2D (TP4/2)', with ' cap64' when capped."""
        cap = f" cap{self.cap}" if self.cap else ""
        if self.kind == "colocated":
            return f"colocated {self.replicas}×TP{self.prefill_tp}{cap}"
        tp = f"TP{self.prefill_tp}" if self.prefill_tp == self.decode_tp else f"TP{self.prefill_tp}/{self.decode_tp}"
        unit = f"{self.prefill}P{self.decode}D"
        return (f"{self.replicas}×({unit})" if self.replicas > 1 else unit) + f" ({tp}){cap}"

    def capped(self, cap: int) -> Candidate:
        """The same deployment with the decoding role's max-running-requests set to `cap`."""
        return replace(self, cap=cap)


def longest_request(exp: Experiment) -> int:
    """Prompt plus output tokens of the workload's longest request (lengths uniform in len·(1 ± range_ratio))."""
    ds = exp.workload.dataset
    return int(round(ds.input_len * (1 + ds.range_ratio))) + int(round(ds.output_len * (1 + ds.range_ratio)))


def mem_fraction(exp: Experiment) -> float:
    """The engines' --mem-fraction-static (engine_args), else SGLang's default used by the emulator."""
    return float(exp.engine_args.get("mem-fraction-static", DEFAULT_MEM_FRACTION))


def fitting_tps(exp: Experiment) -> list[int]:
    """TP sizes that divide the node and hold the weights plus one longest request's KV; SpecError if none."""
    model, gpu = exp.model.architecture(), profiles.gpu(exp.gpu.type)
    per_node, need, frac = exp.gpu.per_node, longest_request(exp), mem_fraction(exp)
    shaped = [t for t in TPS if t <= per_node and per_node % t == 0]
    fits = [t for t in shaped if perfmodel.kv_pool_tokens(model, gpu, t, frac) >= need]
    if not fits:
        raise SpecError(
            f"{model.name} does not fit on {exp.gpu.type} at any TP in {shaped}: the weights plus the KV of one "
            f"{need}-token request exceed {gpu.memory_gb:g} GB × {frac:g} per GPU; use a larger GPU (gpu.type), "
            f"more GPUs per node (gpu.per_node) or shorter requests (workload.dataset)", field="gpu.type")
    return fits


def enumerate_space(exp: Experiment, budget: int) -> list[Candidate]:
    """Every colocated and PD unit of the fitting TPs that fits the budget, replicated to fill it."""
    if budget < 1:
        raise SpecError(f"a budget of {budget} GPUs is not positive; give --budget N with N ≥ 1", field="--budget")
    tps = fitting_tps(exp)
    usable = [t for t in tps if t <= budget]
    if not usable or all(budget % t for t in usable):
        raise SpecError(f"a budget of {budget} GPUs is not a multiple of any TP that fits ({', '.join(map(str, tps))}); "
                        f"use a multiple of {tps[0]}", field="--budget")
    out = [Candidate("colocated", 1, t, replicas=budget // t) for t in usable]
    for pt in usable:
        for dt in usable:
            for p in range(1, min(budget // pt, MAX_INSTANCES) + 1):
                for d in range(1, min((budget - p * pt) // dt, MAX_INSTANCES) + 1):
                    if math.gcd(p, d) == 1:
                        out.append(Candidate("pd", p, pt, d, dt, replicas=budget // (p * pt + d * dt)))
    return out


def unit_experiment(exp: Experiment, c: Candidate) -> Experiment:
    """The experiment of one unit of `c` (the topology the planner simulates), validated like a params file."""
    base = exp.model_dump(mode="json")
    router = base["topology"].get("router", {})
    args = {"max-running-requests": c.cap} if c.cap else {}
    if c.kind == "pd":
        topo = {"kind": "pd", "prefill": {"replicas": c.prefill, "tp": c.prefill_tp},
                "decode": {"replicas": c.decode, "tp": c.decode_tp, "args": args}, "router": router}
    else:
        topo = {"kind": "colocated", "worker": {"replicas": 1, "tp": c.prefill_tp, "args": args}, "router": router}
    gpu = dict(base["gpu"], nodes=max(base["gpu"]["nodes"], math.ceil(c.unit_gpus / base["gpu"]["per_node"])))
    return experiment_from_dict(dict(base, topology=topo, gpu=gpu), source="pdlab plan")


def deployment_overrides(exp: Experiment, c: Candidate) -> dict:
    """The params-file fields that deploy all of `c` (replicas folded into role counts: 2×(1P1D) → 2P2D)."""
    args = {"max-running-requests": c.cap} if c.cap else {}
    per_node = exp.gpu.per_node
    gpu = {"nodes": max(exp.gpu.nodes, math.ceil(c.gpus / per_node))}
    if c.kind == "pd":
        topo = {"kind": "pd", "prefill": {"replicas": c.prefill * c.replicas, "tp": c.prefill_tp},
                "decode": {"replicas": c.decode * c.replicas, "tp": c.decode_tp, **({"args": args} if args else {})}}
    else:
        topo = {"kind": "colocated", "worker": {"replicas": c.replicas, "tp": c.prefill_tp,
                                                **({"args": args} if args else {})}}
    return {"topology": topo, "gpu.nodes": gpu["nodes"]}
