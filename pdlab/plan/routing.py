"""The planner's routing hook: the params' router settings as virtual-time policies for `simulate`.

sglang-router's default policy is cache_aware, so an unset `topology.router.policy` plans with cache_aware (as
the real router will route); mini_lb picks a random prefill and a random decode worker. The cache-aware policy
is approximated (see pdlab.emulator.routing): longest-prefix match on token blocks with the router's thresholds.

In PD mode sglang-router 0.3.2 does not route cache-aware at all: its debug log says "No tree found for model
…, using random worker selection" for every request (measured with benchmarks/bench_prefix.py), so a PD
cache_aware policy is planned as random (`PD_CACHE_AWARE_IS_RANDOM`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pdlab.emulator.routing import DEFAULT_POLICY, Policy

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment

_THRESHOLDS = ("cache_threshold", "balance_abs_threshold", "balance_rel_threshold")
PD_CACHE_AWARE_IS_RANDOM = True  # sglang-router 0.3.2, PD mode (see module docstring)


def policies(exp: Experiment) -> dict[str, Policy]:
    """Keyword arguments for `simulate`: policy, and in PD prefill_policy / decode_policy when the params set them."""
    r = exp.topology.router
    if r.impl == "mini_lb":
        return {"policy": Policy("random")}
    kw = {k: getattr(r, k) for k in _THRESHOLDS if getattr(r, k) is not None}
    pd = exp.topology.kind == "pd"

    def make(name: str) -> Policy:
        if pd and name == "cache_aware" and PD_CACHE_AWARE_IS_RANDOM:
            name = "random"
        return Policy(name, **kw)

    out = {"policy": make(r.policy or DEFAULT_POLICY)}
    if pd:
        for key in ("prefill_policy", "decode_policy"):
            if getattr(r, key):
                out[key] = make(getattr(r, key))
    return out
