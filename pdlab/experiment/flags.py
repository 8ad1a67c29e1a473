"""Engine flags pdlab sets itself, and where in a params file each is set instead.

The spec refuses them in `engine_args` / role `args` / router `args`, so a user value is never silently
dropped or given twice on a launch command (`pdlab.experiment.commands` builds those commands).
"""

from __future__ import annotations

# flags pdlab sets itself, with the params field that sets them instead (None: pdlab picks the value);
# the spec rejects them in engine args, so a user value is never silently dropped or duplicated
WORKER_FLAGS: dict[str, str | None] = {
    "model-path": "model.path", "served-model-name": "model.name", "tp": "topology.<role>.tp",
    "tp-size": "topology.<role>.tp", "port": None, "host": None, "disaggregation-mode": "topology.kind",
    "disaggregation-bootstrap-port": "topology.bootstrap_port",
    "disaggregation-transfer-backend": "topology.transfer_backend", "enable-metrics": None,
    "disaggregation-ib-device": "topology.ib_device",
}
ROUTER_FLAGS: dict[str, str | None] = {
    "host": None, "port": None, "pd-disaggregation": "topology.kind", "prefill": "topology.prefill",
    "decode": "topology.decode", "worker-urls": "topology.worker", "prefill-bootstrap-ports": "topology.bootstrap_port",
    "policy": "topology.router.policy", "prometheus-port": None, "prometheus-host": None,
    "prefill-policy": "topology.router.prefill_policy", "decode-policy": "topology.router.decode_policy",
    "cache-threshold": "topology.router.cache_threshold",
    "balance-abs-threshold": "topology.router.balance_abs_threshold",
    "balance-rel-threshold": "topology.router.balance_rel_threshold",
}


def reserved_flag_error(key: str, flags: dict[str, str | None]) -> str | None:
    """The message for a user engine arg that pdlab sets itself (None when `key` is free to use)."""
    if key not in flags:
        return None
    instead = flags[key]
    fix = f"set {instead} instead" if instead else "pdlab chooses it"
    return f"engine arg '{key}' is set by pdlab itself; remove it ({fix})"
