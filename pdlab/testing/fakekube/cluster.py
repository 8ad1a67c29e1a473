"""The fake cluster's state and its API semantics: options, fault settings, create/update/patch/delete with
validation against CRD schemas, generation and status-subresource rules, RBG version conversion,
garbage collection of dependents, Events, in-cluster DNS for pods, and (optionally) RBAC enforcement.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema

from pdlab.deploy.manifests import EMULATED_NODE_LABEL
from pdlab.testing.fakekube import resources as R
from pdlab.testing.fakekube.rbgprofiles import RbgProfile, profile
from pdlab.testing.fakekube.store import (
    ApiError,
    Store,
    already_exists,
    apply_patch,
    conflict,
    invalid,
    json_patch,
    merge_patch,
    not_found,
    now,
    strategic_merge_patch,
)

ADMIN_TOKEN, ADMIN_USER = "fakekube-token", "kubernetes-admin"
DNS1123_SUB = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
RBG_KEY = "rolebasedgroups.workloads.x-k8s.io"


@dataclass
class ApiFault:
    """Answer the `nth` matching call (and the `times - 1` after it; times=0: every one from then on) with
    `status` instead of serving it. `method` '*' matches any; `path` is a regex searched in the URL path."""

    status: int
    method: str = "*"
    path: str = ""
    nth: int = 1
    times: int = 1
    seen: int = 0
    fired: int = 0

    def hit(self, method: str, path: str) -> bool:
        if self.method not in ("*", method) or not re.search(self.path, path):
            return False
        self.seen += 1
        if self.seen < self.nth or (self.times and self.fired >= self.times):
            return False
        self.fired += 1
        return True


@dataclass
class Faults:
    """Fault modes of one fake cluster (mutable while it runs)."""

    image_pull: str | None = None  # regex: images whose pull fails (ErrImagePull → ImagePullBackOff)
    crash: str | None = None  # regex: pod names whose container exits 1 at start (→ CrashLoopBackOff)
    crash_log: tuple[str, ...] = (
        "[2025-01-01 00:00:00] server_args=ServerArgs(model_path='/models/Qwen3-32B/', tp_size=2, ...)",
        "[2025-01-01 00:00:05 TP0] Load weight begin. avail mem=44.12 GB",
        "[2025-01-01 00:00:41 TP0] Scheduler hit an exception: Traceback (most recent call last):",
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.25 GiB. GPU 0 has a total capacity "
        "of 44.39 GiB of which 312.00 MiB is free.",
    )
    api_errors: list[ApiFault] = field(default_factory=list)
    watch_drop_after: int | None = None  # close every watch stream after this many events
    watch_drops: int = 0  # how many watches were dropped (for tests)
    conversion_webhook_down: bool = False  # profiles with a conversion webhook: non-storage versions answer 500

    def api_error(self, method: str, path: str) -> ApiFault | None:
        for f in self.api_errors:
            if f.hit(method, path):
                return f
        return None


@dataclass
class Options:
    """Shape and timing of the fake cluster."""

    nodes: int = 1
    gpus_per_node: int = 8
    erdma: bool = True
    erdma_per_node: int | None = None  # default: one per GPU
    gpu_product: str = "NVIDIA-L20"
    namespaces: tuple[str, ...] = ("default",)
    install_rbg: bool = True
    rbg_profile: str = "v0.8"  # which RBG controller release to behave like (rbgprofiles.PROFILES)
    rbg_versions: tuple[str, ...] | None = None  # RBG versions served (default: the profile's)
    # v0.5+ name the headless Service as if their informer cache had not seen an existing `<group>-<role>` yet
    rbg_stale_service_cache: bool = False
    pvcs: tuple[str, ...] = ()  # Bound PVCs pre-created in the first namespace (e.g. the model's 'llm-model')
    time_scale: float = 0.05  # multiplies kubelet timings: probe delays/periods, pull time, back-offs, grace
    pull_s: float = 2.0
    # operator overrides for emulated workers, appended after the experiment's own `--emu-*` flags (which pods
    # carry in the pdlab.io/emulator-args annotation), so they win: e.g. a fast time scale for every test
    emu_time_scale: float | None = None  # injected as --emu-time-scale into emulated workers
    emu_args: tuple[str, ...] = ()
    worker_cmd: tuple[str, ...] = (sys.executable, "-m", "pdlab.emulator")
    router_cmd: tuple[str, ...] = (sys.executable, "-m", "sglang_router.launch_router")
    bookmark_interval_s: float = 5.0
    emulated_label: bool = True  # nodes say `pdlab.io/emulated=true` (False: they look like a real cluster's)
    run_containers: bool = True  # False: containers idle and count as ready (API-only tests, kubectl)
    log_dir: Path | None = None
    faults: Faults = field(default_factory=Faults)
    rbac: bool = False  # enforce RBAC for ServiceAccount tokens (kubeconfig(user=...)); the admin token bypasses it


class Cluster:
    """Objects plus the rules the API server applies to them."""

    def __init__(self, options: Options):
        self.opt = options
        self.profile: RbgProfile = profile(options.rbg_profile)
        self.tokens: dict[str, str] = {ADMIN_TOKEN: ADMIN_USER}  # bearer token → user name
        self.store = Store()
        self.server_address = "127.0.0.1:0"
        self._seed()

    # -- seeding -----------------------------------------------------------------------------------
    def _seed(self) -> None:
        for ns in ("kube-system", *self.opt.namespaces):
            self.create(self.res("", "v1", "namespaces"), None,
                        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        erdma = self.opt.erdma_per_node if self.opt.erdma_per_node is not None else self.opt.gpus_per_node
        for i in range(self.opt.nodes):
            alloc = {"cpu": "128", "memory": "1000Gi", "pods": "110", "ephemeral-storage": "1Ti",
                     "nvidia.com/gpu": str(self.opt.gpus_per_node)}
            if self.opt.erdma:
                alloc["aliyun/erdma"] = str(erdma)
            name = f"cn-hangzhou.192.168.0.{10 + i}"
            self.create(self.res("", "v1", "nodes"), None, {"apiVersion": "v1", "kind": "Node", "metadata": {
                "name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                         "node.kubernetes.io/instance-type": "ecs.ebmgn8is.32xlarge",
                                         "nvidia.com/gpu.product": self.opt.gpu_product,
                                         "aliyun.accelerator/nvidia_name": self.opt.gpu_product,
                                         **({EMULATED_NODE_LABEL: "true"} if self.opt.emulated_label else {})}},
                "status": {"capacity": dict(alloc), "allocatable": alloc,
                           "addresses": [{"type": "InternalIP", "address": f"192.168.0.{10 + i}"}],
                           "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                           "message": "kubelet is posting ready status"}],
                           "nodeInfo": {"kubeletVersion": "v1.32.4-aliyun.1", "kubeProxyVersion": "v1.32.4-aliyun.1",
                                        "architecture": "amd64", "operatingSystem": "linux",
                                        "osImage": "Alibaba Cloud Linux 3.2104 U11 (OpenAnolis Edition)",
                                        "kernelVersion": "5.10.134-18.al8.x86_64",
                                        "containerRuntimeVersion": "containerd://1.6.36",
                                        "machineID": f"fake{i:028d}", "systemUUID": f"fake-{i:08d}",
                                        "bootID": f"boot-{i:08d}"}}})
        if self.opt.install_rbg:
            crd = copy.deepcopy(R.rbg_crd())
            served = self.opt.rbg_versions or self.profile.versions
            for v in crd["spec"]["versions"]:
                v["served"] = v["name"] in served
                v["storage"] = v["name"] == self.profile.storage
            crd["status"] = {"acceptedNames": crd["spec"]["names"], "storedVersions": [self.profile.storage],
                             "conditions": [{"type": "Established", "status": "True"}]}
            crds = [crd]
            if self.profile.v1alpha2_workload == "RoleInstanceSet":
                crds += [R.simple_crd("RoleInstanceSet", "roleinstancesets"), R.simple_crd("RoleInstance", "roleinstances")]
            for c in crds:
                self.create(self.res("apiextensions.k8s.io", "v1", "customresourcedefinitions"), None, c)
        for pvc in self.opt.pvcs:
            self.create(self.res("", "v1", "persistentvolumeclaims"), self.opt.namespaces[0], {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": pvc},
                "spec": {"accessModes": ["ReadOnlyMany"], "resources": {"requests": {"storage": "200Gi"}},
                         "volumeName": f"{pvc}-pv", "storageClassName": ""},
                "status": {"phase": "Bound", "accessModes": ["ReadOnlyMany"], "capacity": {"storage": "200Gi"}}})

    # -- types ---------------------------------------------------------------------------------------
    def registry(self) -> R.Registry:
        return R.Registry(self.store.list("customresourcedefinitions.apiextensions.k8s.io"))

    def res(self, group: str, version: str, plural: str) -> R.Res:
        r = self.registry().find(group, version, plural)
        if r is None:
            gv = f"{group}/{version}" if group else version
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({plural} in {gv})",
                           {"group": group, "kind": plural})
        return r

    def res_key(self, key: str) -> R.Res | None:
        return next((r for r in self.registry().types if r.key == key), None)

    # -- presentation -------------------------------------------------------------------------------------
    def present(self, r: R.Res, obj: dict, version: str | None = None) -> dict:
        """A stored object as a client sees it at `version` (RBGs are converted between v1alpha1/v1alpha2)."""
        version = version or r.preferred
        out = copy.deepcopy(obj)
        if r.key == RBG_KEY:
            out = convert_rbg(out, version)
        out["apiVersion"] = r.api_version(version)
        out["kind"] = r.kind
        return {"apiVersion": out.pop("apiVersion"), "kind": out.pop("kind"), **out}

    # -- writes ------------------------------------------------------------------------------------------
    def _ns_check(self, r: R.Res, ns: str | None) -> None:
        if r.namespaced and ns is not None and self.store.get("namespaces", None, ns) is None:
            raise ApiError(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
        if r.namespaced and ns is not None:
            nso = self.store.get("namespaces", None, ns)
            if nso and nso["metadata"].get("deletionTimestamp"):
                raise ApiError(403, "Forbidden", f'{r.kind.lower()}s "?" is forbidden: unable to create new content '
                               f"in namespace {ns} because it is being terminated")

    def validate(self, r: R.Res, obj: dict, version: str, field_validation: str = "Strict") -> list[str]:
        """Schema validation (CRDs) and name rules; returns warnings for unknown fields when not Strict."""
        meta = obj.get("metadata") or {}
        name = meta.get("name") or ""
        if not name:
            raise invalid(r.kind, r.group, "", [("metadata.name", "Required value: name or generateName is required")])
        if not DNS1123_SUB.match(name) or len(name) > 253:
            raise invalid(r.kind, r.group, name, [("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 '
                                                   "subdomain must consist of lower case alphanumeric characters, "
                                                   "'-' or '.', and must start and end with an alphanumeric character")])
        if not r.crd:
            return []
        schema = R.crd_schema(self.registry().crds[r.key], version)
        if not schema:
            return []
        body = {k: v for k, v in obj.items() if k not in ("metadata", "apiVersion", "kind", "status")}
        errs = []
        for e in _validator(id(schema), schema).iter_errors(body):
            path = _field_path(e.absolute_path)
            if e.validator == "required":
                missing = e.message.split("'")[1]
                errs.append((f"{path}.{missing}" if path else missing, "Required value"))
            elif e.validator == "type":
                errs.append((path, f'Invalid value: "{_jtype(e.instance)}": {path} in body must be of type '
                                   f'{e.validator_value}: "{_jtype(e.instance)}"'))
            elif e.validator == "enum":
                errs.append((path, f'Unsupported value: {e.instance!r}: supported values: '
                                   + ", ".join(f'"{v}"' for v in e.validator_value)))
            else:
                errs.append((path, f"Invalid value: {e.instance!r}: {e.message}"))
        if errs:
            raise invalid(r.kind, r.group, name, errs[:10])
        unknown = _unknown_fields(body, schema, "")
        if unknown and field_validation == "Strict":
            raise ApiError(400, "BadRequest", f'{r.kind} in version "{version}" cannot be handled as a {r.kind}: '
                           "strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown))
        if unknown and field_validation == "Warn":
            return [f'unknown field "{u}"' for u in unknown]
        return []

    def create(self, r: R.Res, ns: str | None, obj: dict, *, version: str | None = None,
               field_manager: str | None = None, field_validation: str = "Strict", dry_run: bool = False,
               operation: str = "Update") -> dict:
        version = version or r.preferred
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + format(self.store.rv * 7919 % 99991, "05x")
        if r.namespaced:
            ns = ns or meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, ns):
                raise ApiError(400, "BadRequest", "the namespace of the provided object does not match the "
                               "namespace sent on the request")
        else:
            ns = None
            meta.pop("namespace", None)
        self._ns_check(r, ns)
        self.validate(r, obj, version, field_validation)
        if self.store.get(r.key, ns, meta["name"]) is not None:
            raise already_exists(r.qualified(), meta["name"], r.group, r.plural)
        obj = self._to_storage(r, obj, version)
        meta = obj["metadata"]
        for k in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp", "generation"):
            meta.pop(k, None)
        if r.crd or "spec" in obj:
            meta["generation"] = 1
        meta["managedFields"] = [_managed(field_manager, operation, r, version)]
        if r.status_subresource and r.crd:
            obj.pop("status", None)
        _defaults(r, obj)
        if dry_run:
            return obj
        return self.store.put(r.key, ns, obj, created=True)

    def update(self, r: R.Res, ns: str | None, name: str, new: dict, *, version: str | None = None,
               subresource: str | None = None, field_manager: str | None = None, field_validation: str = "Strict",
               check_rv: bool = True, dry_run: bool = False, operation: str = "Update") -> dict:
        version = version or r.preferred
        cur = self.store.get(r.key, ns if r.namespaced else None, name)
        if cur is None:
            raise not_found(r.qualified(), name, r.group, r.plural)
        new = copy.deepcopy(new)
        rv = (new.get("metadata") or {}).get("resourceVersion")
        if check_rv and rv and rv != cur["metadata"]["resourceVersion"]:
            raise conflict(r.qualified(), name, r.group, r.plural)
        new.setdefault("metadata", {})["name"] = name
        if subresource != "status":
            self.validate(r, new, version, field_validation)
        new = self._to_storage(r, new, version)
        meta = new["metadata"]
        if r.key == RBG_KEY:
            meta["annotations"]["fakekube.pdlab.io/created-as"] = rbg_created_as(cur)
        for k in ("uid", "creationTimestamp", "deletionTimestamp", "generation", "namespace", "finalizers"):
            if k in cur["metadata"]:
                meta[k] = cur["metadata"][k]
            elif k != "finalizers":
                meta.pop(k, None)
        if subresource == "status":
            new = {**copy.deepcopy(cur), "status": new.get("status")}
        elif r.status_subresource:
            if "status" in cur:
                new["status"] = copy.deepcopy(cur["status"])
            else:
                new.pop("status", None)
        _defaults(r, new)
        if subresource != "status" and _spec_of(new) != _spec_of(cur) and "generation" in cur["metadata"]:
            new["metadata"]["generation"] = cur["metadata"]["generation"] + 1
        mf = [m for m in cur["metadata"].get("managedFields", []) if m.get("manager") != (field_manager or "unknown")]
        new["metadata"]["managedFields"] = mf + [_managed(field_manager, operation, r, version, subresource)]
        if _strip_rv(new) == _strip_rv(cur):  # no-op updates keep the resourceVersion
            return cur
        if dry_run:
            return new
        return self.store.put(r.key, ns if r.namespaced else None, new)

    def patch(self, r: R.Res, ns: str | None, name: str, ctype: str, body: Any, *, version: str | None = None,
              subresource: str | None = None, field_manager: str | None = None, force: bool = False,
              field_validation: str = "Strict", dry_run: bool = False) -> tuple[dict, bool]:
        """Apply a patch; returns (object, created). Server-side apply creates missing objects."""
        version = version or r.preferred
        ns = ns if r.namespaced else None
        cur = self.store.get(r.key, ns, name)
        ctype = ctype.split(";")[0].strip()
        if ctype == "application/apply-patch+yaml":
            if not field_manager:
                raise ApiError(400, "BadRequest", "PATCH, application/apply-patch+yaml requests require a "
                               "fieldManager query parameter")
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "error decoding YAML: the applied configuration is not an object")
            if (body.get("metadata") or {}).get("name", name) != name:
                raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
            if cur is None:
                return self.create(r, ns, {**body, "metadata": {**body.get("metadata", {}), "name": name}},
                                   version=version, field_manager=field_manager, operation="Apply",
                                   field_validation=field_validation, dry_run=dry_run), True
            base = self.present(r, cur, version)
            new = apply_patch(base, body)
            return self.update(r, ns, name, new, version=version, subresource=subresource,
                               field_manager=field_manager, field_validation=field_validation, check_rv=False,
                               dry_run=dry_run, operation="Apply"), False
        if cur is None:
            raise not_found(r.qualified(), name, r.group, r.plural)
        base = self.present(r, cur, version)
        if ctype == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "json: cannot unmarshal object into Go value of type jsonpatch.Patch")
            new = json_patch(base, body)
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json") \
                and not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "json: cannot unmarshal array into Go value of type "
                           "map[string]interface {}")
        elif ctype == "application/merge-patch+json":
            new = merge_patch(base, body)
        elif ctype == "application/strategic-merge-patch+json":
            if r.crd:
                raise ApiError(415, "UnsupportedMediaType", 'the body of the request was in an unknown format - '
                               'accepted media types include: application/json-patch+json, '
                               'application/merge-patch+json, application/apply-patch+yaml')
            new = strategic_merge_patch(base, body)
        else:
            raise ApiError(415, "UnsupportedMediaType", "the body of the request was in an unknown format - "
                           "accepted media types include: application/json-patch+json, application/merge-patch+json, "
                           "application/apply-patch+yaml, application/strategic-merge-patch+json")
        return self.update(r, ns, name, new, version=version, subresource=subresource, field_manager=field_manager,
                           field_validation=field_validation, dry_run=dry_run), False

    def delete(self, r: R.Res, ns: str | None, name: str, *, propagation: str | None = None,
               grace: int | None = None, dry_run: bool = False) -> dict:
        """Delete: pods get a deletionTimestamp (the kubelet removes them), Foreground waits for dependents,
        everything else goes at once and the garbage collector removes its dependents."""
        ns = ns if r.namespaced else None
        cur = self.store.get(r.key, ns, name)
        if cur is None:
            raise not_found(r.qualified(), name, r.group, r.plural)
        if dry_run:
            return cur
        meta = cur["metadata"]
        if r.key == "pods" and grace != 0 and meta.get("deletionTimestamp") is None:
            cur = copy.deepcopy(cur)
            cur["metadata"]["deletionTimestamp"] = now()
            cur["metadata"]["deletionGracePeriodSeconds"] = 30 if grace is None else grace
            return self.store.put(r.key, ns, cur)
        if r.key == "pods" and grace != 0:
            return cur
        if propagation == "Foreground" or r.key == "namespaces" or meta.get("finalizers"):
            cur = copy.deepcopy(cur)
            if propagation == "Foreground":
                cur["metadata"]["finalizers"] = sorted({*meta.get("finalizers", []), "foregroundDeletion"})
            cur["metadata"].setdefault("deletionTimestamp", now())
            if r.key == "namespaces":
                cur.setdefault("status", {})["phase"] = "Terminating"
            return self.store.put(r.key, ns, cur)
        if propagation == "Orphan":
            for dep in self.dependents(meta["uid"]):
                dep["metadata"]["ownerReferences"] = [o for o in dep["metadata"]["ownerReferences"]
                                                      if o.get("uid") != meta["uid"]]
        return self.store.remove(r.key, ns, name)

    # -- garbage collection -------------------------------------------------------------------------
    def dependents(self, uid: str) -> list[dict]:
        return [o for o in self.store.objects.values()
                if any(ref.get("uid") == uid for ref in o["metadata"].get("ownerReferences", []))]

    def collect_garbage(self) -> None:
        """Delete objects whose owners are gone; finish Foreground deletions and terminating namespaces."""
        uids = {o["metadata"]["uid"]: o for o in self.store.objects.values()}
        for (key, ns, name), obj in list(self.store.objects.items()):
            meta = obj["metadata"]
            refs = meta.get("ownerReferences") or []
            if refs and all(ref.get("uid") not in uids for ref in refs):
                r = self.res_key(key)
                if r is not None and not (key == "pods" and meta.get("deletionTimestamp")):
                    self.delete(r, ns, name)
            elif refs and any(uids[ref["uid"]]["metadata"].get("deletionTimestamp") and "foregroundDeletion" in
                              uids[ref["uid"]]["metadata"].get("finalizers", []) for ref in refs if ref.get("uid") in uids):
                r = self.res_key(key)
                if r is not None and not meta.get("deletionTimestamp"):
                    self.delete(r, ns, name, propagation="Foreground")
            if meta.get("deletionTimestamp") and key != "pods":
                fins = [f for f in meta.get("finalizers", []) if f != "foregroundDeletion"]
                if key == "namespaces":
                    if not any(n == name for (_, n, _) in self.store.objects):
                        self.store.remove(key, None, name)
                elif not fins and not self.dependents(meta["uid"]):
                    self.store.remove(key, ns, name)

    # -- in-cluster DNS ------------------------------------------------------------------------------
    def pod_dns(self, ns: str, host: str, subdomain: str) -> str | None:
        """The pod that `<host>.<subdomain>` names in `ns`, or None (NXDOMAIN). As with cluster DNS, the name
        exists only when a Service `<subdomain>` exists and selects a pod whose spec.hostname/subdomain are these;
        a pod not created yet counts when the Service exists (its record appears with it)."""
        svc = self.store.get("services", ns, subdomain)
        if svc is None:
            return None
        selector = (svc.get("spec") or {}).get("selector") or {}
        pods = [p for p in self.store.list("pods", ns) if not p["metadata"].get("deletionTimestamp")
                and (p["spec"].get("hostname") or p["metadata"]["name"]) == host]
        if not pods:
            return host if self.store.get("pods", ns, host) is None else None
        for p in pods:
            labels = p["metadata"].get("labels") or {}
            if p["spec"].get("subdomain") == subdomain and selector and all(labels.get(k) == v
                                                                             for k, v in selector.items()):
                return p["metadata"]["name"]
        return None

    # -- RBAC --------------------------------------------------------------------------------------------
    def user_token(self, user: str) -> str:
        """A bearer token for `user` (e.g. system:serviceaccount:NS:NAME), for kubeconfig(user=...)."""
        token = "fakekube-" + re.sub(r"[^a-z0-9]+", "-", user.lower()).strip("-")
        self.tokens[token] = user
        return token

    def authorize(self, token: str | None, verb: str, r: R.Res, ns: str | None, name: str | None,
                  sub: str | None = None) -> None:
        """Raise 403 like the RBAC authorizer when rbac is on and the token's user may not do this."""
        if not self.opt.rbac:
            return
        user = self.tokens.get(token or "")
        if user is None:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        if user == ADMIN_USER:
            return
        resource = f"{r.plural}/{sub}" if sub else r.plural
        for rule in self._rules(user, ns):
            if (any(g in ("*", r.group) for g in rule.get("apiGroups", []))
                    and any(x in ("*", resource) for x in rule.get("resources", []))
                    and any(v in ("*", verb) for v in rule.get("verbs", []))
                    and (not rule.get("resourceNames") or name in rule["resourceNames"])):
                return
        what = f'{r.qualified()} "{name}"' if name else r.qualified()
        scope = f'in the namespace "{ns}"' if ns else "at the cluster scope"
        raise ApiError(403, "Forbidden", f'{what} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
                       f'in API group "{r.group}" {scope}', {"name": name or "", "group": r.group, "kind": r.plural})

    def _rules(self, user: str, ns: str | None) -> list[dict]:
        def bound(b: dict) -> bool:
            for s in b.get("subjects") or []:
                sa = f"system:serviceaccount:{s.get('namespace', '')}:{s.get('name')}"
                if (s.get("kind") == "ServiceAccount" and sa == user) or (s.get("kind") == "User"
                                                                          and s.get("name") == user):
                    return True
            return False

        rules: list[dict] = []
        refs = [b["roleRef"] for b in self.store.list("clusterrolebindings.rbac.authorization.k8s.io") if bound(b)]
        for ref in refs:
            role = self.store.get("clusterroles.rbac.authorization.k8s.io", None, ref["name"])
            rules += (role or {}).get("rules") or []
        if ns is not None:
            for b in self.store.list("rolebindings.rbac.authorization.k8s.io", ns):
                if not bound(b):
                    continue
                ref = b["roleRef"]
                role = self.store.get("roles.rbac.authorization.k8s.io", ns, ref["name"]) if ref["kind"] == "Role" \
                    else self.store.get("clusterroles.rbac.authorization.k8s.io", None, ref["name"])
                rules += (role or {}).get("rules") or []
        return rules

    # -- events ---------------------------------------------------------------------------------------
    def event(self, obj: dict, etype: str, reason: str, message: str, component: str = "kubelet",
              host: str | None = None) -> None:
        """Record an Event about `obj`, aggregating repeats into `count` like the event recorder."""
        meta = obj["metadata"]
        ns = meta.get("namespace") or "default"
        kind = obj.get("kind") or "Pod"
        for ev in self.store.list("events", ns):
            io = ev["involvedObject"]
            if io.get("uid") == meta.get("uid") and ev["reason"] == reason and ev["message"] == message:
                ev = copy.deepcopy(ev)
                ev["count"] = ev.get("count", 1) + 1
                ev["lastTimestamp"] = now()
                self.store.put("events", ns, ev)
                return
        ts = now()
        name = f"{meta['name']}.{int(datetime.now(UTC).timestamp() * 1e9):x}"
        source = {"component": component, **({"host": host} if host else {})}
        self.store.put("events", ns, {
            "metadata": {"name": name, "namespace": ns},
            "involvedObject": {"kind": kind, "namespace": ns, "name": meta["name"], "uid": meta.get("uid"),
                               "apiVersion": obj.get("apiVersion", "v1"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message, "source": source, "firstTimestamp": ts, "lastTimestamp": ts,
            "count": 1, "type": etype, "eventTime": None, "reportingComponent": component,
            "reportingInstance": host or ""}, created=True)

    # -- internal ------------------------------------------------------------------------------------------
    def _to_storage(self, r: R.Res, obj: dict, version: str) -> dict:
        obj = copy.deepcopy(obj)
        obj["apiVersion"], obj["kind"] = r.api_version(version), r.kind
        if r.key == RBG_KEY:
            obj = convert_rbg(obj, "v1alpha1")  # stored internally in one shape; converted on the way out
            obj["apiVersion"] = r.api_version("v1alpha1")
            obj.setdefault("metadata", {}).setdefault("annotations", {})
            obj["metadata"]["annotations"].setdefault("fakekube.pdlab.io/created-as", version)
        return obj


def convert_rbg(obj: dict, version: str) -> dict:
    """Convert a RoleBasedGroup between v1alpha1 (`roles[].template`) and v1alpha2
    (`roles[].standalonePattern.template`)."""
    obj = copy.deepcopy(obj)
    roles = (obj.get("spec") or {}).get("roles") or []
    for role in roles:
        if version == "v1alpha2" and "template" in role:
            role["standalonePattern"] = {**role.get("standalonePattern", {}), "template": role.pop("template")}
            role.pop("restartPolicy", None)
        elif version == "v1alpha1" and "standalonePattern" in role:
            sp = role.pop("standalonePattern") or {}
            if "template" in sp:
                role["template"] = sp["template"]
    ann = (obj.get("metadata") or {}).get("annotations")
    if ann is not None and "fakekube.pdlab.io/created-as" in ann:
        ann = {k: v for k, v in ann.items() if k != "fakekube.pdlab.io/created-as"}
        if ann:
            obj["metadata"]["annotations"] = ann
        else:
            obj["metadata"].pop("annotations")
    group = obj.get("apiVersion", "workloads.x-k8s.io/").split("/")[0]
    obj["apiVersion"] = f"{group}/{version}"
    return obj


def rbg_created_as(obj: dict) -> str:
    """The version an RBG was created with (v1alpha2 names headless services `s-<group>-<role>`)."""
    return (obj["metadata"].get("annotations") or {}).get("fakekube.pdlab.io/created-as", "v1alpha1")


def _managed(manager: str | None, operation: str, r: R.Res, version: str, sub: str | None = None) -> dict:
    out = {"manager": manager or "unknown", "operation": operation, "apiVersion": r.api_version(version),
           "time": now(), "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}}
    if sub:
        out["subresource"] = sub
    return out


def _defaults(r: R.Res, obj: dict) -> None:
    if r.key == "services":
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec.get("clusterIP") != "None":
            n = sum(map(ord, obj["metadata"]["name"])) % 250 + 2
            spec.setdefault("clusterIP", f"172.16.{n}.{len(obj['metadata']['name']) % 250 + 1}")
        spec.setdefault("clusterIPs", [spec["clusterIP"]])
        for p in spec.get("ports", []):
            p.setdefault("protocol", "TCP")
            p.setdefault("targetPort", p.get("port"))
        obj.setdefault("status", {"loadBalancer": {}})
    elif r.key == "persistentvolumeclaims":
        obj.setdefault("status", {"phase": "Pending"})
    elif r.key == "persistentvolumes":
        obj.setdefault("status", {"phase": "Available"})
    elif r.key == "namespaces":
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif r.key == "secrets":
        import base64

        data = obj.setdefault("data", {})
        for k, v in (obj.pop("stringData", None) or {}).items():
            data[k] = base64.b64encode(str(v).encode()).decode()
        obj.setdefault("type", "Opaque")


def _spec_of(obj: dict) -> Any:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _strip_rv(obj: dict) -> dict:
    out = copy.deepcopy(obj)
    out["metadata"].pop("resourceVersion", None)
    out["metadata"].pop("managedFields", None)
    return out


_VALIDATORS: dict[int, Any] = {}


def _validator(key: int, schema: dict) -> jsonschema.Draft7Validator:
    v = _VALIDATORS.get(key)
    if v is None:
        v = _VALIDATORS[key] = jsonschema.Draft7Validator(schema)
    return v


def _field_path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _jtype(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
            type(None): "null"}.get(type(v), "string")


def _unknown_fields(obj: Any, schema: dict, path: str) -> list[str]:
    """Fields the structural schema does not declare (what a Strict field validation rejects)."""
    out: list[str] = []
    if isinstance(obj, dict) and schema.get("type") == "object":
        props = schema.get("properties")
        addl = schema.get("additionalProperties")
        for k, v in obj.items():
            sub = f"{path}.{k}" if path else k
            if props is not None and k in props:
                if not props[k].get("x-kubernetes-embedded-resource") or k != "metadata":
                    out += _unknown_fields(v, props[k], sub)
            elif isinstance(addl, dict):
                out += _unknown_fields(v, addl, sub)
            elif props is not None and not schema.get("x-kubernetes-preserve-unknown-fields") and addl is not True:
                out.append(sub)
    elif isinstance(obj, list) and isinstance(schema.get("items"), dict):
        for i, v in enumerate(obj):
            out += _unknown_fields(v, schema["items"], f"{path}[{i}]")
    return out
