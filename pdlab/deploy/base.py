"""The backend protocol: deploy a topology → a Deployment handle (router URL, workers, teardown).

Every backend (local processes, Kubernetes) returns a `Deployment`. It is a context manager whose
teardown runs on normal exit, on error, on Ctrl-C / Jupyter kernel interrupt (KeyboardInterrupt)
and on SIGTERM (turned into SystemExit while a deployment is live).
"""

from __future__ import annotations

import abc
import signal
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment
    from pdlab.experiment.topology import Topology


@dataclass
class Endpoint:
    """One process or pod of a deployment: its role, name, serving URL and metrics URL."""

    role: str
    name: str
    url: str
    metrics_url: str | None = None
    index: int = 0
    pid: int | None = None
    node: str | None = None
    bootstrap_port: int | None = None


class Deployment(abc.ABC):
    """A live topology. Use as `with backend.deploy(exp) as dep:` — teardown is guaranteed."""

    experiment: Experiment
    topology: Topology
    run_id: str

    @property
    @abc.abstractmethod
    def router_url(self) -> str:
        """Base URL of the router (PD router or colocated load balancer), e.g. http://127.0.0.1:30000."""

    @property
    @abc.abstractmethod
    def endpoints(self) -> list[Endpoint]:
        """Every worker and the router, in role order."""

    def workers(self, role: str | None = None) -> list[Endpoint]:
        """Worker endpoints, optionally of one role."""
        return [e for e in self.endpoints if e.role != "scheduler" and (role is None or e.role == role)]

    @abc.abstractmethod
    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every role serves; raise DeployError with a diagnosis on failure or timeout."""

    @abc.abstractmethod
    def logs(self, name: str, tail: int = 100) -> str:
        """The last `tail` lines of one process's or pod's log."""

    @abc.abstractmethod
    def scale(self, role: str, replicas: int) -> None:
        """Change a worker role's replica count in place and wait until the router sees it."""

    @abc.abstractmethod
    def teardown(self) -> None:
        """Stop everything this deployment started; idempotent; never raises for already-gone things."""

    def table(self) -> list[dict[str, Any]]:
        """One row per process/pod, for display."""
        return [asdict(e) for e in self.endpoints]

    def manifests(self) -> list[dict[str, Any]]:
        """What was deployed, for the run's manifests.yaml: the applied Kubernetes objects (Secrets left out),
        or the process table."""
        return self.table()

    def cluster_info(self) -> dict[str, Any]:
        """Where it runs (cluster, nodes, controller; empty for local processes), for provenance.json."""
        return {}

    def cold_start(self) -> dict[str, Any] | None:
        """Apply → scheduled → started → ready times per pod/process and role (`pdlab.deploy.coldstart`), for
        provenance.json; None where the backend does not record them."""
        return None

    def check_alive(self) -> None:
        """Raise DeployError when a process or pod of the deployment has died (polled while holding)."""
        return None

    def notes(self) -> list[str]:
        """Extra lines `pdlab deploy` prints under the table (e.g. where the logs are)."""
        return []

    def describe(self) -> str:
        """A short text table of the deployment (for the CLI and notebooks)."""
        rows = self.table()
        cols = ["role", "name", "url", "pid", "node"]
        cols = [c for c in cols if any(r.get(c) is not None for r in rows)]
        widths = {c: max(len(c), *(len(str(r.get(c) or "")) for r in rows)) for c in cols}
        lines = ["  ".join(c.ljust(widths[c]) for c in cols)]
        lines += ["  ".join(str(r.get(c) or "").ljust(widths[c]) for c in cols) for r in rows]
        return "\n".join(lines)

    # -- context manager with guaranteed teardown --------------------------------------------
    def __enter__(self) -> Deployment:
        self._prev_sigterm = _install_sigterm()
        return self

    _prev_sigterm: Any = None

    def __exit__(self, *exc: object) -> None:
        try:
            self.teardown()
        finally:
            _restore_sigterm(self._prev_sigterm)

    def _repr_html_(self) -> str:  # Jupyter shows the table
        rows = self.table()
        cols = [c for c in ("role", "name", "url", "pid", "node") if any(r.get(c) is not None for r in rows)]
        head = "".join(f"<th>{c}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{r.get(c) or ''}</td>" for c in cols) + "</tr>" for r in rows)
        return f"<p>router: <code>{self.router_url}</code></p><table><tr>{head}</tr>{body}</table>"


class Backend(abc.ABC):
    """Turns an experiment into a Deployment."""

    name: str

    @abc.abstractmethod
    def deploy(self, exp: Experiment, *, run_dir: Path | None = None, run_id: str | None = None,
               wait: bool = True) -> Deployment:
        """Start the experiment's topology; with wait=True, return only once it is ready."""

    @abc.abstractmethod
    def cleanup(self, *, experiment: str | None = None) -> list[str]:
        """Remove what pdlab left behind (crashed runs); returns what was removed. Touches nothing else."""


def _sigterm_to_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _install_sigterm() -> Any:
    if threading.current_thread() is not threading.main_thread():
        return None
    prev = signal.getsignal(signal.SIGTERM)
    if prev in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm_to_exit)
    return prev


def _restore_sigterm(prev: Any) -> None:
    if prev is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, prev)
