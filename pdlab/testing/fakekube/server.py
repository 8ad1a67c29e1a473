"""`FakeKube`: the fake API server on real HTTP at 127.0.0.1 — uvicorn and the simulated control plane on
one event loop in a background thread — plus the kubeconfig that points clients (kubectl included) at it."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
import yaml

from pdlab.testing.fakekube.api import build_app
from pdlab.testing.fakekube.cluster import ADMIN_TOKEN, Cluster, Faults, Options
from pdlab.testing.fakekube.controller import Controller

T = TypeVar("T")
CONTEXT = "fakekube"


class FakeKube:
    """A fake cluster: `with FakeKube(gpus_per_node=8) as kube: kube.kubeconfig(path)` — stopped (every
    container process killed) on exit."""

    def __init__(self, options: Options | None = None, *, port: int = 0, **kw: Any):
        self.options = options or Options(**kw)
        self.port = port
        self._tmp = Path(tempfile.mkdtemp(prefix="fakekube-"))
        self.log_dir = self.options.log_dir or self._tmp / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.cluster = Cluster(self.options)
        self.controller = Controller(self.cluster, self.log_dir)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------------------
    def start(self, timeout: float = 10.0) -> FakeKube:
        config = uvicorn.Config(build_app(self.cluster, self.controller), host="127.0.0.1", port=self.port, log_level="error",
                                lifespan="off", ws="websockets-sansio", ws_ping_interval=None, access_log=False,
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="fakekube", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"fakekube did not start: {self._error!r}")
            if time.monotonic() > deadline:
                raise RuntimeError("fakekube did not start within 10 s")
            time.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        self.cluster.server_address = f"127.0.0.1:{self.port}"
        atexit.register(self.controller.kill_now)
        return self

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            ctl = asyncio.create_task(self.controller.run())
            try:
                await self._server.serve()
            finally:
                await self.controller.shutdown()
                ctl.cancel()

        try:
            asyncio.run(main())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e

    def stop(self) -> None:
        """Stop the server and the control plane, killing every container process; idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        self.controller.kill_now()
        atexit.unregister(self.controller.kill_now)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> FakeKube:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- access --------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def faults(self) -> Faults:
        return self.options.faults

    def kubeconfig(self, path: str | Path | None = None, *, namespace: str = "default",
                   context: str = CONTEXT, user: str | None = None) -> Path:
        """Write a kubeconfig for this server (token auth over plain HTTP) and return its path; `user` (e.g.
        `system:serviceaccount:NS:NAME`) gets its own token, which Options(rbac=True) holds to its RBAC rules."""
        path = Path(path) if path else self._tmp / "kubeconfig"
        token = self.call(lambda: self.cluster.user_token(user)) if user else ADMIN_TOKEN
        doc = {"apiVersion": "v1", "kind": "Config", "preferences": {},
               "clusters": [{"name": context, "cluster": {"server": self.url}}],
               "users": [{"name": context, "user": {"token": token}}],
               "contexts": [{"name": context, "context": {"cluster": context, "user": context,
                                                          "namespace": namespace}}],
               "current-context": context}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        return path

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        """Run `fn` on the server's event loop (where the state lives) and return its result."""
        if self._loop is None:
            return fn()

        async def run() -> T:
            return fn()

        fut: concurrent.futures.Future = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return fut.result(timeout)

    def objects(self, plural: str, namespace: str | None = None) -> list[dict]:
        """Stored objects of one resource ('pods', 'services', 'rolebasedgroups.workloads.x-k8s.io', ...)."""
        import copy

        return self.call(lambda: copy.deepcopy(self.cluster.store.list(plural, namespace)))

    def events(self, namespace: str = "default") -> list[dict]:
        return self.objects("events", namespace)
