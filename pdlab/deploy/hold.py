"""`pdlab deploy`: bring a topology up on any backend, show it, hold until Ctrl-C or SIGTERM, tear down."""

from __future__ import annotations

import contextlib
import json
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pdlab.deploy.registry import get_backend
from pdlab.experiment.topology import build

if TYPE_CHECKING:
    from pdlab.deploy.base import Backend
    from pdlab.experiment.spec import Experiment


def example_curl(url: str, model: str) -> str:
    """A streaming chat-completion request to the router, ready to paste into a shell."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Say hello in five words."}],
                       "max_tokens": 32, "stream": True})
    return f"curl -sN {url}/v1/chat/completions -H 'Content-Type: application/json' -d '{body}'"


def deploy_and_hold(exp: Experiment, *, out: Callable[[str], Any] = print, run_dir: Path | None = None,
                    backend: Backend | None = None) -> None:
    """Deploy, print the endpoint, the process/pod table and a curl, then block until Ctrl-C / SIGTERM
    (or a process dies) and tear everything down."""
    backend = backend or get_backend(exp)
    out(f"deploying {exp.name} ({build(exp).label}) on the {backend.name} backend…")
    with _stop_signals(), backend.deploy(exp, run_dir=run_dir) as dep:
        out(f"router: {dep.router_url}")
        out(dep.describe())
        for line in dep.notes():
            out(line)
        out("try:\n  " + example_curl(dep.router_url, exp.model.name))
        out("Ctrl-C (SIGINT) or SIGTERM to stop and tear down.")
        try:
            while True:
                time.sleep(0.5)
                dep.check_alive()
        except KeyboardInterrupt:
            out("stopping…")
    out("torn down.")


@contextlib.contextmanager
def _stop_signals() -> Any:
    """SIGINT and SIGTERM both stop `pdlab deploy` (KeyboardInterrupt), also where SIGINT was ignored: a shell
    starts background jobs (`pdlab deploy … &`) with SIGINT ignored, and Python then installs no handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
