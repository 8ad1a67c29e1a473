"""Helpers for the fake-cluster and k8s-backend tests: a running FakeKube, the seed experiment, a backend."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pdlab.deploy.k8s import K8sBackend
from pdlab.experiment.loader import load_experiment
from pdlab.experiment.spec import Experiment, K8sSpec
from pdlab.testing.fakekube import PROFILES, FakeKube, Options

ROOT = Path(__file__).resolve().parents[1]
SEED = ROOT / "params" / "seed-2p1d.yaml"
RBG = "rolebasedgroups.workloads.x-k8s.io"
PDLAB_KINDS = (RBG, "services", "persistentvolumeclaims", "persistentvolumes", "secrets", "pods")
PROFILE_NAMES = list(PROFILES)  # the RBG controller releases the fake can behave like
# the profile fake_kube() uses unless told otherwise; a test module's autouse fixture sets it per parameter
PROFILE = {"name": "v0.8"}


def kubectl() -> str:
    """The kubectl binary. Without one the test is skipped with the reason, except where
    PDLAB_REQUIRE_KUBECTL=1 (CI, via .ci/run), where a missing kubectl fails it loudly."""
    path = shutil.which("kubectl")
    if not path:
        why = ("kubectl is not on PATH: these tests check the fake cluster with the real kubectl (v1.32); "
               "install it (https://kubernetes.io/docs/tasks/tools/) to run them")
        if os.environ.get("PDLAB_REQUIRE_KUBECTL") == "1":
            pytest.fail(why)
        pytest.skip(why)
    return path


@contextlib.contextmanager
def fake_kube(**kw: Any) -> Iterator[FakeKube]:
    """A fake cluster with fast timings and the model PVC in place (override any Options field)."""
    opts = {"pvcs": ("llm-model",), "time_scale": 0.02, "emu_time_scale": 0.02, "bookmark_interval_s": 0.5,
            "rbg_profile": PROFILE["name"], **kw}
    with FakeKube(Options(**opts)) as kube:
        yield kube


def seed(*overrides: str) -> Experiment:
    return load_experiment(SEED, ["backend.kind=k8s", *overrides])


def backend(kube: FakeKube, events: list[str] | None = None, **kw: Any) -> K8sBackend:
    """A backend on the fake's kubeconfig; events go to `events` (and nothing waits long in tests)."""
    spec = {"kubeconfig": str(kube.kubeconfig()), "ready_timeout_s": 30.0, **kw.pop("spec", {})}
    sink = events.append if events is not None else (lambda _m: None)
    return K8sBackend(K8sSpec(**spec), fail_fast_s=kw.pop("fail_fast_s", 1.0), on_event=kw.pop("on_event", sink),
                      teardown_timeout_s=kw.pop("teardown_timeout_s", 20.0), **kw)


def run_cli(kube: FakeKube, results: Path, *overrides: str, params: Path = SEED, name: str = "r") -> tuple[int, Path]:
    """`pdlab run PARAMS --set backend.kind=k8s ...` in this process against the fake; (exit code, run dir)."""
    from pdlab.cli import main

    sets = ["backend.kind=k8s", f"backend.k8s.kubeconfig={kube.kubeconfig()}", "backend.k8s.ready_timeout_s=30",
            "backend.k8s.fail_fast_s=1", *overrides]
    rc = main(["run", str(params), "--results", str(results), "--name", name,
               *[a for s in sets for a in ("--set", s)]])
    exp = load_experiment(params, list(overrides))
    return rc, results / exp.name / name


def pdlab_objects(kube: FakeKube) -> list[str]:
    """Every object in the fake that carries a pdlab label (what a leak would look like)."""
    out = []
    for plural in PDLAB_KINDS:
        for o in kube.objects(plural):
            if "pdlab.io/experiment" in (o["metadata"].get("labels") or {}):
                out.append(f"{plural}/{o['metadata']['name']}")
    return out
