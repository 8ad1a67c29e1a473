"""Local backend: the whole topology as processes on 127.0.0.1 — emulated workers plus the real PD router.

Each worker is `python -m pdlab.emulator` (or the real `sglang.launch_server` with `backend.engine: sglang`)
with the same argument list the k8s manifests render (`pdlab.experiment.commands`); the router is
`python -m sglang_router.launch_router`, started once every worker's `/health` answers 200. Every process
runs in its own process group with its log at `<run_dir>/logs/<name>.log`, and a state file
(`$PDLAB_STATE_DIR` or `~/.pdlab/local`, one `<run_id>.json` per deployment) lets `cleanup_local()` end
what a crashed kernel left behind — matching pid, start time and command line, so nothing else is touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pdlab.core.errors import DeployError, ResourceError
from pdlab.core.fsutil import free_port, write_atomic
from pdlab.core.schema import timestamped
from pdlab.deploy.base import Backend, Deployment, Endpoint
from pdlab.deploy.coldstart import ColdStart
from pdlab.experiment import commands
from pdlab.experiment.topology import ROUTER_ROLE, Role, Topology, build

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment

HOST = "127.0.0.1"
STATE_ENV = "PDLAB_STATE_DIR"
WORKERS_PER_CORE = 4
MIN_CAPACITY = 4
WORKER_MEM_BYTES = 300 * 2**20  # an emulated worker's resident size with headroom (measured ≈ 110 MiB RSS)
LOG_TAIL = 20
STOP_GRACE_S = 3.0


# --------------------------------------------------------------------------- machine capacity


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def capacity() -> int:
    """How many emulated worker processes this machine can host: ~4 per core (min 4), capped by free memory."""
    by_cpu = max(MIN_CAPACITY, WORKERS_PER_CORE * (os.cpu_count() or 1))
    mem = _available_memory()
    by_mem = max(MIN_CAPACITY, mem // WORKER_MEM_BYTES) if mem else by_cpu
    return int(min(by_cpu, by_mem))


def worker_processes(topo: Topology) -> int:
    """Worker processes the local backend starts: one per instance, whatever its TP (the router not counted)."""
    return sum(r.replicas for r in topo.workers)


def check_capacity(exp: Experiment, topo: Topology | None = None) -> None:
    """Raise ResourceError when the topology needs more worker processes than `capacity()`."""
    topo = topo or build(exp)
    need, cap = worker_processes(topo), capacity()
    if need > cap:
        roles = " + ".join(f"{r.replicas} {r.name}" for r in topo.workers)
        raise ResourceError(
            f"the topology needs {need} worker processes ({roles}) but this machine "
            f"({os.cpu_count()} cores) hosts at most {cap} emulated workers; lower the replicas "
            f"(e.g. --set topology.ratio=1P1D) or run it on a cluster with --set backend.kind=k8s")


# --------------------------------------------------------------------------- /proc helpers


def proc_start_time(pid: int) -> int | None:
    """Start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat); None if gone/zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2:].split()
    if rest[0] in ("Z", "X"):
        return None
    return int(rest[19])


def _proc_ids(pid: int) -> tuple[int, int] | None:
    """(pgid, sid) of a live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2:].split()
    return int(rest[2]), int(rest[3])


def proc_cmdline(pid: int) -> list[str] | None:
    """A process's argv from /proc (NUL padding of a rewritten title dropped), or None."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.rstrip(b"\0").split(b"\0")] if raw.strip(b"\0") else []


# sglang-router rewrites its process title: /proc/<pid>/cmdline becomes this once it runs
ROUTER_TITLE = ["sglang::router"]


def _matches(rec: dict) -> bool:
    """The recorded process is still the one running under that pid: same start time and command line."""
    pid = rec["pid"]
    if proc_start_time(pid) != rec.get("start_time"):
        return False
    return proc_cmdline(pid) in (rec.get("cmd"), *rec.get("titles", []))


def _session_members(sid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            ids = _proc_ids(int(p.name))
            if ids and ids[1] == sid and proc_start_time(int(p.name)) is not None:
                out.append(int(p.name))
    return out


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --------------------------------------------------------------------------- state files


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A preexec_fn that makes the child get `sig` when pdlab dies, even by SIGKILL (Linux PR_SET_PDEATHSIG).

    Without it, workers and the router of a killed `pdlab` run on until `pdlab cleanup`. The signal fires when the
    *thread* that started the child ends, so deployments are started from the main thread (as the CLI, notebooks
    and sweeps do). Elsewhere (no prctl) it returns None and `pdlab cleanup` stays the way out."""
    if not sys.platform.startswith("linux") or threading.current_thread() is not threading.main_thread():
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up here: the child must not load libraries
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # pdlab died before prctl took effect
            os._exit(1)
    return preexec


def state_dir() -> Path:
    """Where deployment state files live: $PDLAB_STATE_DIR or ~/.pdlab/local."""
    return Path(os.environ.get(STATE_ENV) or Path.home() / ".pdlab" / "local")


def _write_json_atomic(path: Path, data: dict) -> None:
    write_atomic(path, json.dumps(data, indent=1))


# --------------------------------------------------------------------------- processes


@dataclass
class _Proc:
    name: str
    role: str
    index: int
    cmd: list[str]
    log: Path
    port: int
    bootstrap_port: int | None = None
    metrics_port: int | None = None
    popen: subprocess.Popen | None = None
    start_time: int | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def record(self) -> dict[str, Any]:
        titles = [ROUTER_TITLE] if self.role == ROUTER_ROLE else []
        return {"name": self.name, "role": self.role, "pid": self.pid, "pgid": self.pid,
                "start_time": self.start_time, "cmd": self.cmd, "titles": titles, "log": str(self.log),
                "url": self.url}


def _tail(path: Path, n: int = LOG_TAIL) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:]) or "(log is empty)"


def _stop(procs: list[_Proc], grace: float = STOP_GRACE_S) -> None:
    """SIGTERM each live process group, wait up to `grace` s, then SIGKILL; reaps the leaders."""
    live = [p for p in procs if p.popen is not None]
    for p in live:
        if p.popen.poll() is None:
            _signal_group(p.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in live:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
    for p in live:
        _signal_group(p.popen.pid, signal.SIGKILL)  # the group's children, and a leader that ignored SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.popen.wait(timeout=2.0)


def _teardown(procs: list[_Proc], state_file: Path) -> None:
    """Finaliser body: must not reference the Deployment (weakref.finalize)."""
    _stop(procs)
    procs.clear()
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()


def _free_port(taken: set[int]) -> int:
    for _ in range(50):
        port = free_port(HOST)
        if port not in taken:
            taken.add(port)
            return port
    raise DeployError("could not find a free TCP port on 127.0.0.1")


def _http() -> httpx.Client:
    return httpx.Client(timeout=2.0, trust_env=False)


# --------------------------------------------------------------------------- deployment


class LocalDeployment(Deployment):
    """A topology running as local processes; teardown kills every process group it started."""

    def __init__(self, exp: Experiment, topology: Topology, *, run_id: str, run_dir: Path,
                 worker_cmd: list[str] | None = None, ready_timeout: float | None = None):
        self.experiment = exp
        self.topology = topology
        self.run_id = run_id
        self.run_dir = Path(run_dir)
        self.log_dir = self.run_dir / "logs"
        self.state_file = state_dir() / f"{run_id}.json"
        self.ready_timeout = ready_timeout or exp.backend.ready_timeout_s
        self._worker_cmd = worker_cmd or _worker_prefix(exp)
        self._ports: set[int] = set()
        self._procs: list[_Proc] = []  # shared with the finaliser; mutated in place
        self._router: _Proc | None = None
        self._roles = {r.name: r for r in topology.workers}
        self._finalizer = weakref.finalize(self, _teardown, self._procs, self.state_file)
        self._cold = ColdStart()

    # -- public API --------------------------------------------------------------------------
    @property
    def router_url(self) -> str:
        if self._router is None:
            raise DeployError("the router has not been started")
        return self._router.url

    @property
    def endpoints(self) -> list[Endpoint]:
        order = {ROUTER_ROLE: 0, "prefill": 1, "decode": 2, "worker": 3}
        procs = sorted(self._procs, key=lambda p: (order.get(p.role, 9), p.index))
        return [Endpoint(role=p.role, name=p.name, url=p.url,
                         metrics_url=(f"http://{HOST}:{p.metrics_port}/metrics" if p.role == ROUTER_ROLE
                                      else p.url + "/metrics"),
                         index=p.index, pid=p.pid, node="localhost", bootstrap_port=p.bootstrap_port)
                for p in procs]

    def notes(self) -> list[str]:
        return [f"logs: {self.log_dir}"]

    def cold_start(self) -> dict[str, Any]:
        """Spawn → /health per process, and when the router first listed every worker healthy."""
        return self._cold.as_dict()

    def table(self) -> list[dict[str, Any]]:
        rows = super().table()
        logs = {p.name: str(p.log) for p in self._procs}
        for r in rows:
            r["log"] = logs.get(r["name"])
        return rows

    def start(self) -> None:
        """Start every worker, wait for their /health, then start the router (not waiting for it)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._cold.applied()
        try:
            for role in self.topology.workers:
                for i in range(role.replicas):
                    self._start_worker(role, i)
            self._wait_workers(self._workers())
            self._start_router()
        except BaseException:
            self.teardown()
            raise

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the workers answer /health and the router lists all of them healthy."""
        try:
            self._wait_workers(self._workers(), timeout)
            self._wait_router(timeout)
            self._cold.router_ready()
        except BaseException:
            self.teardown()
            raise

    def logs(self, name: str, tail: int = 100) -> str:
        for p in self._procs:
            if p.name == name:
                return _tail(p.log, tail)
        raise KeyError(f"no process '{name}' (have: {', '.join(p.name for p in self._procs)})")

    def scale(self, role: str, replicas: int) -> None:
        """Start/stop workers of `role` and tell the router through its HTTP API (sglang-router 0.3.2:
        `POST /workers` with worker_type/bootstrap_port, `DELETE /workers/{id}`), which works in PD mode
        too; if the API refuses (e.g. mini_lb), the router is restarted on the same port with the new list."""
        if role not in self._roles:
            raise DeployError(f"cannot scale '{role}': worker roles are {', '.join(self._roles)}")
        if replicas < 1:
            raise DeployError(f"cannot scale '{role}' to {replicas}: a role needs at least one replica")
        current = sorted((p for p in self._workers() if p.role == role), key=lambda p: p.index)
        need, cap = len(self._workers()) - len(current) + replicas, capacity()
        if need > cap:
            raise ResourceError(f"scaling {role} to {replicas} needs {need} worker processes but this machine "
                                f"hosts at most {cap}; scale less or use --set backend.kind=k8s")
        added: list[_Proc] = []
        try:
            next_index = max((p.index for p in current), default=-1) + 1
            for k in range(replicas - len(current)):
                added.append(self._start_worker(self._roles[role], next_index + k))
            self._wait_workers(added)
        except BaseException:
            _stop(added)
            for p in added:
                self._procs.remove(p)
            self._write_state()
            raise
        removed = current[replicas:]
        try:
            for p in added:
                self._router_add(p)
            for p in removed:
                self._router_remove(p)
            self._wait_router(None, [p for p in self._workers() if p not in removed])
        except (httpx.HTTPError, DeployError):
            self._restart_router(exclude=removed)
        _stop(removed)
        for p in removed:
            self._procs.remove(p)
        r = self._roles[role]
        self._roles[role] = Role(role, replicas, r.tp, r.mode, r.args)
        self.topology = Topology(self.topology.kind, tuple(self._roles.get(x.name, x) for x in self.topology.roles),
                                 self.topology.router_impl)
        self._write_state()

    def teardown(self) -> None:
        self._finalizer()  # runs _teardown once; later calls (and the atexit hook) do nothing

    def check_alive(self) -> None:
        """Raise DeployError if any process has exited (for long holds like `pdlab deploy`)."""
        for p in self._procs:
            if p.popen is not None and p.popen.poll() is not None:
                raise self._died(p)

    # -- internals -----------------------------------------------------------------------------
    def _workers(self) -> list[_Proc]:
        return [p for p in self._procs if p.role != ROUTER_ROLE]

    def _start_worker(self, role: Role, index: int) -> _Proc:
        port = _free_port(self._ports)
        bport = _free_port(self._ports) if role.mode == "prefill" else None
        args = commands.worker_args(self.experiment, role, host=HOST, port=port, bootstrap_port=bport)
        proc = _Proc(f"{self.experiment.name}-{role.name}-{index}", role.name, index,
                     [*self._worker_cmd, *args, *_emulator_flags(self.experiment, self._worker_cmd, role.name)],
                     self.log_dir / f"{self.experiment.name}-{role.name}-{index}.log", port, bport)
        self._spawn(proc)
        return proc

    def _router_cmd(self, workers: list[_Proc], port: int, metrics_port: int | None) -> list[str]:
        pd = self.topology.kind == "pd"
        extra = {"prometheus-port": metrics_port, "prometheus-host": HOST} if metrics_port else None
        args = commands.router_args(
            self.experiment,
            prefill=[(p.url, p.bootstrap_port) for p in workers if p.role == "prefill"] if pd else None,
            decode=[p.url for p in workers if p.role == "decode"] if pd else None,
            workers=None if pd else [p.url for p in workers],
            host=HOST, port=port, extra=extra)
        module = args[1]
        if importlib.util.find_spec(module.split(".")[0]) is None:
            raise DeployError(f"the router module '{module}' is not installed; pip install sglang-router "
                              f"or set topology.router.impl=sglang-router")
        return [sys.executable, *args]

    def _start_router(self, port: int | None = None, metrics_port: int | None = None,
                      workers: list[_Proc] | None = None) -> None:
        port = port or _free_port(self._ports)
        if self.topology.router_impl == "sglang-router":
            metrics_port = metrics_port or _free_port(self._ports)
        name = f"{self.experiment.name}-{ROUTER_ROLE}-0"
        proc = _Proc(name, ROUTER_ROLE, 0, self._router_cmd(self._workers() if workers is None else workers, port, metrics_port),
                     self.log_dir / f"{name}.log", port, metrics_port=metrics_port)
        self._spawn(proc)
        self._router = proc

    def _restart_router(self, exclude: list[_Proc]) -> None:
        """Fallback for routers without the worker API: restart on the same ports with the new worker list."""
        old = self._router
        assert old is not None
        _stop([old])
        self._procs.remove(old)
        keep = [p for p in self._workers() if p not in exclude]
        self._start_router(old.port, old.metrics_port, keep)
        self._wait_router(None, keep)

    def _spawn(self, proc: _Proc) -> None:
        proc.log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(proc.log, "ab") as log:
            try:
                proc.popen = subprocess.Popen(proc.cmd, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True,
                                              cwd=self.run_dir, env=env, preexec_fn=die_with_parent())
            except OSError as e:
                raise DeployError(f"{proc.name}: cannot start {proc.cmd[0]}: {e.strerror}") from None
        proc.start_time = proc_start_time(proc.popen.pid)
        self._cold.mark(proc.name, proc.role, "started", node="localhost")
        self._procs.append(proc)
        self._write_state()

    def _write_state(self) -> None:
        _write_json_atomic(self.state_file, {
            "run_id": self.run_id, "experiment": self.experiment.name, "run_dir": str(self.run_dir),
            "owner": {"pid": os.getpid(), "start_time": proc_start_time(os.getpid())},
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "processes": [p.record() for p in self._procs if p.popen is not None]})

    def _died(self, p: _Proc) -> DeployError:
        code = p.popen.poll() if p.popen else None
        how = f"exited with code {code}" if code is not None and code >= 0 else f"was killed by signal {-code}"
        return DeployError(f"{p.name} {how} (pid {p.pid}); last lines of {p.log}:\n{_tail(p.log)}")

    def _deadline(self, timeout: float | None) -> float:
        return time.monotonic() + (timeout if timeout is not None else self.ready_timeout)

    def _wait_workers(self, procs: list[_Proc], timeout: float | None = None) -> None:
        deadline, pending = self._deadline(timeout), list(procs)
        with _http() as client:
            while pending:
                for p in list(pending):
                    if p.popen.poll() is not None:
                        raise self._died(p)
                    with contextlib.suppress(httpx.HTTPError):
                        if client.get(p.url + "/health", timeout=1.0).status_code == 200:
                            pending.remove(p)
                            self._cold.mark(p.name, p.role, "ready", node="localhost")
                if pending and time.monotonic() > deadline:
                    p = pending[0]
                    raise DeployError(f"{p.name} did not answer {p.url}/health with 200 within "
                                      f"{timeout or self.ready_timeout:.0f} s (raise backend.ready_timeout_s); "
                                      f"last lines of {p.log}:\n{_tail(p.log)}")
                if pending:
                    time.sleep(0.1)

    def _router_workers(self, client: httpx.Client) -> dict[str, dict]:
        r = client.get(self.router_url + "/workers")
        r.raise_for_status()
        return {w["url"]: w for w in r.json().get("workers", [])}

    def _wait_router(self, timeout: float | None, workers: list[_Proc] | None = None) -> None:
        """Router /health is 200 and its /workers lists exactly `workers` (default: all ours), all healthy."""
        router, deadline = self._router, self._deadline(timeout)
        assert router is not None
        workers = self._workers() if workers is None else workers
        want, seen = {p.url for p in workers}, "nothing"
        with _http() as client:
            while True:
                if router.popen.poll() is not None:
                    raise self._died(router)
                for p in workers:
                    if p.popen.poll() is not None:
                        raise self._died(p)
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    if client.get(router.url + "/health", timeout=1.0).status_code == 200:
                        if self.topology.router_impl != "sglang-router":
                            return
                        listed = self._router_workers(client)
                        seen = ", ".join(sorted(listed)) or "no workers"
                        if set(listed) == want and all(w.get("is_healthy", True) for w in listed.values()):
                            return
                if time.monotonic() > deadline:
                    raise DeployError(
                        f"the router {router.name} did not become ready with all {len(want)} workers within "
                        f"{timeout or self.ready_timeout:.0f} s (it lists {seen}); "
                        f"last lines of {router.log}:\n{_tail(router.log)}")
                time.sleep(0.1)

    def _router_add(self, p: _Proc) -> None:
        body: dict[str, Any] = {"url": p.url}
        if self.topology.kind == "pd":
            body["worker_type"] = p.role
            if p.bootstrap_port:
                body["bootstrap_port"] = p.bootstrap_port
        with _http() as client:
            client.post(self.router_url + "/workers", json=body).raise_for_status()

    def _router_remove(self, p: _Proc) -> None:
        with _http() as client:
            w = self._router_workers(client).get(p.url)
            if w is not None:
                client.delete(f"{self.router_url}/workers/{w['id']}").raise_for_status()


def _worker_prefix(exp: Experiment) -> list[str]:
    if exp.backend.engine == "sglang":
        if importlib.util.find_spec("sglang") is None:
            raise DeployError("backend.engine is 'sglang' but the sglang package is not installed here; "
                              "pip install 'sglang[all]' on a GPU machine, or use --set backend.engine=emulator")
        return [sys.executable, "-m", "sglang.launch_server"]
    return [sys.executable, "-m", "pdlab.emulator"]


def _emulator_flags(exp: Experiment, prefix: list[str], role: str | None = None) -> list[str]:
    """The `--emu-*` flags of the emulated worker of `role` (none for the real sglang)."""
    return [] if "sglang.launch_server" in prefix else commands.emulator_args(exp, role)


# --------------------------------------------------------------------------- backend


def default_run_id(exp: Experiment) -> str:
    """`<exp.name>-<UTC yyyymmdd-hhmmss>`, suffixed -2, -3… if a state file already uses it."""
    base = timestamped(exp.name)
    run_id, n = base, 1
    while (state_dir() / f"{run_id}.json").exists():
        n += 1
        run_id = f"{base}-{n}"
    return run_id


def backend_for(exp: Experiment) -> LocalBackend:
    """The registry's factory for `backend.kind: local`."""
    return LocalBackend()


class LocalBackend(Backend):
    """Runs topologies as local processes (the embedded default: no GPU, no cluster).

    `worker_cmd` replaces the worker's interpreter+module prefix (tests, custom engines); the sglang
    flags from `pdlab.experiment.commands.worker_args` are appended to it, plus `--emu-*` flags unless it is sglang.
    """

    name = "local"

    def __init__(self, *, worker_cmd: list[str] | None = None):
        self.worker_cmd = worker_cmd

    def deploy(self, exp: Experiment, *, run_dir: Path | None = None, run_id: str | None = None,
               wait: bool = True) -> LocalDeployment:
        """Start the topology. Logs go to `<run_dir>/logs/`; run_dir defaults to
        `$TMPDIR/pdlab/<run_id>` (the runner passes `results/<sweep>/<run>`)."""
        topo = build(exp)
        check_capacity(exp, topo)
        run_id = run_id or default_run_id(exp)
        run_dir = Path(run_dir) if run_dir is not None else Path(tempfile.gettempdir()) / "pdlab" / run_id
        dep = LocalDeployment(exp, topo, run_id=run_id, run_dir=run_dir,
                              worker_cmd=self.worker_cmd or _worker_prefix(exp))
        dep.start()
        if wait:
            dep.wait_ready()
        return dep

    def cleanup(self, *, experiment: str | None = None) -> list[str]:
        return cleanup_local(experiment)


def cleanup_local(experiment: str | None = None) -> list[str]:
    """End processes that crashed local deployments left (their owner process is gone) and remove their
    state files. Only processes whose pid, start time and command line match the state file are signalled
    (plus the surviving members of their own sessions); live deployments are left alone."""
    removed: list[str] = []
    d = state_dir()
    if not d.is_dir():
        return removed
    for f in sorted(d.glob("*.json")):
        try:
            state = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if experiment is not None and state.get("experiment") != experiment:
            continue
        owner = state.get("owner") or {}
        if owner.get("pid") and proc_start_time(owner["pid"]) == owner.get("start_time"):
            continue  # its kernel/CLI is alive and will tear it down
        groups: list[int] = []
        for rec in state.get("processes", []):
            pid = rec.get("pid")
            if not pid:
                continue
            if _matches(rec):
                groups.append(pid)
                removed.append(f"{rec['name']} (pid {pid})")
            elif proc_start_time(pid) is None and _session_members(pid):
                groups.append(pid)  # the leader is gone but its session survives: our children
                removed.append(f"{rec['name']} (children of pid {pid})")
        for g in groups:
            _signal_group(g, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while groups and time.monotonic() < deadline and any(_session_members(g) for g in groups):
            time.sleep(0.05)
        for g in groups:
            if _session_members(g):
                _signal_group(g, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            f.unlink()
        removed.append(f"state file {f}")
    return removed
