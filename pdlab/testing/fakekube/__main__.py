"""`python -m pdlab.testing.fakekube --port P --kubeconfig OUT`: run a fake cluster until interrupted."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from pdlab.testing.fakekube import FakeKube, Faults, Options
from pdlab.testing.fakekube.rbgprofiles import PROFILES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pdlab.testing.fakekube", description=__doc__)
    p.add_argument("--port", type=int, default=0, help="listen port on 127.0.0.1 (0: any free port)")
    p.add_argument("--kubeconfig", required=True, help="where to write the kubeconfig pointing at this server")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--erdma", action=argparse.BooleanOptionalAction, default=True,
                   help="nodes advertise aliyun/erdma (default on)")
    p.add_argument("--pvc", action="append", default=[], help="pre-create a Bound PVC (repeatable), e.g. llm-model")
    p.add_argument("--namespace", action="append", default=[], help="extra namespaces (default: default)")
    p.add_argument("--time-scale", type=float, default=0.05, help="kubelet timings multiplier (probes, back-offs)")
    p.add_argument("--emu-time-scale", type=float, default=None, help="force this --emu-time-scale on every emulated worker (default: the experiment's emulator.time_scale)")
    p.add_argument("--rbg-profile", default="v0.8", choices=sorted(PROFILES),
                   help="which RBG controller release to behave like (docs/rbg-controllers.md)")
    p.add_argument("--rbg-versions", default=None, help="RBG CRD versions served (default: the profile's)")
    p.add_argument("--rbac", action="store_true", help="enforce RBAC for ServiceAccount tokens")
    p.add_argument("--no-rbg", action="store_true", help="do not install the RoleBasedGroup CRD")
    p.add_argument("--fail-image", default=None, help="regex: images whose pull fails")
    p.add_argument("--crash", default=None, help="regex: pod names whose container crash-loops")
    a = p.parse_args(argv)
    opts = Options(nodes=a.nodes, gpus_per_node=a.gpus_per_node, erdma=a.erdma, pvcs=tuple(a.pvc),
                   namespaces=("default", *a.namespace), time_scale=a.time_scale, emu_time_scale=a.emu_time_scale,
                   rbg_profile=a.rbg_profile, rbac=a.rbac,
                   rbg_versions=tuple(a.rbg_versions.split(",")) if a.rbg_versions else None, install_rbg=not a.no_rbg,
                   faults=Faults(image_pull=a.fail_image, crash=a.crash))
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with FakeKube(opts, port=a.port) as kube:
        path = kube.kubeconfig(a.kubeconfig)
        print(f"fakekube serving {kube.url}; kubeconfig {path}; Ctrl-C stops", flush=True)
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
