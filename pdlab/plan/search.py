"""Branch-and-bound over the space: the highest Poisson rate at which each promising candidate meets the SLO.

Candidates are visited by capacity bound, best first. One whose bound cannot beat the k-th best rate per GPU
already found for its kind (PD, colocated) is pruned unsimulated. Otherwise the first probe is at the rate
that would tie that k-th best (a miss there settles it in one simulation), then bisection on the rate down to
`tol`. The winners of each kind are then tried with per-role --max-running-requests caps below their observed
decode batch. Every probe that meets the SLO is kept: they are the points of the Pareto frontier.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pdlab.emulator.engine import EngineConfig
from pdlab.experiment.spec import Experiment
from pdlab.plan.bounds import Bound, bound
from pdlab.plan.simulate import Probe, probe, unit_configs
from pdlab.plan.space import CAPS, Candidate, enumerate_space

KEEP = 2  # exact top-k per kind: prune what cannot beat the k-th best
TOL = 0.04  # bisection stops when the bracket is within 4 % of its top
FLOOR = 0.02  # lowest rate tried, as a share of the bound: missing there means missing at any rate


@dataclass
class Result:
    """One simulated candidate: its highest rate meeting the SLO (0 if none) and the probe there."""

    candidate: Candidate
    bound: Bound
    max_rate: float
    best: Probe | None  # the probe at max_rate (None when nothing met the SLO)
    closest: Probe | None  # the lowest-rate probe when nothing met it
    probes: list[Probe] = field(default_factory=list)

    @property
    def meets(self) -> bool:
        """Whether some rate met the SLO."""
        return self.best is not None

    @property
    def tok_s_per_gpu(self) -> float:
        """Output tokens/s per GPU at max_rate."""
        return self.best.figures["output_tok_s_per_gpu"] if self.best else 0.0


@dataclass
class Search:
    """Everything one planning call found."""

    results: list[Result]
    considered: int
    pruned: int
    infeasible: list[tuple[Candidate, Bound]]
    probes: int
    seconds: float


def _kth(values: list[float], k: int) -> float:
    return sorted(values, reverse=True)[k - 1] if len(values) >= k else 0.0


def max_rate(exp: Experiment, c: Candidate, cfg: tuple[EngineConfig, EngineConfig], b: Bound,
             tie_rate: float = 0.0, tol: float = TOL) -> Result:
    """Bisection on the total rate in (FLOOR·bound, bound]; starts at `tie_rate` when given."""
    lo, hi = 0.0, b.rate
    res = Result(c, b, 0.0, None, None)
    r = tie_rate if 0 < tie_rate < hi else 0.85 * hi
    while True:
        p = probe(exp, c, cfg, r)
        res.probes.append(p)
        if p.meets:
            lo, res.best, res.max_rate = r, p, r
        else:
            hi = r
            if r == tie_rate:
                break  # cannot beat what is already found: one probe settles it
            if r <= FLOOR * b.rate * 1.0001:
                res.closest = p
                break
        if hi - lo <= tol * hi:
            break
        r = (lo + hi) / 2 if lo > 0 else max(hi / 2, FLOOR * b.rate)
    if res.best is None and res.closest is None:
        res.closest = min(res.probes, key=lambda q: q.rate)
    return res


def search(exp: Experiment, budget: int, *, keep: int = KEEP, caps: tuple[int, ...] = CAPS,
           progress: Callable[[str], None] | None = None) -> Search:
    """Enumerate, bound, prune and bisect; then try caps on each kind's winner."""
    t0 = time.monotonic()
    output = exp.workload.dataset.output_len
    space = enumerate_space(exp, budget)
    configs: dict[Candidate, tuple[EngineConfig, EngineConfig]] = {}

    def cfg(c: Candidate) -> tuple[EngineConfig, EngineConfig]:
        if c not in configs:
            configs[c] = unit_configs(exp, c)
        return configs[c]

    bounded = [(bound(exp, c, *cfg(c)), c) for c in space]
    infeasible = [(c, b) for b, c in bounded if b.rate <= 0]
    order = sorted(((b, c) for b, c in bounded if b.rate > 0), key=lambda x: -x[0].rate * output / x[1].gpus)
    found: dict[str, list[float]] = {"pd": [], "colocated": []}
    results: list[Result] = []
    pruned = 0
    for b, c in order:
        kth = _kth(found[c.kind], keep)
        if b.rate * output / c.gpus <= kth:
            pruned += 1
            continue
        res = max_rate(exp, c, cfg(c), b, tie_rate=kth * c.gpus / output)
        results.append(res)
        if res.meets:
            found[c.kind].append(res.tok_s_per_gpu)
        if progress:
            progress(f"{c.label}: {res.max_rate:.2f} req/s" if res.meets else f"{c.label}: misses")
    for kind in ("colocated", "pd"):
        winners = sorted((r for r in results if r.candidate.kind == kind and r.meets), key=lambda r: -r.tok_s_per_gpu)
        for w in winners[:1]:
            for cap in caps:
                if cap >= w.best.figures["decode_batch"]:
                    continue
                cc = w.candidate.capped(cap)
                b = bound(exp, cc, *cfg(cc))
                if b.rate <= 0:
                    infeasible.append((cc, b))
                    continue
                space.append(cc)
                results.append(max_rate(exp, cc, cfg(cc), b, tie_rate=w.max_rate * 0.5))
    return Search(results, len(space), pruned, infeasible, sum(len(r.probes) for r in results),
                  time.monotonic() - t0)
