"""Thin plumbing over the `kubernetes` client for the k8s backend: loading a kubeconfig (or the in-cluster
config), generic REST calls on any resource path returning plain dicts, a resumable watch thread, and a
local TCP listener that bridges each connection to a pod port through the client's websocket port-forward.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.stream import portforward as k8s_portforward
from kubernetes.watch.watch import iter_resp_lines

from pdlab.core.errors import DeployError

RETRY_STATUSES = {429, 500, 502, 503, 504}
MIN_CLIENT = 37  # ApiClient.param_serialize, which Rest uses, exists from kubernetes 37 on

# kind → (api group path prefix, plural, namespaced) for every kind pdlab renders or inspects
KINDS: dict[str, tuple[str, bool]] = {
    "RoleBasedGroup": ("rolebasedgroups", True),
    "Service": ("services", True),
    "Pod": ("pods", True),
    "Event": ("events", True),
    "Secret": ("secrets", True),
    "ServiceAccount": ("serviceaccounts", True),
    "PersistentVolumeClaim": ("persistentvolumeclaims", True),
    "PersistentVolume": ("persistentvolumes", False),
    "Namespace": ("namespaces", False),
    "Node": ("nodes", False),
    "Role": ("roles", True),
    "RoleBinding": ("rolebindings", True),
    "ClusterRole": ("clusterroles", False),
    "ClusterRoleBinding": ("clusterrolebindings", False),
}


class ApiStatusError(DeployError):
    """A non-2xx answer from the API server; `status` is the HTTP code, `body` the decoded Status."""

    def __init__(self, status: int, body: dict | None, what: str):
        self.status = status
        self.body = body or {}
        self.reason = self.body.get("reason", "")
        msg = self.body.get("message") or f"HTTP {status}"
        super().__init__(f"{what}: {msg} (HTTP {status}{', ' + self.reason if self.reason else ''})")


def require_client() -> None:
    """Fail with the fix when the installed `kubernetes` client predates what Rest uses (instead of every call
    later failing as "cannot reach the API server")."""
    if not hasattr(kclient.ApiClient, "param_serialize"):
        raise DeployError(f"the installed kubernetes Python client ({getattr(kubernetes, '__version__', '?')}) is too "
                          f"old: pdlab needs kubernetes>={MIN_CLIENT} (pip install -U 'kubernetes>={MIN_CLIENT}')")


def load_client(kubeconfig: str | None = None, context: str | None = None) -> tuple[kclient.ApiClient, str, str]:
    """An ApiClient from a kubeconfig (explicit, $KUBECONFIG or ~/.kube/config) or the in-cluster config.

    Returns (client, context name, default namespace of the context)."""
    require_client()
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or str(Path.home() / ".kube/config")
    if kubeconfig or Path(path).exists():
        try:
            contexts, active = kconfig.list_kube_config_contexts(config_file=path)
            chosen = next((c for c in contexts if c["name"] == context), None) if context else active
            if context and chosen is None:
                names = ", ".join(c["name"] for c in contexts)
                raise DeployError(f"kubeconfig {path} has no context '{context}' (contexts: {names}); "
                                  f"fix backend.k8s.context")
            api = kconfig.new_client_from_config(config_file=path, context=context)
        except DeployError:
            raise
        except Exception as e:  # the client raises ConfigException, FileNotFoundError, yaml errors …
            raise DeployError(f"cannot load kubeconfig {path}: {e}; set backend.k8s.kubeconfig (or $KUBECONFIG) "
                              f"to a valid file") from None
        ns = (chosen or {}).get("context", {}).get("namespace") or "default"
        return api, (chosen or {}).get("name", ""), ns
    try:
        cfg = kclient.Configuration()
        kconfig.load_incluster_config(client_configuration=cfg)
    except kconfig.ConfigException:
        raise DeployError(f"no kubeconfig at {path} and not running in a cluster: set backend.k8s.kubeconfig "
                          f"(or $KUBECONFIG) to the cluster's kubeconfig") from None
    ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    return kclient.ApiClient(cfg), "in-cluster", ns_file.read_text().strip() if ns_file.exists() else "default"


def path_for(api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
    """The REST path of a collection or an object, e.g. /apis/workloads.x-k8s.io/v1alpha1/namespaces/ns/rolebasedgroups/x."""
    plural, namespaced = KINDS[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespaced and namespace:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    return base + (f"/{name}" if name else "")


class Rest:
    """JSON REST calls through an ApiClient (auth, TLS and proxies as the kubeconfig says), with retries."""

    def __init__(self, api: kclient.ApiClient, *, retries: int = 3, backoff_s: float = 0.5, timeout_s: float = 30.0):
        self.api = api
        self.retries = retries
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s

    def request(self, method: str, path: str, *, query: dict | None = None, body: Any = None,
                content_type: str = "application/json", what: str = "", retry: bool = True) -> Any:
        """One call; retries 429/5xx and connection errors; raises ApiStatusError for other failures."""
        attempts = self.retries + 1 if retry else 1
        for attempt in range(attempts):
            try:
                resp = self.send(method, path, query, body, content_type, stream=False)
                data = resp.read()
            except ApiStatusError:
                raise
            except Exception as e:  # urllib3 connection errors
                if attempt + 1 >= attempts:
                    raise DeployError(f"{what or method + ' ' + path}: cannot reach the API server at "
                                      f"{self.api.configuration.host}: {e}") from None
                time.sleep(self.backoff_s * 2 ** attempt)
                continue
            decoded = _decode(data)
            if 200 <= resp.status < 300:
                return decoded
            if resp.status in RETRY_STATUSES and attempt + 1 < attempts:
                time.sleep(self.backoff_s * 2 ** attempt)
                continue
            raise ApiStatusError(resp.status, decoded if isinstance(decoded, dict) else None,
                                 what or f"{method} {path}")
        raise AssertionError("unreachable")

    def stream(self, path: str, query: dict, timeout_s: float) -> Any:
        """A streaming GET (watch); returns the urllib3 response."""
        resp = self.send("GET", path, query, None, "application/json", stream=True, timeout=(5, timeout_s))
        if resp.status != 200:
            raise ApiStatusError(resp.status, _decode(resp.read()) or None, f"watch {path}")
        return resp.response

    def send(self, method: str, path: str, query: dict | None, body: Any, content_type: str, *, stream: bool,
             timeout: Any = None) -> Any:
        """One raw call (no retries): the urllib3 response, streaming or not. Uses ApiClient's public
        param_serialize/call_api (kubernetes client >= 37)."""
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        params = [(k, v) for k, v in (query or {}).items() if v is not None]
        m, url, hdrs, b, _ = self.api.param_serialize(method=method, resource_path=path, query_params=params,
                                                       header_params=headers, body=body,
                                                       auth_settings=["BearerToken"])
        return self.api.call_api(m, url, header_params=hdrs, body=b, _request_timeout=timeout or self.timeout_s)

    # conveniences -------------------------------------------------------------------------------------------
    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def get_or_none(self, path: str, **kw: Any) -> Any:
        try:
            return self.request("GET", path, **kw)
        except ApiStatusError as e:
            if e.status == 404:
                return None
            raise

    def delete(self, path: str, *, propagation: str = "Background", what: str = "") -> bool:
        """Delete; False when it was already gone."""
        try:
            self.request("DELETE", path, body={"kind": "DeleteOptions", "apiVersion": "v1",
                                                "propagationPolicy": propagation}, what=what)
            return True
        except ApiStatusError as e:
            if e.status == 404:
                return False
            raise

    def apply(self, obj: dict, *, manager: str = "pdlab") -> dict:
        """Server-side apply (create or update, idempotent), forcing ownership of the fields pdlab sets."""
        meta = obj["metadata"]
        path = path_for(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"])
        what = f"apply {obj['kind']} {meta.get('namespace', '')}/{meta['name']}".replace(" /", " ")
        for attempt in range(self.retries + 1):
            try:
                return self.request("PATCH", path, query={"fieldManager": manager, "force": "true"}, body=obj,
                                    content_type="application/apply-patch+yaml", what=what)
            except ApiStatusError as e:  # a conflicting concurrent write: apply again
                if e.status != 409 or attempt >= self.retries:
                    raise
                time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")


def _decode(data: bytes | None) -> Any:
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return {"message": data.decode(errors="replace")[:500]}


class WatchFailed(DeployError):
    """A watch that failed `failures` times in a row and stopped; `error` is the last failure."""

    def __init__(self, tag: str, failures: int, error: BaseException):
        self.tag, self.failures, self.error = tag, failures, error
        super().__init__(f"watch {tag}: {failures} failures in a row, last: {error}")


class Watch(threading.Thread):
    """List, then watch a collection from the list's resourceVersion, resuming after drops and bookmarks and
    re-listing after 410 Expired. Every object goes to `out` as (tag, event type, object); each failure as
    (tag, "WATCH_ERROR", error); after `give_up_after` failures in a row (no event in between) the thread ends
    with (tag, "WATCH_FAILED", WatchFailed) so that the consumer can stop waiting and say why."""

    def __init__(self, rest: Rest, path: str, out: queue.Queue, *, tag: str, label_selector: str | None = None,
                 field_selector: str | None = None, timeout_s: float = 30.0, give_up_after: int = 30):
        super().__init__(name=f"pdlab-watch-{tag}", daemon=True)
        self.rest, self.path, self.out, self.tag = rest, path, out, tag
        self.selectors = {"labelSelector": label_selector, "fieldSelector": field_selector}
        self.timeout_s = timeout_s
        self.give_up_after = give_up_after
        self.stopped = threading.Event()
        self.reconnects = 0
        self._resp: Any = None

    def stop(self) -> None:
        self.stopped.set()
        resp = self._resp
        if resp is not None:
            with contextlib.suppress(Exception):
                resp.shutdown() if hasattr(resp, "shutdown") else resp.close()

    def run(self) -> None:
        rv: str | None = None
        failures = 0
        while not self.stopped.is_set():
            try:
                if rv is None:  # no retries inside: this loop is the retry, and counts the failures
                    lst = self.rest.get(self.path, query=dict(self.selectors), what=f"list {self.tag}", retry=False)
                    rv = lst["metadata"]["resourceVersion"]
                    self.out.put((self.tag, "SYNC", lst.get("items", [])))
                    failures = 0
                self._resp = self.rest.stream(self.path, {**self.selectors, "watch": "true", "resourceVersion": rv,
                                                          "allowWatchBookmarks": "true",
                                                          "timeoutSeconds": int(self.timeout_s)}, self.timeout_s + 10)
                if self.stopped.is_set():  # stop() ran while the stream was opening
                    return
                for line in iter_resp_lines(self._resp):
                    ev = json.loads(line)
                    obj = ev.get("object") or {}
                    if ev.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            rv = None  # too old: list again
                            break
                        raise DeployError(f"watch {self.tag}: {obj.get('message')}")
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    if ev.get("type") != "BOOKMARK":
                        self.out.put((self.tag, ev["type"], obj))
                    failures = 0
                self.reconnects += 1
            except Exception as e:  # dropped connections, API errors: tell the consumer, back off, resume
                if self.stopped.is_set():
                    return
                failures += 1
                self.out.put((self.tag, "WATCH_ERROR", e))
                if failures >= self.give_up_after:
                    self.out.put((self.tag, "WATCH_FAILED", WatchFailed(self.tag, failures, e)))
                    return
                self.stopped.wait(min(5.0, 0.1 * 2 ** min(failures, 6)))
            finally:
                resp, self._resp = self._resp, None
                if resp is not None:
                    with contextlib.suppress(Exception):
                        resp.release_conn()


class PortForwarder:
    """127.0.0.1:<port> here → `pod:port` in the cluster; one websocket port-forward per TCP connection."""

    def __init__(self, api: kclient.ApiClient, lock: threading.Lock, namespace: str, pod: str, port: int):
        self.core = kclient.CoreV1Api(api)
        self.lock, self.namespace, self.pod, self.remote_port = lock, namespace, pod, port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.local_port = self.sock.getsockname()[1]
        self.closed = threading.Event()
        self.errors: list[str] = []
        threading.Thread(target=self._accept, name=f"pdlab-pf-{pod}-{port}", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.close()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._bridge, args=(conn,), daemon=True).start()

    def _bridge(self, conn: socket.socket) -> None:
        quiet_proxy_threads()
        pf = None
        try:
            with self.lock:  # the client swaps ApiClient.call_api during the call: one at a time
                pf = k8s_portforward(self.core.connect_get_namespaced_pod_portforward, self.pod, self.namespace,
                                     ports=str(self.remote_port))
            remote = pf.socket(self.remote_port)
            remote.setblocking(True)
            _pump(conn, remote, self.closed)
            err = pf.error(self.remote_port)
            if err:
                self.errors.append(err)
        except Exception as e:
            self.errors.append(f"port-forward to {self.namespace}/{self.pod}:{self.remote_port} failed: {e}")
        finally:
            with contextlib.suppress(OSError):
                conn.close()
            if pf is not None:
                with contextlib.suppress(Exception):
                    pf.close()


_PROXY_THREAD = "Kubernetes port forward proxy"
proxy_errors: list[str] = []  # what the client's proxy threads raised (connection torn down under them)


def _quiet_proxy_errors(args: threading.ExceptHookArgs) -> None:
    """Keep the kubernetes client's port-forward proxy threads from printing tracebacks when a tunnel closes.

    Those threads die with an exception whenever the websocket goes away under them (teardown, Ctrl-C);
    the bridge already reports a failed forward as an error, so a traceback would only alarm the user.
    """
    if args.thread is not None and args.thread.name.startswith(_PROXY_THREAD):
        proxy_errors.append(f"{args.thread.name}: {args.exc_type.__name__}: {args.exc_value}")
        return
    _previous_excepthook(args)


_previous_excepthook = threading.__excepthook__


def quiet_proxy_threads() -> None:
    """Install `_quiet_proxy_errors` as threading.excepthook (once; called when the first tunnel opens, so
    importing pdlab changes no global state). Other threads' exceptions still reach the previous hook."""
    global _previous_excepthook
    if threading.excepthook is not _quiet_proxy_errors:
        _previous_excepthook = threading.excepthook
        threading.excepthook = _quiet_proxy_errors


def _pump(a: socket.socket, b: Any, closed: threading.Event) -> None:
    """Copy bytes both ways until either side closes."""
    socks = [a, b]
    while not closed.is_set():
        r, _, _ = select.select(socks, [], [], 1.0)
        for s in r:
            try:
                data = s.recv(65536)
            except OSError:
                return
            if not data:
                return
            (b if s is a else a).sendall(data)


def call_quietly(fn: Callable[[], Any]) -> Any:
    """Run a best-effort call (teardown, log collection) and swallow what it raises."""
    try:
        return fn()
    except Exception:
        return None
