"""A PodMonitor (Prometheus operator, also read by ACK Managed Prometheus) that scrapes an experiment's pods.

`pod_monitor(exp)` selects the experiment's serving pods by pdlab's own labels (experiment, role), scrapes the workers' `http` port
and the router's `metrics` port at /metrics every `interval`, and keeps the role as `pdlab_role`. The
operator labels every series with `namespace` and `pod`, which is what `pdlab.measure.prometheus` selects
by. `pdlab manifests --monitoring PARAMS` prints it; apply it once per experiment name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pdlab.deploy.manifests import EXPERIMENT_LABEL, ROLE_LABEL, labels
from pdlab.experiment.topology import ROUTER_ROLE

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment

API_VERSION = "monitoring.coreos.com/v1"
ROLE_META = "__meta_kubernetes_pod_label_" + "".join(c if c.isalnum() else "_" for c in ROLE_LABEL)


def pod_monitor(exp: Experiment, *, run_id: str | None = None, interval: str = "5s") -> dict:
    """The PodMonitor object for `exp`'s pods (workers' http port, router's metrics port)."""
    keep_role = {"sourceLabels": [ROLE_META], "targetLabel": "pdlab_role"}
    workers = {"port": "http", "path": "/metrics", "interval": interval,
               "relabelings": [{"sourceLabels": [ROLE_META], "regex": ROUTER_ROLE, "action": "drop"}, keep_role]}
    router = {"port": "metrics", "path": "/metrics", "interval": interval, "relabelings": [dict(keep_role)]}
    lab = labels(exp, run_id)
    return {"apiVersion": API_VERSION, "kind": "PodMonitor",
            "metadata": {"name": f"{exp.name}-pdlab", "namespace": exp.namespace,
                         "labels": {EXPERIMENT_LABEL: lab[EXPERIMENT_LABEL]}},
            "spec": {"selector": {"matchLabels": {EXPERIMENT_LABEL: exp.name},
                                  "matchExpressions": [{"key": ROLE_LABEL, "operator": "Exists"}]},
                     "namespaceSelector": {"matchNames": [exp.namespace]},
                     "podMetricsEndpoints": [workers, router]}}


__all__ = ["pod_monitor"]
