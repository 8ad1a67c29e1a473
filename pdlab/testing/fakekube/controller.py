"""The simulated control plane and nodes: the RBG controller (rbgcontroller.py, as one released version
behaves: workloads, headless Services, pods `<group>-<role>-<i>`, role dependencies, status, events), a PV binder, the scheduler (GPU/eRDMA accounting,
FailedScheduling), and a kubelet per pod that pulls, starts the container's command *rewritten to run
here* (sglang → the pdlab emulator, DNS names and ports → 127.0.0.1 and free ports), probes readiness,
restarts crashed containers with back-off and stops them on deletion.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import os
import re
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pdlab.core.fsutil import free_port
from pdlab.deploy.manifests import EMULATOR_ARGS_ANNOTATION
from pdlab.testing.fakekube.cluster import Cluster
from pdlab.testing.fakekube.rbgcontroller import RbgController
from pdlab.testing.fakekube.store import now

SCHED_RESOURCES = ("nvidia.com/gpu", "aliyun/erdma")
HOST_FLAGS = {"--host", "--prometheus-host"}
URL_RE = re.compile(r"^(?P<scheme>https?://)?(?P<host>[a-z0-9][a-z0-9.-]*):(?P<port>\d+)(?P<rest>/.*)?$")


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def _qty(v: Any) -> float:
    """A resource quantity as a number (only the plain integer counts the scheduler compares here)."""
    try:
        return float(str(v))
    except ValueError:
        return 0.0


@dataclass
class _Run:
    """What the kubelet knows about one pod's (first) container."""

    proc: asyncio.subprocess.Process | None = None
    restarts: int = 0
    ready: bool = False
    started_at: str | None = None
    waiting: tuple[str, str] | None = ("ContainerCreating", "")
    last_term: dict | None = None
    log: Path | None = None
    prev_log: Path | None = None
    task: asyncio.Task | None = None
    ip: str = ""
    uid: str = ""
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class Controller:
    """Reconciles the fake cluster on every change (and on a short tick)."""

    def __init__(self, cluster: Cluster, log_dir: Path):
        self.c = cluster
        self.rbg = RbgController(cluster)
        self.log_dir = log_dir
        self.runs: dict[tuple[str, str], _Run] = {}
        self.ports: dict[tuple[str, str, int], int] = {}
        self.sched_retry: dict[tuple[str, str], float] = {}
        self._ips = 0
        self._stopping = False

    @property
    def scale(self) -> float:
        return self.c.opt.time_scale

    # -- loop ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        store = self.c.store
        while not self._stopping:
            store.changed.clear()
            try:
                self.reconcile()
            except Exception as e:  # keep the control plane alive; a test sees the symptom
                print(f"fakekube: controller error: {e!r}", file=sys.stderr)
                import traceback

                traceback.print_exc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(store.changed.wait(), timeout=0.1)

    async def shutdown(self) -> None:
        self._stopping = True
        for run in list(self.runs.values()):
            run.stop.set()
            if run.task:
                run.task.cancel()
        for run in list(self.runs.values()):
            await self._kill(run, grace=0.5)

    def reconcile(self) -> None:
        self.c.collect_garbage()
        self.rbg.reconcile()
        self._bind_volumes()
        self._schedule()
        self._kubelet()

    # -- PV binder -------------------------------------------------------------------------------------
    def _bind_volumes(self) -> None:
        for pvc in self.c.store.list("persistentvolumeclaims"):
            if (pvc.get("status") or {}).get("phase") == "Bound":
                continue
            spec = pvc.get("spec") or {}
            want = (spec.get("selector") or {}).get("matchLabels") or {}
            for pv in self.c.store.list("persistentvolumes"):
                pvl = pv["metadata"].get("labels") or {}
                if (pv.get("status") or {}).get("phase") != "Available":
                    continue
                if spec.get("volumeName") not in (None, pv["metadata"]["name"]):
                    continue
                if not spec.get("volumeName") and (not want or any(pvl.get(k) != v for k, v in want.items())):
                    continue
                pv = copy.deepcopy(pv)
                pv["spec"]["claimRef"] = {"kind": "PersistentVolumeClaim", "namespace": pvc["metadata"]["namespace"],
                                          "name": pvc["metadata"]["name"], "uid": pvc["metadata"]["uid"]}
                pv["status"] = {"phase": "Bound"}
                self.c.store.put("persistentvolumes", None, pv)
                pvc = copy.deepcopy(pvc)
                pvc["spec"]["volumeName"] = pv["metadata"]["name"]
                pvc["status"] = {"phase": "Bound", "accessModes": pv["spec"].get("accessModes", []),
                                 "capacity": pv["spec"].get("capacity", {})}
                self.c.store.put("persistentvolumeclaims", pvc["metadata"]["namespace"], pvc)
                break

    # -- scheduler -----------------------------------------------------------------------------------------
    def _schedule(self) -> None:
        pods = self.c.store.list("pods")
        nodes = self.c.store.list("nodes")
        used: dict[str, dict[str, float]] = {n["metadata"]["name"]: {} for n in nodes}
        for p in pods:
            node = p["spec"].get("nodeName")
            if node in used and p.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                for k, v in _requests(p).items():
                    used[node][k] = used[node].get(k, 0) + v
        for p in pods:
            meta = p["metadata"]
            if p["spec"].get("nodeName") or meta.get("deletionTimestamp"):
                continue
            key = (meta["namespace"], meta["name"])
            if time.monotonic() < self.sched_retry.get(key, 0):
                continue
            reason = self._volume_problem(p)
            fit = None
            counts: dict[str, int] = {}
            if reason is None:
                req = _requests(p)
                for n in nodes:
                    alloc = n["status"]["allocatable"]
                    short = [k for k, v in req.items() if _qty(alloc.get(k, 0)) - used[n["metadata"]["name"]].get(k, 0) < v]
                    if not short:
                        fit = n
                        break
                    for k in short:
                        counts[f"Insufficient {k}"] = counts.get(f"Insufficient {k}", 0) + 1
            if fit is not None:
                name = fit["metadata"]["name"]
                for k, v in _requests(p).items():
                    used[name][k] = used[name].get(k, 0) + v
                p = copy.deepcopy(p)
                p["spec"]["nodeName"] = name
                p["status"]["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]
                self.c.store.put("pods", meta["namespace"], p)
                self.c.event(p, "Normal", "Scheduled", f"Successfully assigned {meta['namespace']}/{meta['name']} "
                             f"to {name}", component="default-scheduler")
                self.sched_retry.pop(key, None)
                continue
            total = len(nodes)
            if reason:
                msg = (f"0/{total} nodes are available: {reason}. preemption: 0/{total} nodes are available: "
                       f"{total} Preemption is not helpful for scheduling.")
            else:
                parts = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
                msg = (f"0/{total} nodes are available: {parts}. preemption: 0/{total} nodes are available: "
                       f"{total} No preemption victims found for incoming pod.")
            cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": msg,
                    "lastTransitionTime": now()}
            old = next((c for c in p["status"].get("conditions", []) if c["type"] == "PodScheduled"), None)
            if not old or old.get("message") != msg:
                p = copy.deepcopy(p)
                p["status"]["conditions"] = [cond]
                self.c.store.put("pods", meta["namespace"], p)
            self.c.event(p, "Warning", "FailedScheduling", msg, component="default-scheduler")
            self.sched_retry[key] = time.monotonic() + max(0.2, 20 * self.scale)

    def _volume_problem(self, pod: dict) -> str | None:
        ns = pod["metadata"]["namespace"]
        for vol in pod["spec"].get("volumes", []):
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if not claim:
                continue
            pvc = self.c.store.get("persistentvolumeclaims", ns, claim)
            if pvc is None:
                return f'persistentvolumeclaim "{claim}" not found'
            if (pvc.get("status") or {}).get("phase") != "Bound":
                return "pod has unbound immediate PersistentVolumeClaims"
        return None

    # -- kubelet ------------------------------------------------------------------------------------------
    def _kubelet(self) -> None:
        seen = set()
        for p in self.c.store.list("pods"):
            meta = p["metadata"]
            key = (meta["namespace"], meta["name"])
            seen.add(key)
            run = self.runs.get(key)
            if run is not None and run.uid != meta["uid"]:
                run.stop.set()  # an older pod of the same name: its task ends and removes itself
                continue
            if meta.get("deletionTimestamp"):
                if run is None:
                    self.c.store.remove("pods", meta["namespace"], meta["name"])
                else:
                    run.stop.set()
                continue
            if run is None and p["spec"].get("nodeName"):
                self._ips += 1
                run = _Run(uid=meta["uid"], ip=f"10.0.{self._ips // 250}.{self._ips % 250 + 2}")
                self.runs[key] = run
                run.task = asyncio.get_running_loop().create_task(self._pod_task(key, run))
        for key, run in list(self.runs.items()):
            if key not in seen:
                run.stop.set()

    def _pod(self, key: tuple[str, str], run: _Run) -> dict | None:
        p = self.c.store.get("pods", *key)
        return p if p is not None and p["metadata"]["uid"] == run.uid else None

    async def _sleep(self, run: _Run, seconds: float) -> bool:
        """Sleep unless the pod is being stopped; True when stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.stop.wait(), timeout=max(0.01, seconds))
        return run.stop.is_set()

    async def _pod_task(self, key: tuple[str, str], run: _Run) -> None:
        try:
            await self._pod_lifecycle(key, run)
        except asyncio.CancelledError:
            pass
        except Exception as e:
            print(f"fakekube: kubelet error for {key}: {e!r}", file=sys.stderr)
        finally:
            await self._kill(run, grace=min(3.0, 30 * self.scale))
            pod = self._pod(key, run)
            if pod is not None and pod["metadata"].get("deletionTimestamp"):
                self.c.store.remove("pods", *key)
            if self.runs.get(key) is run:
                del self.runs[key]

    async def _pod_lifecycle(self, key: tuple[str, str], run: _Run) -> None:
        pod = self._pod(key, run)
        if pod is None:
            return
        ctr = pod["spec"]["containers"][0]
        node = pod["spec"]["nodeName"]
        faults = self.c.opt.faults
        # pull
        backoff = 10.0
        first = True
        while True:
            pod = self._pod(key, run)
            if pod is None:
                return
            image = ctr.get("image", "")
            if first:
                self.c.event(pod, "Normal", "Pulling", f'Pulling image "{image}"', host=node)
            if await self._sleep(run, self.c.opt.pull_s * self.scale):
                return
            if not (faults.image_pull and re.search(faults.image_pull, image)):
                self.c.event(pod, "Normal", "Pulled", f'Successfully pulled image "{image}" in '
                             f'{self.c.opt.pull_s:.3f}s ({self.c.opt.pull_s:.3f}s including waiting). '
                             f'Image size: 9876543210 bytes.', host=node)
                break
            ref = image if "/" in image.split(":")[0] else f"docker.io/library/{image}"
            self.c.event(pod, "Warning", "Failed", f'Failed to pull image "{image}": rpc error: code = NotFound '
                         f'desc = failed to pull and unpack image "{ref}": failed to resolve reference "{ref}": '
                         f'{ref}: not found', host=node)
            self.c.event(pod, "Warning", "Failed", "Error: ErrImagePull", host=node)
            run.waiting = ("ErrImagePull", f'failed to pull and unpack image "{ref}": not found')
            self._status(key, run)
            if await self._sleep(run, 2 * self.scale):
                return
            run.waiting = ("ImagePullBackOff", f'Back-off pulling image "{image}"')
            self._status(key, run)
            self.c.event(pod, "Normal", "BackOff", f'Back-off pulling image "{image}"', host=node)
            self.c.event(pod, "Warning", "Failed", "Error: ImagePullBackOff", host=node)
            if await self._sleep(run, backoff * self.scale):
                return
            backoff = min(300.0, backoff * 2)
            first = False
        # run, probe, restart with back-off
        backoff = 10.0
        while True:
            pod = self._pod(key, run)
            if pod is None:
                return
            argv, env = self._command(pod, ctr)
            self.c.event(pod, "Normal", "Created", f"Created container: {ctr['name']}", host=node)
            await self._start(key, run, pod, argv, env)
            self.c.event(pod, "Normal", "Started", f"Started container {ctr['name']}", host=node)
            self._status(key, run)
            exit_code = await self._probe_until_exit(key, run, pod, ctr)
            if run.stop.is_set() or exit_code is None:
                return
            run.restarts += 1
            run.ready = False
            run.last_term = {"terminated": {"exitCode": exit_code, "reason": "Error" if exit_code else "Completed",
                                            "startedAt": run.started_at, "finishedAt": now(),
                                            "containerID": f"containerd://{_hash([key, run.restarts])}"}}
            pname = f"{key[1]}_{key[0]}({run.uid})"
            run.waiting = ("CrashLoopBackOff", f"back-off {int(backoff)}s restarting failed container={ctr['name']} "
                                               f"pod={pname}")
            self._status(key, run)
            self.c.event(pod, "Warning", "BackOff", f"Back-off restarting failed container {ctr['name']} in pod "
                         f"{pname}", host=node)
            if await self._sleep(run, backoff * self.scale):
                return
            backoff = min(300.0, backoff * 2)

    async def _start(self, key: tuple[str, str], run: _Run, pod: dict, argv: list[str] | None,
                     env: dict[str, str]) -> None:
        ns, name = key
        ctr = pod["spec"]["containers"][0]["name"]
        if run.log is not None:
            run.prev_log = run.log
        run.log = self.log_dir / f"{ns}_{name}_{ctr}_{run.restarts}.log"
        run.log.write_text("")
        run.started_at = now()
        run.waiting = None
        if argv is None:  # a command this fake cannot run: the container idles, "running"
            run.proc = None
            return
        fh = run.log.open("ab")
        try:
            run.proc = await asyncio.create_subprocess_exec(
                *argv, stdout=fh, stderr=asyncio.subprocess.STDOUT, stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        finally:
            fh.close()

    async def _probe_until_exit(self, key: tuple[str, str], run: _Run, pod: dict, ctr: dict) -> int | None:
        probe = ctr.get("readinessProbe")
        delay = (probe or {}).get("initialDelaySeconds", 0) * self.scale
        period = min(1.0, max(0.05, (probe or {}).get("periodSeconds", 10) * self.scale))
        start = time.monotonic()
        fails = 0
        while True:
            if run.proc is not None and run.proc.returncode is not None:
                return run.proc.returncode
            if run.proc is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(run.proc.wait()), timeout=period)
                if run.proc.returncode is not None:
                    return run.proc.returncode
            elif await self._sleep(run, period):
                return None
            if run.stop.is_set():
                return None
            if time.monotonic() - start < delay:
                continue
            ok, err = await self._probe(key, pod, ctr, probe)
            if ok != run.ready:
                if ok or fails + 1 >= (probe or {}).get("failureThreshold", 3):
                    run.ready = ok
                    self._status(key, run)
            fails = 0 if ok else fails + 1
            if not ok and fails % 5 == 1:
                self.c.event(pod, "Warning", "Unhealthy", f"Readiness probe failed: {err}", host=pod["spec"]["nodeName"])

    async def _probe(self, key: tuple[str, str], pod: dict, ctr: dict, probe: dict | None) -> tuple[bool, str]:
        if not probe or "exec" in probe or self.runs[key].proc is None:
            return True, ""
        act = probe.get("tcpSocket") or probe.get("httpGet") or {}
        port = self._named_port(ctr, act.get("port"))
        local = self.port_for(key[0], key[1], port)
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", local), 1.0)
        except (OSError, TimeoutError):
            return False, f"dial tcp {self.runs[key].ip}:{port}: connect: connection refused"
        try:
            if "httpGet" in probe:
                writer.write(f"GET {act.get('path', '/')} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 1.0)
                code = int(line.split()[1]) if len(line.split()) > 1 else 0
                if not 200 <= code < 400:
                    return False, f"HTTP probe failed with statuscode: {code}"
            return True, ""
        except (OSError, TimeoutError, ValueError) as e:
            return False, str(e)
        finally:
            writer.close()

    @staticmethod
    def _named_port(ctr: dict, port: Any) -> int:
        if isinstance(port, str) and not port.isdigit():
            for p in ctr.get("ports", []):
                if p.get("name") == port:
                    return int(p["containerPort"])
        return int(port or 8000)

    async def _kill(self, run: _Run, grace: float) -> None:
        proc = run.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=max(0.2, grace))
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=2)

    def kill_now(self) -> None:
        """Synchronous last resort (interpreter exit): SIGKILL every container's process group."""
        for run in self.runs.values():
            if run.proc is not None and run.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(run.proc.pid, signal.SIGKILL)

    def _status(self, key: tuple[str, str], run: _Run) -> None:
        pod = self._pod(key, run)
        if pod is None:
            return
        ctr = pod["spec"]["containers"][0]
        if run.waiting:
            state = {"waiting": {"reason": run.waiting[0], **({"message": run.waiting[1]} if run.waiting[1] else {})}}
        else:
            state = {"running": {"startedAt": run.started_at}}
        cs = {"name": ctr["name"], "image": ctr.get("image"), "imageID": "", "ready": run.ready,
              "restartCount": run.restarts, "started": run.waiting is None, "state": state,
              "lastState": run.last_term or {}}
        if run.started_at or run.restarts:
            cs["containerID"] = f"containerd://{_hash([key, run.restarts, 'c'])}"
        ts = now()
        ready = "True" if run.ready else "False"
        conds = [{"type": "PodReadyToStartContainers", "status": "True"}, {"type": "Initialized", "status": "True"},
                 {"type": "Ready", "status": ready}, {"type": "ContainersReady", "status": ready},
                 {"type": "PodScheduled", "status": "True"}]
        for c in conds:
            old = next((o for o in pod["status"].get("conditions", []) if o["type"] == c["type"]), None)
            c["lastTransitionTime"] = old["lastTransitionTime"] if old and old.get("status") == c["status"] \
                and old.get("lastTransitionTime") else ts
            if c["status"] == "False" and c["type"] in ("Ready", "ContainersReady"):
                c["reason"] = "ContainersNotReady"
                c["message"] = f"containers with unready status: [{ctr['name']}]"
        node = self.c.store.get("nodes", None, pod["spec"]["nodeName"])
        host_ip = node["status"]["addresses"][0]["address"] if node else ""
        status = {"phase": "Running" if run.started_at else "Pending", "conditions": conds, "hostIP": host_ip,
                  "hostIPs": [{"ip": host_ip}], "podIP": run.ip, "podIPs": [{"ip": run.ip}],
                  "startTime": pod["status"].get("startTime") or ts, "containerStatuses": [cs],
                  "qosClass": pod["status"].get("qosClass", "Burstable")}
        if status != pod["status"]:
            pod = copy.deepcopy(pod)
            pod["status"] = status
            self.c.store.put("pods", key[0], pod)

    # -- logs -------------------------------------------------------------------------------------------
    def logs(self, ns: str, name: str, previous: bool = False) -> str | None:
        run = self.runs.get((ns, name))
        if run is None:
            return None
        path = run.prev_log if previous else run.log
        if path is None or not path.exists():
            return None
        return path.read_text(errors="replace")

    # -- the command, rewritten to run here ------------------------------------------------------------
    def port_for(self, ns: str, pod: str, port: int) -> int:
        """The local port standing in for `port` of `pod` (allocated on first use, stable for the pod name)."""
        key = (ns, pod, int(port))
        if key not in self.ports:
            taken = set(self.ports.values())
            p = free_port()
            while p in taken:
                p = free_port()
            self.ports[key] = p
        return self.ports[key]

    def _command(self, pod: dict, ctr: dict) -> tuple[list[str] | None, dict[str, str]]:
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        env: dict[str, str] = {}
        for e in ctr.get("env", []):
            if "value" in e:
                env[e["name"]] = _expand(str(e["value"]), env)
            else:
                path = ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath", "")
                env[e["name"]] = {"status.podIP": "127.0.0.1", "metadata.name": name, "metadata.namespace": ns,
                                  "spec.nodeName": pod["spec"].get("nodeName", ""),
                                  "status.hostIP": "127.0.0.1"}.get(path, "")
        faults = self.c.opt.faults
        if faults.crash and re.search(faults.crash, name):
            script = ("import sys, time\n"
                      f"for line in {list(faults.crash_log)!r}:\n"
                      "    print(line, flush=True)\n    time.sleep(0.02)\nsys.exit(1)\n")
            return [sys.executable, "-c", script], env
        if not self.c.opt.run_containers:
            return None, env
        argv = [_expand(a, env) for a in [*ctr.get("command", []), *ctr.get("args", [])]]
        if len(argv) >= 3 and argv[0] in ("sh", "bash", "/bin/sh", "/bin/bash") and argv[1] == "-c":
            argv = shlex.split(argv[2])
        if "-m" not in argv:
            return None, env
        i = argv.index("-m")
        module, rest = argv[i + 1], argv[i + 2:]
        if module == "sglang.launch_server":
            prefix = list(self.c.opt.worker_cmd)
            extra = _annotated_emu_args(pod) + list(self.c.opt.emu_args)
            if self.c.opt.emu_time_scale is not None:
                extra += ["--emu-time-scale", str(self.c.opt.emu_time_scale)]
        elif module == "sglang_router.launch_router":
            prefix, extra = list(self.c.opt.router_cmd), []
        else:
            return None, env
        return prefix + self._rewrite(ns, name, rest) + extra, env

    def _resolve(self, ns: str, host: str) -> tuple[str, str] | None:
        """(namespace, pod) standing behind an in-cluster DNS name, or None when the name would not resolve:
        a pod name needs its Service (Cluster.pod_dns); a Service name resolves to the first pod it selects."""
        namespaces = {n["metadata"]["name"] for n in self.c.store.list("namespaces")}
        target_ns, sub, first = _split_host(ns, host, namespaces)
        if sub is not None:
            name = self.c.pod_dns(target_ns, first, sub)
            return (target_ns, name) if name else None
        svc = self.c.store.get("services", target_ns, first)
        if svc is None:
            return None
        sel = (svc.get("spec") or {}).get("selector") or {}
        pods = [p for p in self.c.store.list("pods", target_ns) if sel and all(
            (p["metadata"].get("labels") or {}).get(k) == v for k, v in sel.items())]
        return (target_ns, pods[0]["metadata"]["name"]) if pods else (target_ns, first)

    def _rewrite(self, ns: str, pod: str, args: list[str]) -> list[str]:
        """Hosts → 127.0.0.1; this pod's ports → its local ports; `<pod>.<svc>:<port>` URLs → local ports."""
        out: list[str] = []
        prefill_pod: tuple[str, str] | None = None  # `--prefill URL BOOTSTRAP_PORT`: the URL's pod
        for tok in args:
            prev = out[-1] if out else ""
            m = URL_RE.match(tok)
            if prev in HOST_FLAGS:
                out.append("127.0.0.1")
            elif prev.startswith("--") and prev.endswith("port") and tok.isdigit():
                out.append(str(self.port_for(ns, pod, int(tok))))
            elif m and "." in m.group("host") and not m.group("host").replace(".", "").isdigit():
                target = self._resolve(ns, m.group("host"))
                if target is None:  # NXDOMAIN: the name stays unresolvable for the process too
                    out.append(f"{m.group('scheme') or ''}{m.group('host')}.nxdomain.invalid:{m.group('port')}"
                               f"{m.group('rest') or ''}")
                    prefill_pod = None
                    continue
                local = self.port_for(*target, int(m.group("port")))
                out.append(f"{m.group('scheme') or ''}127.0.0.1:{local}{m.group('rest') or ''}")
                prefill_pod = target if prev == "--prefill" else None
                continue
            elif prefill_pod and tok.isdigit():
                out.append(str(self.port_for(*prefill_pod, int(tok))))
            else:
                out.append(tok)
            prefill_pod = None
        return out


def _split_host(ns: str, host: str, namespaces: set[str]) -> tuple[str, str | None, str]:
    """(namespace, subdomain or None for a Service name, first label) of an in-cluster DNS name:
    `<host>.<subdomain>[.<ns>[.svc[.cluster.local]]]` names a pod, `<svc>[.<ns>[.svc…]]` a Service."""
    labels = host.split(".")
    if len(labels) >= 2 and (labels[1] in namespaces or labels[1] == "svc"):
        return (labels[1] if labels[1] != "svc" else ns), None, labels[0]
    return (labels[2] if len(labels) > 2 and labels[2] != "svc" else ns), labels[1], labels[0]


def _annotated_emu_args(pod: dict) -> list[str]:
    """The experiment's `--emu-*` flags that the k8s backend puts on pods of an emulated cluster (JSON list);
    anything that is not such a list of `--emu-*` flags and their values is ignored."""
    raw = (pod["metadata"].get("annotations") or {}).get(EMULATOR_ARGS_ANNOTATION)
    try:
        args = json.loads(raw) if raw else []
    except ValueError:
        return []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        return []
    flags = [a for a in args if a.startswith("--")]
    return args if flags and all(a.startswith("--emu-") for a in flags) else []


def _expand(s: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion (unknown references stay as they are; `$$` escapes)."""
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                  lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), s)


def _requests(pod: dict) -> dict[str, float]:
    out: dict[str, float] = {}
    for ctr in pod["spec"].get("containers", []):
        res = ctr.get("resources") or {}
        req = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for k in SCHED_RESOURCES:
            if k in req:
                out[k] = out.get(k, 0) + _qty(req[k])
    return out


