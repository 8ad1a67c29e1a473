"""Kubernetes backend: the experiment as a RoleBasedGroup (+ Services, optional model PV/PVC/Secret) applied
with the `kubernetes` client, watched until ready while pod and RoleBasedGroup events are surfaced, reached by
port-forward (through the client's websocket, no kubectl), in-cluster service DNS or a given URL, scaled in
place, and always torn down. Every object carries `pdlab.io/experiment` and `pdlab.io/run`, which is how
`cleanup` finds leaks without touching anything else.

Nothing depends on the RBG controller's version (docs/rbg-controllers.md): pods are found by pdlab's own labels
(`pdlab.io/run`, `pdlab.io/role`), readiness comes from the pods themselves (the expected count per role, all
Ready, all carrying the applied template's hash) with the RBG status only as a hint, and worker addresses come
from the pods' hostname/subdomain.
"""

from __future__ import annotations

import atexit
import copy
import queue
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pdlab.core.errors import DeployError, ResourceError
from pdlab.core.schema import timestamped
from pdlab.deploy import manifests as M
from pdlab.deploy.base import Backend, Deployment, Endpoint
from pdlab.deploy.k8s_client import (
    ApiStatusError,
    PortForwarder,
    Rest,
    Watch,
    WatchFailed,
    call_quietly,
    load_client,
    path_for,
)
from pdlab.experiment.topology import ROUTER_ROLE, Topology, build

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment, K8sSpec

GROUP = M.GROUP
CRD_NAME = f"rolebasedgroups.{GROUP}"
FAIL_WAITING = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CrashLoopBackOff",
                "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
LOG_TAIL = 20
WATCH_GIVE_UP = 5  # consecutive failures of one watch (5xx, dropped streams) that end wait_ready
# namespaced kinds pdlab creates (cleanup looks for its labels on each), then cluster-scoped ones
CLEANUP_KINDS = [("RoleBasedGroup", None), ("Service", "v1"), ("PersistentVolumeClaim", "v1"), ("Secret", "v1"),
                 ("RoleBinding", "rbac.authorization.k8s.io/v1"), ("Role", "rbac.authorization.k8s.io/v1"),
                 ("ServiceAccount", "v1"), ("PersistentVolume", "v1")]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def backend_for(exp: Experiment) -> K8sBackend:
    """The registry's factory for `backend.kind: k8s`."""
    return K8sBackend(exp.backend.k8s)


class K8sBackend(Backend):
    """Deploys experiments to the cluster of a kubeconfig context (or the in-cluster config).

    `fail_fast_s`: how long a pod may stay unschedulable, image-pull-failing or crash-looping before the
    deployment is abandoned with a diagnosis (instead of waiting for `ready_timeout_s`; default
    `backend.k8s.fail_fast_s`).
    `on_event(line)`: where pod/RoleBasedGroup events and progress go as they happen (default: stderr).
    `namespace`: the namespace `cleanup` searches (default: the kubeconfig context's namespace; `all_namespaces`
    searches every namespace, which needs cluster-wide list rights).
    """

    name = "k8s"

    def __init__(self, spec: K8sSpec | None = None, *, namespace: str | None = None,
                 fail_fast_s: float | None = None, on_event: Callable[[str], None] | None = None,
                 teardown_timeout_s: float = 180.0, all_namespaces: bool = False):
        from pdlab.experiment.spec import K8sSpec

        self.spec = spec or K8sSpec()
        self.namespace = namespace
        self.all_namespaces = all_namespaces
        self.fail_fast_s = fail_fast_s if fail_fast_s is not None else self.spec.fail_fast_s
        self.on_event = on_event or _stderr
        self.teardown_timeout_s = teardown_timeout_s
        self._api: Any = None
        self.context = ""
        self.context_namespace = "default"

    # -- connection ---------------------------------------------------------------------------------
    def rest(self) -> Rest:
        if self._api is None:
            self._api, self.context, self.context_namespace = load_client(self.spec.kubeconfig, self.spec.context)
        return Rest(self._api)

    def new_api_client(self) -> Any:
        """A second ApiClient for port-forwards (the client patches it during websocket calls)."""
        api, _, _ = load_client(self.spec.kubeconfig, self.spec.context)
        return api

    # -- preflight ----------------------------------------------------------------------------------------
    def preflight(self, exp: Experiment, objs: list[dict] | None = None) -> dict[str, Any]:
        """Check the cluster can take the experiment before anything is applied; raise with the fix.

        Returns what was learnt (server version, GPU nodes) for provenance; warnings go to on_event."""
        rest = self.rest()
        ns, api = exp.namespace, self.spec.api_version
        where = f"context '{self.context}'" if self.context else "the cluster"
        info: dict[str, Any] = {"context": self.context, "namespace": ns, "api_version": api}
        info["server_version"] = (rest.get("/version", what="read the server version") or {}).get("gitVersion")
        try:
            if rest.get_or_none(f"/api/v1/namespaces/{ns}", what=f"read namespace {ns}") is None:
                raise ResourceError(f"namespace '{ns}' does not exist in {where}: create it "
                                    f"(kubectl create namespace {ns}) or set `namespace:` in the params file")
        except ApiStatusError as e:
            if e.status != 403:
                raise
        group = rest.get_or_none(f"/apis/{GROUP}", what="discover the RoleBasedGroup API")
        if group is None:
            raise ResourceError(f"the RoleBasedGroup CRD ({CRD_NAME}) is not installed in {where}: on ACK install "
                                "the 'ack-rbgs' component (Operations → Add-ons), elsewhere the RBG controller "
                                "(github.com/sgl-project/rbg, `kubectl apply --server-side -f` its release manifest)")
        served = [v["version"] for v in group.get("versions", [])]
        if api not in served:
            other = [v for v in served if v in M.API_VERSIONS]
            raise ResourceError(f"the RoleBasedGroup CRD in {where} serves {', '.join(served) or 'no version'}, not "
                                f"{api}: set backend.k8s.api_version: {other[0] if other else served[0]} "
                                f"(or upgrade the RBG controller)")
        info["rbg_versions"] = served
        # a served v1alpha2 means RBG v0.7 or newer, where v1alpha1 goes through the controller's conversion webhook
        info["rbg_controller"] = "v0.7+" if "v1alpha2" in served else "v0.6 or older"
        if api == "v1alpha1" and "v1alpha2" in served:
            self.on_event("note: the RBG controller is v0.7 or newer (it serves v1alpha2), so v1alpha1 goes through "
                          "its conversion webhook; backend.k8s.api_version: v1alpha2 avoids that dependency")
        self._check_capacity(rest, exp, info)
        rendered = {(o["kind"], o["metadata"]["name"]) for o in objs or []}
        if ("PersistentVolumeClaim", exp.storage.pvc) not in rendered:
            try:
                pvc = rest.get_or_none(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{exp.storage.pvc}",
                                       what=f"read PVC {exp.storage.pvc}")
            except ApiStatusError as e:
                if e.status != 403:
                    raise
                pvc = {"status": {"phase": "unknown (forbidden)"}}
            if pvc is None:
                raise ResourceError(f"the model PVC '{exp.storage.pvc}' does not exist in namespace '{ns}': create "
                                    f"it (a static OSS PV/PVC as in the reference deployment), set storage.oss so "
                                    f"pdlab renders one, or point storage.pvc at the PVC holding {exp.model.path}")
            phase = (pvc.get("status") or {}).get("phase")
            if phase not in ("Bound", None, "unknown (forbidden)"):
                self.on_event(f"warning: PVC {exp.storage.pvc} is {phase}, not Bound; pods will wait for it")
        return info

    def _check_capacity(self, rest: Rest, exp: Experiment, info: dict) -> None:
        try:
            nodes = rest.get("/api/v1/nodes", what="list nodes").get("items", [])
        except ApiStatusError as e:
            if e.status == 403:
                self.on_event("warning: cannot list nodes (RBAC); GPU capacity not checked")
                return
            raise
        topo = build(exp)
        gpus = {n["metadata"]["name"]: int(float((n.get("status") or {}).get("allocatable", {})
                                                  .get("nvidia.com/gpu", 0) or 0)) for n in nodes}
        erdma = {n["metadata"]["name"]: int(float((n.get("status") or {}).get("allocatable", {})
                                                   .get("aliyun/erdma", 0) or 0)) for n in nodes}
        info["nodes"] = [{"name": k, "gpus": v, "erdma": erdma[k],
                          "gpu_product": (next(n for n in nodes if n["metadata"]["name"] == k)["metadata"]
                                          .get("labels", {}).get("nvidia.com/gpu.product"))}
                         for k, v in gpus.items() if v]
        need = sorted((r.tp for r in topo.workers for _ in range(r.replicas)), reverse=True)
        free = dict(gpus)
        rdma = dict(erdma)
        for size in need:
            node = next((k for k, f in sorted(free.items(), key=lambda kv: kv[1]) if f >= size
                         and (not exp.gpu.erdma or rdma.get(k, 0) >= 1)), None)
            if node is None:
                have = ", ".join(f"{k}: {v}" for k, v in gpus.items() if v) or "none"
                roles = " + ".join(f"{r.name} {r.replicas}×TP{r.tp}" for r in topo.workers)
                if exp.gpu.erdma and not any(erdma.values()):
                    raise ResourceError("no node advertises allocatable aliyun/erdma: install the ACK eRDMA "
                                        "controller (ack-erdma-controller) on the GPU nodes, or set gpu.erdma: false")
                raise ResourceError(f"the topology needs {topo.gpus} nvidia.com/gpu as {roles} (each instance on one "
                                    f"node{' with aliyun/erdma' if exp.gpu.erdma else ''}), but the nodes' "
                                    f"allocatable GPUs are: {have}; add GPU nodes or shrink replicas/TP")
            free[node] -= size
            rdma[node] = rdma.get(node, 0) - 1

    # -- deploy ---------------------------------------------------------------------------------------------
    def deploy(self, exp: Experiment, *, run_dir: Path | None = None, run_id: str | None = None,
               wait: bool = True) -> K8sDeployment:
        """Preflight, apply, and (wait=True) watch until ready; on any failure (or Ctrl-C) everything applied
        is deleted again before the error propagates."""
        run_id = run_id or timestamped(exp.name)
        api = self.spec.api_version
        objs = M.render(exp, api=api, run_id=run_id, include_storage=True, with_secrets=exp.storage.oss is not None)
        info = self.preflight(exp, objs) if self.spec.preflight else self.cluster_facts()
        info["emulated"] = self.emulated_cluster()
        if info["emulated"]:
            M.annotate_emulator_args(objs, exp)
        dep = K8sDeployment(self, exp, build(exp), run_id=run_id, run_dir=run_dir, objects=objs, info=info)
        if run_dir is not None:
            path = Path(run_dir) / "manifests.yaml"
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_text(M.to_yaml([o for o in objs if o["kind"] != "Secret"]))
        try:
            dep.apply()
            if wait:
                dep.wait_ready()
        except BaseException:
            dep.teardown()
            raise
        return dep

    def cluster_facts(self) -> dict[str, Any]:
        """What provenance records when the preflight is off: context, server version, RBG API version."""
        rest = self.rest()
        version = call_quietly(lambda: rest.get("/version")) or {}
        return {"context": self.context, "api_version": self.spec.api_version,
                "server_version": version.get("gitVersion")}

    def emulated_cluster(self) -> bool:
        """True when the nodes say their kubelet runs the pdlab emulator (pdlab's fake cluster): only then do
        worker templates carry the experiment's `--emu-*` flags. False on a real cluster or when nodes are
        not readable."""
        found = call_quietly(lambda: self.rest().get("/api/v1/nodes", query={
            "labelSelector": f"{M.EMULATED_NODE_LABEL}=true", "limit": 1}, what="list nodes"))
        return bool((found or {}).get("items"))

    def cleanup(self, *, experiment: str | None = None) -> list[str]:
        """Delete every object labelled by pdlab (optionally of one experiment) in `namespace` (default: the
        context's namespace, so that the namespaced Role of `rbac_manifests` suffices; all_namespaces: every one)."""
        rest = self.rest()
        namespace = None if self.all_namespaces else (self.namespace or self.context_namespace)
        return cleanup_objects(rest, namespace=namespace, experiment=experiment,
                               api_version=self.spec.api_version, on_event=self.on_event,
                               timeout_s=self.teardown_timeout_s)


class K8sDeployment(Deployment):
    """A RoleBasedGroup (and friends) in a cluster; teardown deletes them and waits for the pods to go."""

    def __init__(self, backend: K8sBackend, exp: Experiment, topology: Topology, *, run_id: str,
                 run_dir: Path | None, objects: list[dict], info: dict[str, Any]):
        self.backend = backend
        self.experiment = exp
        self.topology = topology
        self.run_id = run_id
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.objects = objects
        self.info = info
        self.namespace = exp.namespace
        self.group = exp.name
        self.selector = f"{M.RUN_LABEL}={run_id}"
        self.rest = backend.rest()
        self.api_version = backend.spec.api_version
        self.applied: list[dict] = []
        self.pods: dict[str, dict] = {}
        self.events_seen: set[tuple] = set()
        self.rbg_events: list[dict] = []
        self.subdomains: M.Subdomains = {}  # worker role → subdomain its pods got, where not pdlab's Service
        self._forwarders: dict[tuple[str, int], PortForwarder] = {}
        self._pf_api: Any = None
        self._pf_lock = threading.Lock()
        self._torn_down = False
        # a Jupyter kernel that dies or exits with the deployment up still deletes it (GPUs are expensive)
        atexit.register(self.teardown)

    # -- apply ------------------------------------------------------------------------------------------------
    def apply(self) -> None:
        """Server-side apply every object (idempotent: a re-run updates in place)."""
        for obj in self.objects:
            if obj["kind"] in ("PersistentVolume", "PersistentVolumeClaim", "Secret"):
                existing = self.rest.get_or_none(path_for(obj["apiVersion"], obj["kind"],
                                                          obj["metadata"].get("namespace"), obj["metadata"]["name"]))
                if existing is not None and M.EXPERIMENT_LABEL not in (existing["metadata"].get("labels") or {}):
                    self._say(f"using existing {obj['kind']} {obj['metadata']['name']} (not pdlab's; left as is)")
                    continue
            self.rest.apply(obj)
            self.applied.append(obj)
            self._say(f"applied {obj['kind']} {obj['metadata'].get('namespace', '') + '/' if obj['metadata'].get('namespace') else ''}"
                      f"{obj['metadata']['name']}")

    # -- readiness ------------------------------------------------------------------------------------------------
    def wait_ready(self, timeout: float | None = None) -> None:
        """Watch pdlab's pods (by `pdlab.io/run`), the RBG and the events of both until every role has its count of
        Ready pods running the applied template and the router answers; raise DeployError with a diagnosis on a
        persistent failure (see K8sBackend.fail_fast_s), a watch that keeps failing, or timeout."""
        timeout = timeout if timeout is not None else self.backend.spec.ready_timeout_s
        start = time.monotonic()
        deadline = start + timeout
        q: queue.Queue = queue.Queue()
        watches = [
            Watch(self.rest, path_for(f"{GROUP}/{self.api_version}", "RoleBasedGroup", self.namespace), q, tag="rbg",
                  field_selector=f"metadata.name={self.group}", give_up_after=WATCH_GIVE_UP),
            Watch(self.rest, path_for("v1", "Pod", self.namespace), q, tag="pod", label_selector=self.selector,
                  give_up_after=WATCH_GIVE_UP),
            Watch(self.rest, path_for("v1", "Event", self.namespace), q, tag="event", give_up_after=WATCH_GIVE_UP),
        ]
        for w in watches:
            w.start()
        rbg: dict | None = None
        bad_since: dict[str, float] = {}
        try:
            while True:
                now = time.monotonic()
                if now > deadline:
                    raise DeployError(self.diagnose(rbg, f"not ready after {timeout:.0f} s "
                                                         f"(backend.k8s.ready_timeout_s)"))
                try:
                    tag, etype, obj = q.get(timeout=min(0.5, max(0.01, deadline - now)))
                except queue.Empty:
                    tag, etype, obj = "", "", None
                if etype == "WATCH_ERROR":
                    if isinstance(obj, ApiStatusError) and obj.status in (401, 403, 404):
                        raise DeployError(f"watching {tag}s failed: {obj}")
                elif etype == "WATCH_FAILED":
                    raise DeployError(_watch_failed(tag, obj, self.api_version))
                elif tag == "rbg":
                    items = obj if etype == "SYNC" else [obj]
                    for o in items:
                        rbg = None if etype == "DELETED" else o
                elif tag == "pod":
                    if etype == "SYNC":
                        self.pods = {p["metadata"]["name"]: p for p in obj}
                    elif etype == "DELETED":
                        self.pods.pop(obj["metadata"]["name"], None)
                    else:
                        self.pods[obj["metadata"]["name"]] = obj
                elif tag == "event":
                    for ev in obj if etype == "SYNC" else [obj]:
                        self._surface(ev)
                for name, pod in self.pods.items():
                    problem = _pod_problem(pod)
                    if problem is None:
                        bad_since.pop(name, None)
                    else:
                        bad_since.setdefault(name, time.monotonic())
                failing = [n for n, t in bad_since.items() if time.monotonic() - t >= self.backend.fail_fast_s]
                if failing:
                    raise DeployError(self.diagnose(rbg, f"failing for {self.backend.fail_fast_s:.0f} s"))
                if tag == "pod":
                    self._sync_subdomains()
                if self._is_ready():
                    break
        finally:
            for w in watches:
                w.stop()
        self._say(f"RoleBasedGroup {self.group}: all roles ready after {time.monotonic() - start:.1f} s")
        self._wait_router(deadline)

    def expected_hashes(self) -> dict[str, str]:
        """role → the `pdlab.io/template-hash` of the pod template last applied for it."""
        rbg = next(o for o in self.objects if o["kind"] == "RoleBasedGroup")
        return {role: (t.get("metadata") or {}).get("annotations", {}).get(M.TEMPLATE_HASH_ANNOTATION, "")
                for role, t in M.role_templates(rbg).items()}

    def role_pods(self, role: str) -> list[dict]:
        """The live (not terminating) pods of a role, by pdlab's labels, in name order."""
        pods = [p for p in self.pods.values() if not p["metadata"].get("deletionTimestamp")
                and (p["metadata"].get("labels") or {}).get(M.ROLE_LABEL) == role]
        return sorted(pods, key=lambda p: _ordinal(p["metadata"]["name"]))

    def _is_ready(self) -> bool:
        """Every role has exactly its replica count of Ready pods, all running the applied template (the RBG
        status is not consulted: its fields and their freshness differ between controller versions)."""
        hashes = self.expected_hashes()
        for role in self.topology.roles:
            pods = self.role_pods(role.name)
            if len(pods) != role.replicas or not all(_current(p, hashes[role.name]) for p in pods):
                return False
        return True

    def _sync_subdomains(self) -> None:
        """Worker addresses from what the cluster made: the router's static URLs name `<pod>.<subdomain>`, and
        every released controller gives the pods pdlab's Service `<group>-<role>` as subdomain; should a
        controller pick another (say, its cache had not seen pdlab's Service yet), re-apply the group with
        the router pointing at the subdomain the pods actually have (the router rolls; readiness waits)."""
        if self.experiment.topology.router.service_discovery:
            return
        actual: dict[str, str] = {}
        for role in self.topology.workers:
            subs = {(p.get("spec") or {}).get("subdomain") for p in self.role_pods(role.name)}
            if len(subs) == 1 and None not in subs:
                actual[role.name] = subs.pop()
        want = {r: sub for r, sub in actual.items() if sub != self.subdomains.get(r, M.service_name(self.experiment, r))}
        if not want:
            return
        self.subdomains.update(want)
        self._say("the RBG controller named the workers' headless Service "
                  + ", ".join(f"{r}: {s}" for r, s in sorted(want.items()))
                  + "; re-applying the router with the pods' addresses")
        self._apply_group(self.experiment)

    def _apply_group(self, exp: Experiment) -> None:
        """Render and apply the RoleBasedGroup alone (scale, subdomain sync); it becomes what readiness expects."""
        objs = M.render(exp, api=self.api_version, run_id=self.run_id, include_storage=False,
                        subdomains=self.subdomains or None)
        if self.info.get("emulated"):
            M.annotate_emulator_args(objs, exp)
        rbg = next(o for o in objs if o["kind"] == "RoleBasedGroup")
        self.rest.apply(rbg)
        self.objects = [rbg if o["kind"] == "RoleBasedGroup" else o for o in self.objects]
        self.applied = [rbg if o["kind"] == "RoleBasedGroup" else o for o in self.applied]

    def _wait_router(self, deadline: float) -> None:
        """The router answers /health (through the chosen access path), unless only in-cluster DNS is usable."""
        if self.backend.spec.access == "service-dns" and not _in_cluster():
            return
        last = ""
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                try:
                    r = client.get(self.router_url + "/health")
                    if r.status_code == 200:
                        return
                    last = f"HTTP {r.status_code}"
                except httpx.HTTPError as e:
                    last = str(e) or type(e).__name__
                time.sleep(0.3)
        raise DeployError(f"the router pods are ready but {self.router_url}/health does not answer ({last}); "
                          f"check `kubectl logs {self.group}-{ROUTER_ROLE}-0 -n {self.namespace}`")

    def _surface(self, ev: dict) -> None:
        """Print an event about one of this run's pods or about the RoleBasedGroup (its controller's failures,
        e.g. DependencyNotMet or FailedReconcileWorkload, are recorded there), once per reason and message."""
        io = ev.get("involvedObject") or {}
        name, kind = io.get("name", ""), io.get("kind", "")
        if kind == "RoleBasedGroup":
            if name != self.group or ev.get("reason") == "Succeed":
                return
        elif kind != "Pod" or not (name in self.pods or name.startswith(f"{self.group}-")):
            return
        key = (io.get("uid"), ev.get("reason"), ev.get("message"))
        if key in self.events_seen:
            return
        self.events_seen.add(key)
        if kind == "RoleBasedGroup":
            self.rbg_events.append(ev)
        self._say(f"{ev.get('type', 'Normal'):7} {ev.get('reason', '')}: {kind.lower()}/{name}: "
                  f"{ev.get('message', '')}")

    def diagnose(self, rbg: dict | None, what: str) -> str:
        """A multi-line account of why the group is not ready: per role counts, each bad pod's state, its last
        events and log lines, and what to change."""
        if not self.pods:
            self.pods = {p["metadata"]["name"]: p for p in call_quietly(lambda: self.rest.get(
                path_for("v1", "Pod", self.namespace), query={"labelSelector": self.selector}).get("items", []))
                or []}
        pods = self.pods
        hashes = self.expected_hashes()
        counts = ", ".join(f"{r.name} {sum(1 for p in self.role_pods(r.name) if _current(p, hashes[r.name]))}"
                           f"/{r.replicas}" for r in self.topology.roles)
        lines = [f"RoleBasedGroup {self.namespace}/{self.group} {what} ({counts} ready)."]
        hints: list[str] = []
        if rbg is None:
            lines.append("  the RoleBasedGroup object is gone or was never created (is the RBG controller running?)")
        else:
            cond = next((c for c in (rbg.get("status") or {}).get("conditions", []) if c.get("type") == "Ready"), None)
            if cond:
                lines.append(f"  controller status: Ready={cond.get('status')} {cond.get('reason', '')}: "
                             f"{cond.get('message', '')}".rstrip(": "))
        for ev in self.rbg_events[-3:]:
            if ev.get("type") == "Warning":
                lines.append(f"  controller event: {ev.get('reason')}: {ev.get('message', '')}")
        if not pods and rbg is not None:
            lines.append("  no pods were created: check the RBG controller's logs (ack-rbgs / rbgs-controller-manager)")
        for name, pod in sorted(pods.items()):
            problem = _pod_problem(pod)
            state = problem or ("Ready" if _pod_ready(pod) else _pod_phase(pod))
            lines.append(f"  pod {name}: {state}")
            if problem is None:
                continue
            if "Insufficient nvidia.com/gpu" in problem:
                hints.append("not enough free GPUs: free some, add GPU nodes, or shrink replicas/TP")
            if "Insufficient aliyun/erdma" in problem:
                hints.append("no free eRDMA: install the ACK eRDMA controller on the GPU nodes, or set gpu.erdma: false")
            if "persistentvolumeclaim" in problem or "unbound" in problem:
                hints.append(f"the model PVC '{self.experiment.storage.pvc}' is missing or unbound: create/bind it or "
                             "set storage.oss")
            if "ImagePull" in problem or "ErrImagePull" in problem or "InvalidImageName" in problem:
                hints.append(f"the image '{self.experiment.image}' cannot be pulled: check the name/tag, that the "
                             "nodes reach the registry, and imagePullSecrets")
            if "CrashLoopBackOff" in problem:
                log = call_quietly(lambda n=name: self._log(n, LOG_TAIL, previous=True)) or \
                    call_quietly(lambda n=name: self._log(n, LOG_TAIL)) or ""
                if log.strip():
                    lines.append("    last log lines:")
                    lines += [f"    | {ln}" for ln in log.rstrip().splitlines()[-LOG_TAIL:]]
                hints.append("the container exits at start: read the log lines above (out of memory → lower "
                             "mem-fraction-static or raise TP; bad flag → fix engine_args)")
        if hints:
            lines.append("Fix: " + "; ".join(dict.fromkeys(hints)) + ".")
        return "\n".join(lines)

    # -- access ------------------------------------------------------------------------------------------------
    def _forward(self, pod: str, port: int) -> PortForwarder:
        key = (pod, port)
        if key not in self._forwarders:
            if self._pf_api is None:
                self._pf_api = self.backend.new_api_client()
            self._forwarders[key] = PortForwarder(self._pf_api, self._pf_lock, self.namespace, pod, port)
        return self._forwarders[key]

    def _pod_url(self, pod: str, role: str, port: int = M.HTTP_PORT) -> str:
        access = self.backend.spec.access
        if access == "service-dns":
            spec = (self.pods.get(pod) or {}).get("spec") or {}
            host = spec.get("hostname") or pod
            svc = spec.get("subdomain") or M.service_name(self.experiment, role)
            return f"http://{host}.{svc}.{self.namespace}.svc.cluster.local:{port}"
        return self._forward(pod, port).url

    def pod_names(self, role: str, replicas: int) -> list[str]:
        """The role's pod names: those that exist (by pdlab's labels), else the controllers' `<group>-<role>-<i>`."""
        live = [p["metadata"]["name"] for p in self.role_pods(role)]
        return live if len(live) == replicas else [f"{self.group}-{role}-{i}" for i in range(replicas)]

    @property
    def router_url(self) -> str:
        spec = self.backend.spec
        if spec.access == "url":
            return str(spec.url).rstrip("/")
        if spec.access == "service-dns":
            return f"http://{self.group}.{self.namespace}.svc.cluster.local:{M.HTTP_PORT}"
        return self._forward(self.pod_names(ROUTER_ROLE, 1)[0], M.HTTP_PORT).url

    @property
    def endpoints(self) -> list[Endpoint]:
        out: list[Endpoint] = []
        router_metrics = self.experiment.topology.router.impl == "sglang-router"
        for role in self.topology.roles:
            for i, name in enumerate(self.pod_names(role.name, role.replicas)):
                pod = self.pods.get(name) or {}
                if role.name == ROUTER_ROLE:
                    url = self.router_url
                    metrics = self._pod_url(name, role.name, M.ROUTER_METRICS_PORT) + "/metrics" \
                        if router_metrics else None
                else:
                    url = self._pod_url(name, role.name)
                    metrics = url + "/metrics"
                out.append(Endpoint(role=role.name, name=name, url=url, metrics_url=metrics, index=i,
                                    node=(pod.get("spec") or {}).get("nodeName"),
                                    bootstrap_port=self.experiment.topology.bootstrap_port
                                    if role.mode == "prefill" else None))
        return out

    def cluster_info(self) -> dict[str, Any]:
        """Cluster facts for provenance.json: context, server version, RBG versions, GPU nodes, pods' nodes."""
        return {**self.info, "pods": {n: (p.get("spec") or {}).get("nodeName") for n, p in self.pods.items()}}

    def manifests(self) -> list[dict]:
        """The objects pdlab applied (as rendered; Secrets left out), for the run's manifests.yaml."""
        return [copy.deepcopy(o) for o in (self.applied or self.objects) if o["kind"] != "Secret"]

    # -- logs / scale / teardown ---------------------------------------------------------------------------------
    def _log(self, pod: str, tail: int, previous: bool = False) -> str:
        resp = self.rest.send("GET", f"/api/v1/namespaces/{self.namespace}/pods/{pod}/log",
                               {"tailLines": tail, "previous": "true" if previous else None}, None,
                               "application/json", stream=False)
        data = resp.read() or b""
        if resp.status != 200:
            raise DeployError(f"logs of {pod}: HTTP {resp.status}: {data[:300].decode(errors='replace')}")
        return data.decode(errors="replace")

    def logs(self, name: str, tail: int = 100) -> str:
        return self._log(name, tail)

    def scale(self, role: str, replicas: int) -> None:
        """Re-render with the new replica count and apply: the RBG controller adds/removes pods, and the router
        (whose worker list is part of its template) is rolled to the new list. Waits until ready."""
        from pdlab.experiment.loader import experiment_from_dict

        if role not in [r.name for r in self.topology.workers]:
            raise DeployError(f"cannot scale '{role}': worker roles are {', '.join(r.name for r in self.topology.workers)}")
        doc = self.experiment.model_dump(mode="json")
        topo = doc["topology"]
        topo.pop("ratio", None)
        topo[role]["replicas"] = int(replicas)
        exp = experiment_from_dict(doc)
        self._apply_group(exp)
        self.experiment, self.topology = exp, build(exp)
        for key in [k for k in self._forwarders if int(k[0].rsplit("-", 1)[1]) >= replicas
                    and k[0].startswith(f"{self.group}-{role}-")]:
            self._forwarders.pop(key).close()
        self._say(f"scaling {role} to {replicas}")
        self.wait_ready()

    def teardown(self) -> None:
        """Delete what this deployment applied (the RBG's pods go with it) and wait until its pods are gone."""
        if self._torn_down:
            return
        self._torn_down = True
        atexit.unregister(self.teardown)
        if self.run_dir is not None:
            self._save_logs()
        for fw in self._forwarders.values():
            fw.close()
        self._forwarders.clear()
        failed: list[str] = []
        for obj in reversed(self.applied or self.objects):
            meta = obj["metadata"]
            try:
                self.rest.delete(path_for(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]),
                                 propagation="Foreground" if obj["kind"] == "RoleBasedGroup" else "Background")
            except Exception as e:  # best effort: go on with the rest, then say what is left
                failed.append(f"{obj['kind']} {meta['name']} ({e})")
        if failed:
            self._say(f"warning: could not delete {'; '.join(failed)}; `pdlab cleanup --backend k8s` removes "
                      f"pdlab's leftovers once the API answers")
            if any(f.startswith("RoleBasedGroup ") for f in failed):
                return  # its pods stay: nothing to wait for
        left = _wait_gone(self.rest, self.namespace, self.selector, self.backend.teardown_timeout_s)
        rbg_path = path_for(f"{GROUP}/{self.api_version}", "RoleBasedGroup", self.namespace, self.group)
        deadline = time.monotonic() + self.backend.teardown_timeout_s
        while time.monotonic() < deadline and call_quietly(lambda: self.rest.get_or_none(rbg_path)) is not None:
            time.sleep(0.1)  # foreground deletion: the group goes after its workloads (and their pods)
        if left:
            self._say(f"warning: pods still terminating after {self.backend.teardown_timeout_s:.0f} s: "
                      f"{', '.join(left)}; `pdlab cleanup --backend k8s` removes pdlab's leftovers")

    def _save_logs(self) -> None:
        assert self.run_dir is not None
        log_dir = self.run_dir / "logs"
        for name in list(self.pods):
            text = call_quietly(lambda n=name: self._log(n, 5000))
            if text is not None:  # an empty log (a quiet worker) is still saved: it says the pod logged nothing
                log_dir.mkdir(parents=True, exist_ok=True)
                (log_dir / f"{name}.log").write_text(text)

    def _say(self, msg: str) -> None:
        self.backend.on_event(msg)


# --------------------------------------------------------------------------- helpers


def _pod_ready(pod: dict) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions", []))


def _pod_phase(pod: dict) -> str:
    st = pod.get("status") or {}
    for cs in st.get("containerStatuses") or []:
        w = (cs.get("state") or {}).get("waiting")
        if w:
            return w.get("reason", "Waiting")
    return st.get("phase", "Pending")


def _pod_problem(pod: dict) -> str | None:
    """A failure that will not fix itself: unschedulable, image pull errors, crash loops (None when fine)."""
    if pod["metadata"].get("deletionTimestamp"):
        return None
    st = pod.get("status") or {}
    for c in st.get("conditions", []):
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return f"Pending, unschedulable: {c.get('message', '')}"
    for cs in st.get("containerStatuses") or []:
        w = (cs.get("state") or {}).get("waiting") or {}
        if w.get("reason") in FAIL_WAITING:
            term = (cs.get("lastState") or {}).get("terminated") or {}
            extra = f", restarts {cs.get('restartCount', 0)}, last exit code {term['exitCode']}" \
                if "exitCode" in term else ""
            return f"{w['reason']}{extra}: {w.get('message', '')}".rstrip(": ")
    return None


def _current(pod: dict, template_hash: str) -> bool:
    """Ready and running the applied template (its `pdlab.io/template-hash`)."""
    ann = pod["metadata"].get("annotations") or {}
    return _pod_ready(pod) and ann.get(M.TEMPLATE_HASH_ANNOTATION) == template_hash


def _ordinal(name: str) -> tuple[int, str]:
    tail = name.rsplit("-", 1)[-1]
    return (int(tail), name) if tail.isdigit() else (1 << 30, name)


def _watch_failed(tag: str, failure: WatchFailed, api_version: str) -> str:
    """The error that ends wait_ready when a watch keeps failing, naming the cause and what to do."""
    what = {"rbg": "the RoleBasedGroup", "pod": "pods", "event": "events"}.get(tag, tag)
    msg = (f"watching {what} failed {failure.failures} times in a row, last: {failure.error}; giving up instead of "
           f"waiting for backend.k8s.ready_timeout_s")
    text = str(failure.error)
    if "conversion webhook" in text:
        msg += (". The RBG controller's conversion webhook is down (RBG v0.7+ serves v1alpha1 through it): check "
                "the rbgs controller pod (kubectl get pods -A | grep rbgs), or use backend.k8s.api_version: v1alpha2"
                if api_version == "v1alpha1" else ". The RBG controller's conversion webhook is down: check the "
                "rbgs controller pod (kubectl get pods -A | grep rbgs)")
    elif isinstance(failure.error, ApiStatusError) and failure.error.status >= 500:
        msg += ". The API server keeps answering 5xx: check the cluster's health"
    return msg


def _in_cluster() -> bool:
    import os

    return "KUBERNETES_SERVICE_HOST" in os.environ


def _wait_gone(rest: Rest, namespace: str | None, selector: str, timeout_s: float) -> list[str]:
    """Poll until no pod matches `selector`; returns the names still there at the deadline."""
    deadline = time.monotonic() + timeout_s
    left: list[str] = []
    while True:
        items = call_quietly(lambda: rest.get(path_for("v1", "Pod", namespace), query={"labelSelector": selector},
                                              what="list pods").get("items", []))
        if items is not None:
            left = [p["metadata"]["name"] for p in items]
            if not left:
                return []
        if time.monotonic() > deadline:
            return left
        time.sleep(0.25)


def cleanup_objects(rest: Rest, *, namespace: str | None, experiment: str | None, api_version: str = "v1alpha1",
                    on_event: Callable[[str], None] = _stderr, timeout_s: float = 180.0) -> list[str]:
    """Delete objects carrying pdlab's experiment label (of one experiment, or all) and wait for their pods."""
    selector = f"{M.EXPERIMENT_LABEL}={experiment}" if experiment else M.EXPERIMENT_LABEL
    removed: list[str] = []
    skipped: list[str] = []
    for kind, av in CLEANUP_KINDS:
        if kind == "RoleBasedGroup":
            group = call_quietly(lambda: rest.get(f"/apis/{GROUP}")) or {}
            served = [v["version"] for v in group.get("versions", [])]
            if not served:
                continue
            av = f"{GROUP}/{api_version if api_version in served else served[0]}"
        assert av is not None
        try:
            items = rest.get(path_for(av, kind, namespace), query={"labelSelector": selector},
                             what=f"list {kind}s").get("items", [])
        except ApiStatusError as e:
            if e.status in (403, 404):
                where = f"in namespace {namespace}" if namespace else "in all namespaces"
                on_event(f"warning: cannot list {kind}s {where} ({e.reason or e.status}); skipped")
                skipped.append(kind)
                continue
            raise
        for obj in items:
            labels = obj["metadata"].get("labels") or {}
            if M.EXPERIMENT_LABEL not in labels:  # belt and braces: never touch unlabelled objects
                continue
            ns = obj["metadata"].get("namespace")
            if rest.delete(path_for(av, kind, ns, obj["metadata"]["name"]),
                           propagation="Foreground" if kind == "RoleBasedGroup" else "Background"):
                removed.append(f"{kind.lower()}/{ns + '/' if ns else ''}{obj['metadata']['name']}")
    if removed:
        left = _wait_gone(rest, namespace, selector, timeout_s)
        if left:
            on_event(f"warning: pods still terminating: {', '.join(left)}")
    if skipped:
        on_event(f"warning: could not list {', '.join(skipped)}: those were not cleaned up (RBAC: run in a "
                 f"namespace the Role covers, --namespace NS, or with rights to list them)")
    return removed


def cleanup_k8s(*, kubeconfig: str | None = None, context: str | None = None, namespace: str | None = None,
                experiment: str | None = None, all_namespaces: bool = False) -> list[str]:
    """`pdlab cleanup --backend k8s`: remove pdlab-labelled objects in `namespace` (None: the context's
    namespace; all_namespaces: every namespace)."""
    from pdlab.experiment.spec import K8sSpec

    return K8sBackend(K8sSpec(kubeconfig=kubeconfig, context=context), namespace=namespace,
                      all_namespaces=all_namespaces).cleanup(experiment=experiment)


def rbac_manifests(namespace: str, *, name: str = "pdlab", subject_kind: str = "ServiceAccount",
                   subject_name: str | None = None) -> list[dict]:
    """Least-privilege RBAC for running pdlab against `namespace`: a Role for what it creates and watches
    there, a ClusterRole for the preflight's node capacity check and cluster-scoped model PVs, and their
    bindings to `subject_kind`/`subject_name` (a ServiceAccount `pdlab` by default, rendered too)."""
    subject_name = subject_name or name
    lab = {"app.kubernetes.io/name": "pdlab", "app.kubernetes.io/component": "rbac"}
    rw = ["get", "list", "watch", "create", "patch", "update", "delete"]
    role_rules = [
        {"apiGroups": [GROUP], "resources": ["rolebasedgroups"], "verbs": rw},
        {"apiGroups": [GROUP], "resources": ["rolebasedgroups/status"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["services", "persistentvolumeclaims", "secrets", "serviceaccounts"],
         "verbs": rw},
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": rw},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods/portforward"], "verbs": ["get", "create"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"], "resourceNames": [namespace]},
    ]
    cluster_rules = [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]},
        {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": rw},
    ]
    subject: dict[str, Any] = {"kind": subject_kind, "name": subject_name}
    if subject_kind == "ServiceAccount":
        subject["namespace"] = namespace
    else:
        subject["apiGroup"] = "rbac.authorization.k8s.io"
    objs: list[dict] = []
    if subject_kind == "ServiceAccount":
        objs.append({"apiVersion": "v1", "kind": "ServiceAccount",
                     "metadata": {"name": subject_name, "namespace": namespace, "labels": dict(lab)}})
    objs += [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": name, "namespace": namespace, "labels": dict(lab)}, "rules": role_rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": name, "namespace": namespace, "labels": dict(lab)}, "subjects": [copy.deepcopy(subject)],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": f"{name}-{namespace}", "labels": dict(lab)}, "rules": cluster_rules},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": f"{name}-{namespace}", "labels": dict(lab)}, "subjects": [copy.deepcopy(subject)],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": f"{name}-{namespace}"}},
    ]
    return objs


__all__ = ["K8sBackend", "K8sDeployment", "backend_for", "cleanup_k8s", "rbac_manifests"]
