"""A fake Kubernetes API server with the RBG controller, a scheduler and a kubelet that runs each pod's
command locally (sglang → the pdlab emulator): real HTTP on 127.0.0.1 for the `kubernetes` client and kubectl.

    with FakeKube(gpus_per_node=8, emu_time_scale=0.05) as kube:
        kube.kubeconfig("/tmp/kubeconfig")  # kubectl --kubeconfig /tmp/kubeconfig get pods
"""

from pdlab.testing.fakekube.cluster import ApiFault, Faults, Options
from pdlab.testing.fakekube.rbgprofiles import PROFILES, RbgProfile
from pdlab.testing.fakekube.server import FakeKube

__all__ = ["PROFILES", "ApiFault", "FakeKube", "Faults", "Options", "RbgProfile"]
