"""Topology → Kubernetes objects: the RoleBasedGroup, its Service, and optionally the model PV/PVC/Secret.

`render(exp)` reproduces the reference ACK deployment (docs/architecture.md, "The reference deployment") for the seed params: RBG roles
`scheduler` (the PD router), `prefill` and `decode` (or `worker` when colocated), each worker pod
asking for its TP's GPUs, eRDMA, a memory-backed /dev/shm and the model PVC at /models.

Nothing here depends on the RBG controller's version (docs/rbg-controllers.md): every pod template carries
pdlab's own labels (`pdlab.io/run`, `pdlab.io/role`) and a hash of itself (`pdlab.io/template-hash`), and pdlab
renders the headless Service `<group>-<role>` of each worker role itself. Every released controller uses an
existing Service of that name as the pods' subdomain (v0.4 always names it so; v0.5+ keeps it through
`GetCompatibleHeadlessServiceName`), so the router's `<group>-<role>-<i>.<group>-<role>` URLs resolve everywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Any

import yaml

from pdlab.core.errors import SpecError
from pdlab.experiment.commands import SGLANG_SERVER, router_args, worker_args
from pdlab.experiment.topology import ROUTER_ROLE, Role, build

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment

GROUP = "workloads.x-k8s.io"
API_VERSIONS = ("v1alpha1", "v1alpha2")
EXPERIMENT_LABEL = "pdlab.io/experiment"
RUN_LABEL = "pdlab.io/run"
ROLE_LABEL = "pdlab.io/role"  # on every pod template: what watches, readiness, Services and discovery select by
TEMPLATE_HASH_ANNOTATION = "pdlab.io/template-hash"  # a pod runs the applied template iff it carries this hash
HTTP_PORT = 8000
ROUTER_METRICS_PORT = 29000
WORKER_RESOURCES = {"cpu": "4", "memory": "16Gi"}
SHM_SIZE = "15Gi"
BOOTSTRAP_ANNOTATION = "sglang.ai/bootstrap-port"
# an emulated cluster (pdlab's fake) labels its nodes with this; only then do worker templates carry the
# experiment's `--emu-*` flags (JSON list) in EMULATOR_ARGS_ANNOTATION for its kubelet: real manifests never do
EMULATED_NODE_LABEL = "pdlab.io/emulated"
EMULATOR_ARGS_ANNOTATION = "pdlab.io/emulator-args"


def labels(exp: Experiment, run_id: str | None) -> dict[str, str]:
    """The pdlab labels every object carries (they are how teardown and cleanup find leaks)."""
    out = {EXPERIMENT_LABEL: exp.name, RUN_LABEL: run_id or exp.name}
    out.update(exp.labels)
    return out


def service_name(exp: Experiment, role: str) -> str:
    """The headless Service of a worker role, `<group>-<role>`: pdlab renders it, and every RBG controller
    version makes it the pods' subdomain (see the module docstring)."""
    return f"{exp.name}-{role}"


Subdomains = dict[str, str]  # worker role → the headless Service its pods actually got as subdomain


def pod_dns(exp: Experiment, role: str, index: int, subdomains: Subdomains | None = None) -> str:
    """Per-pod DNS name inside the namespace, e.g. `sglang-pd-prefill-0.sglang-pd-prefill` (the subdomain the
    role's pods got, when known and different)."""
    return f"{exp.name}-{role}-{index}.{(subdomains or {}).get(role) or service_name(exp, role)}"


def worker_url(exp: Experiment, role: str, index: int, subdomains: Subdomains | None = None) -> str:
    return f"http://{pod_dns(exp, role, index, subdomains)}:{HTTP_PORT}"


def router_command(exp: Experiment, run_id: str | None = None, subdomains: Subdomains | None = None) -> list[str]:
    """The router container's command: every prefill URL with its bootstrap port, every decode URL."""
    topo = build(exp)
    sub = subdomains
    extra: dict[str, Any] = {}
    if exp.topology.router.impl == "sglang-router":
        extra["prometheus-host"] = "0.0.0.0"
        extra["prometheus-port"] = ROUTER_METRICS_PORT
    if exp.topology.kind == "pd":
        p, d = topo.role("prefill"), topo.role("decode")
        if exp.topology.router.service_discovery:
            args = router_args(exp, prefill=[], decode=[], host="0.0.0.0", port=HTTP_PORT, extra=extra)
            args = _with_service_discovery(exp, args, ["prefill", "decode"], run_id)
        else:
            args = router_args(
                exp,
                prefill=[(worker_url(exp, "prefill", i, sub), exp.topology.bootstrap_port) for i in range(p.replicas)],
                decode=[worker_url(exp, "decode", i, sub) for i in range(d.replicas)],
                host="0.0.0.0", port=HTTP_PORT, extra=extra)
    else:
        w = topo.role("worker")
        if exp.topology.router.service_discovery:
            args = _with_service_discovery(exp, router_args(exp, workers=[], host="0.0.0.0", port=HTTP_PORT,
                                                            extra=extra), ["worker"], run_id)
        else:
            args = router_args(exp, workers=[worker_url(exp, "worker", i, sub) for i in range(w.replicas)],
                               host="0.0.0.0", port=HTTP_PORT, extra=extra)
    return ["python3", *args]


def _with_service_discovery(exp: Experiment, args: list[str], roles: list[str], run_id: str | None) -> list[str]:
    """Replace static worker lists with sglang-router's Kubernetes service discovery by pdlab's pod labels."""
    drop = {"--worker-urls", "--prefill", "--decode"}
    out = [a for a in args if a not in drop]
    out += ["--service-discovery", "--service-discovery-namespace", exp.namespace,
            "--service-discovery-port", str(HTTP_PORT)]
    sel = f"{RUN_LABEL}={run_id or exp.name}"
    if roles == ["worker"]:
        out += ["--selector", sel, f"{ROLE_LABEL}=worker"]
    else:
        out += ["--prefill-selector", sel, f"{ROLE_LABEL}=prefill",
                "--decode-selector", sel, f"{ROLE_LABEL}=decode"]
    return out


def _probe() -> dict:
    return {"tcpSocket": {"port": HTTP_PORT}, "initialDelaySeconds": 30, "periodSeconds": 10}


def _worker_pod(exp: Experiment, role: Role, lab: dict[str, str]) -> dict:
    ports = [{"containerPort": HTTP_PORT, "name": "http"}]
    if role.mode == "prefill":
        ports.append({"containerPort": exp.topology.bootstrap_port, "name": "bootstrap"})
    limits = {"nvidia.com/gpu": str(role.tp)}
    if exp.gpu.erdma:
        limits["aliyun/erdma"] = "1"
    limits.update(WORKER_RESOURCES)
    container = {
        "name": "sglang",
        "image": exp.image,
        "imagePullPolicy": "IfNotPresent",
        "command": SGLANG_SERVER + worker_args(exp, role, host="$(POD_IP)", port=HTTP_PORT),
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": ports,
        "readinessProbe": _probe(),
        "resources": {"limits": limits, "requests": dict(limits)},
        "volumeMounts": [
            {"name": "model", "mountPath": exp.storage.mount_path},
            {"name": "dshm", "mountPath": "/dev/shm"},
        ],
    }
    meta: dict[str, Any] = {"labels": dict(lab)}
    if role.mode == "prefill":
        meta["annotations"] = {BOOTSTRAP_ANNOTATION: str(exp.topology.bootstrap_port)}
    return {
        "metadata": meta,
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": "model", "persistentVolumeClaim": {"claimName": exp.storage.pvc}},
                {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
            ],
        },
    }


def _router_pod(exp: Experiment, lab: dict[str, str], run_id: str | None, subdomains: Subdomains | None) -> dict:
    ports = [{"containerPort": HTTP_PORT, "name": "http"}]
    if exp.topology.router.impl == "sglang-router":
        ports.append({"containerPort": ROUTER_METRICS_PORT, "name": "metrics"})
    spec: dict[str, Any] = {
        "containers": [{
            "name": "scheduler",
            "image": exp.router_image or exp.image,
            "imagePullPolicy": "IfNotPresent",
            "command": router_command(exp, run_id, subdomains),
            "ports": ports,
            "readinessProbe": _probe() | {"initialDelaySeconds": 5},
            "resources": {"limits": {"cpu": "2", "memory": "4Gi"}, "requests": {"cpu": "1", "memory": "2Gi"}},
        }],
    }
    if exp.topology.router.service_discovery:
        spec["serviceAccountName"] = f"{exp.name}-router"
    return {"metadata": {"labels": dict(lab)}, "spec": spec}


def rolebasedgroup(exp: Experiment, *, api: str = "v1alpha1", run_id: str | None = None,
                   subdomains: Subdomains | None = None) -> dict:
    """The RoleBasedGroup object for an experiment, in the v1alpha1 (ACK) or v1alpha2 (upstream) shape;
    `subdomains` overrides the workers' Service names in the router's URLs (what the cluster made)."""
    if api not in API_VERSIONS:
        raise SpecError(f"unknown RoleBasedGroup API version '{api}'; use one of {', '.join(API_VERSIONS)}",
                        field="--api")
    lab = labels(exp, run_id)
    topo = build(exp)
    roles = []
    worker_names = [r.name for r in topo.workers]
    for role in topo.roles:
        role_lab = {**lab, ROLE_LABEL: role.name}
        if role.name == ROUTER_ROLE:
            template = _router_pod(exp, role_lab, run_id, subdomains)
            entry: dict[str, Any] = {"name": role.name, "replicas": 1,
                                     "dependencies": sorted(worker_names)}
        else:
            template = _worker_pod(exp, role, role_lab)
            entry = {"name": role.name, "replicas": role.replicas}
        if api == "v1alpha1":
            entry["template"] = template
        else:
            entry["standalonePattern"] = {"template": template}
        _stamp(template)
        roles.append(entry)
    # workers first, so a reader sees what the router depends on before the router
    roles = roles[1:] + roles[:1]
    return {
        "apiVersion": f"{GROUP}/{api}",
        "kind": "RoleBasedGroup",
        "metadata": {"name": exp.name, "namespace": exp.namespace, "labels": dict(lab)},
        "spec": {"roles": roles},
    }


def template_hash(template: dict) -> str:
    """A short hash of a pod template (without its own hash annotation): what readiness compares pods against."""
    meta = dict(template.get("metadata") or {})
    ann = {k: v for k, v in (meta.get("annotations") or {}).items() if k != TEMPLATE_HASH_ANNOTATION}
    meta["annotations"] = ann
    return hashlib.sha256(json.dumps({**template, "metadata": meta}, sort_keys=True).encode()).hexdigest()[:16]


def _stamp(template: dict) -> None:
    template.setdefault("metadata", {}).setdefault("annotations", {})[TEMPLATE_HASH_ANNOTATION] = \
        template_hash(template)


def role_templates(rbg: dict) -> dict[str, dict]:
    """role name → pod template of a rendered RoleBasedGroup, in either API shape."""
    return {r["name"]: r.get("template") or (r.get("standalonePattern") or {}).get("template") or {}
            for r in rbg["spec"]["roles"]}


def service(exp: Experiment, run_id: str | None = None) -> dict:
    """ClusterIP Service `<name>:8000` selecting the router (scheduler) pod by pdlab's own labels."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": exp.name, "namespace": exp.namespace, "labels": labels(exp, run_id)},
        "spec": {
            "type": "ClusterIP",
            "selector": {RUN_LABEL: run_id or exp.name, ROLE_LABEL: ROUTER_ROLE},
            "ports": [{"name": "http", "port": HTTP_PORT, "protocol": "TCP", "targetPort": HTTP_PORT}],
        },
    }


def worker_services(exp: Experiment, run_id: str | None = None) -> list[dict]:
    """The headless Service `<group>-<role>` of each worker role (selecting pdlab's labels), applied before
    the RoleBasedGroup so that the controller adopts it as the pods' subdomain whatever its version."""
    out = []
    for role in build(exp).workers:
        ports = [{"name": "http", "port": HTTP_PORT, "protocol": "TCP", "targetPort": HTTP_PORT}]
        if role.mode == "prefill":
            ports.append({"name": "bootstrap", "port": exp.topology.bootstrap_port, "protocol": "TCP",
                          "targetPort": exp.topology.bootstrap_port})
        out.append({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": service_name(exp, role.name), "namespace": exp.namespace,
                         "labels": {**labels(exp, run_id), ROLE_LABEL: role.name}},
            "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                     "selector": {RUN_LABEL: run_id or exp.name, ROLE_LABEL: role.name}, "ports": ports},
        })
    return out


def storage_objects(exp: Experiment, run_id: str | None = None, *, with_secrets: bool = False) -> list[dict]:
    """The OSS-backed static PV + PVC (+ Secret) for the model, when `storage.oss` is set; else nothing.

    The Secret's keys are read from the environment variables the spec names, only when
    `with_secrets` is true (at apply time); otherwise no Secret object is rendered.
    """
    oss = exp.storage.oss
    if oss is None:
        return []
    lab = labels(exp, run_id)
    objs: list[dict] = []
    if with_secrets:
        values = {}
        for key, env in (("akId", oss.access_key_id_env), ("akSecret", oss.access_key_secret_env)):
            value = os.environ.get(env)
            if not value:
                raise SpecError(f"environment variable {env} is not set; export it (the OSS key is never read "
                                f"from the params file)", field="storage.oss")
            values[key] = value
        objs.append({"apiVersion": "v1", "kind": "Secret",
                     "metadata": {"name": oss.secret_name, "namespace": exp.namespace, "labels": dict(lab)},
                     "type": "Opaque", "stringData": values})
    pv_name = f"{exp.storage.pvc}-{exp.namespace}" if exp.namespace != "default" else exp.storage.pvc
    objs.append({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {"name": pv_name, "labels": {**lab, "alicloud-pvname": pv_name}},
        "spec": {
            "capacity": {"storage": oss.size},
            "accessModes": ["ReadOnlyMany"],
            "persistentVolumeReclaimPolicy": "Retain",
            "csi": {
                "driver": "ossplugin.csi.alibabacloud.com",
                "volumeHandle": pv_name,
                "nodePublishSecretRef": {"name": oss.secret_name, "namespace": exp.namespace},
                "volumeAttributes": {"bucket": oss.bucket, "url": oss.endpoint, "path": oss.path,
                                     "otherOpts": "-o umask=022 -o max_stat_cache_size=0 -o allow_other"},
            },
        },
    })
    objs.append({
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": exp.storage.pvc, "namespace": exp.namespace, "labels": dict(lab)},
        "spec": {
            "accessModes": ["ReadOnlyMany"],
            "resources": {"requests": {"storage": oss.size}},
            "selector": {"matchLabels": {"alicloud-pvname": pv_name}},
            "storageClassName": "",
        },
    })
    return objs


def discovery_rbac(exp: Experiment, run_id: str | None = None) -> list[dict]:
    """ServiceAccount + Role + RoleBinding letting the router watch pods (service discovery only)."""
    if not exp.topology.router.service_discovery:
        return []
    lab = labels(exp, run_id)
    name = f"{exp.name}-router"
    meta = {"name": name, "namespace": exp.namespace, "labels": dict(lab)}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": dict(meta),
         "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": dict(meta),
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": exp.namespace}],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name}},
    ]


def render(exp: Experiment, *, api: str = "v1alpha1", run_id: str | None = None, include_storage: bool = True,
           with_secrets: bool = False, subdomains: Subdomains | None = None) -> list[dict]:
    """Every object of the experiment, in apply order: storage, discovery RBAC, the workers' headless Services,
    RBG, router Service."""
    objs: list[dict] = []
    if include_storage:
        objs += storage_objects(exp, run_id, with_secrets=with_secrets)
    objs += discovery_rbac(exp, run_id)
    objs += worker_services(exp, run_id)
    objs.append(rolebasedgroup(exp, api=api, run_id=run_id, subdomains=subdomains))
    objs.append(service(exp, run_id))
    return objs


def annotate_emulator_args(objs: list[dict], exp: Experiment) -> list[dict]:
    """Add the experiment's `--emu-*` flags (with each role's injected faults) as an annotation on every worker pod
    template (in place), for a cluster whose kubelet runs `pdlab.emulator` (see EMULATED_NODE_LABEL); the router's
    template is untouched."""
    import json

    from pdlab.experiment.commands import emulator_args

    for obj in objs:
        if obj.get("kind") != "RoleBasedGroup":
            continue
        for role in obj["spec"]["roles"]:
            if role["name"] == ROUTER_ROLE:
                continue
            template = role.get("template") or role.get("standalonePattern", {}).get("template") or {}
            value = json.dumps(emulator_args(exp, role["name"]))
            template.setdefault("metadata", {}).setdefault("annotations", {})[EMULATOR_ARGS_ANNOTATION] = value
            _stamp(template)  # the annotation is part of the template: its hash changes with it
    return objs


class _Dumper(yaml.SafeDumper):
    """Block-style YAML that keeps key order, quotes nothing needlessly and never writes anchors/aliases
    (`&id001` / `*id001` where objects share a list): every document reads on its own."""

    def ignore_aliases(self, data: object) -> bool:
        return True


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_presenter)


def to_yaml(objs: list[dict], header: str | None = None) -> str:
    """Multi-document YAML that `kubectl apply -f -` accepts."""
    docs = [yaml.dump(o, Dumper=_Dumper, sort_keys=False, default_flow_style=False) for o in objs]
    text = "---\n".join(docs)
    if header:
        text = "".join(f"# {line}\n" for line in header.splitlines()) + text
    return text
