"""The fake cluster's API surface: built-in resource types, CRD-served types, discovery and OpenAPI documents.

Discovery is the legacy (non-aggregated) form — `/api`, `/apis`, `/api/v1`, `/apis/<g>/<v>` — which every
client, kubectl 1.32 included, falls back to when the server answers plain `application/json`.
Custom resources are served from the CustomResourceDefinitions in the store, so deleting the RBG CRD
makes `workloads.x-k8s.io` disappear from discovery exactly as on a real cluster.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources as importlib_resources
from typing import Any

ALL_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
RBG_CRD_NAME = "rolebasedgroups.workloads.x-k8s.io"


@dataclass(frozen=True)
class Res:
    """One served resource type (plural name within an API group), with the versions it is served at."""

    group: str
    versions: tuple[str, ...]
    kind: str
    plural: str
    namespaced: bool
    short: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = ALL_VERBS
    crd: bool = False
    status_subresource: bool = False
    printer_columns: tuple = field(default=(), compare=False, hash=False)

    @property
    def key(self) -> str:
        """Version-independent storage key, e.g. 'pods' or 'rolebasedgroups.workloads.x-k8s.io'."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def preferred(self) -> str:
        return self.versions[0]

    def api_version(self, version: str | None = None) -> str:
        v = version or self.preferred
        return f"{self.group}/{v}" if self.group else v

    def qualified(self) -> str:
        """How the API server names the resource in messages: 'pods', 'rolebasedgroups.workloads.x-k8s.io'."""
        return self.key


def _b(group: str, version: str, kind: str, plural: str, namespaced: bool, short: tuple = (), sub: tuple = (),
       cats: tuple = ()) -> Res:
    return Res(group, (version,), kind, plural, namespaced, short, sub, cats,
               status_subresource="status" in sub)


BUILTIN: tuple[Res, ...] = (
    _b("", "v1", "Namespace", "namespaces", False, ("ns",), ("status",)),
    _b("", "v1", "Node", "nodes", False, ("no",), ("status",)),
    _b("", "v1", "Pod", "pods", True, ("po",), ("status", "log", "portforward"), ("all",)),
    _b("", "v1", "Service", "services", True, ("svc",), ("status",), ("all",)),
    _b("", "v1", "Endpoints", "endpoints", True, ("ep",)),
    _b("", "v1", "PersistentVolume", "persistentvolumes", False, ("pv",), ("status",)),
    _b("", "v1", "PersistentVolumeClaim", "persistentvolumeclaims", True, ("pvc",), ("status",)),
    _b("", "v1", "Secret", "secrets", True),
    _b("", "v1", "ConfigMap", "configmaps", True, ("cm",)),
    _b("", "v1", "ServiceAccount", "serviceaccounts", True, ("sa",)),
    _b("", "v1", "Event", "events", True, ("ev",)),
    _b("apps", "v1", "StatefulSet", "statefulsets", True, ("sts",), ("status",), ("all",)),
    _b("rbac.authorization.k8s.io", "v1", "Role", "roles", True),
    _b("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", True),
    _b("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", False),
    _b("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", False),
    _b("apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions", False, ("crd", "crds"),
       ("status",)),
)


@cache
def rbg_crd() -> dict:
    """The upstream RBG CRD (sgl-project/rbg v0.8.0-alpha.5, Apache-2.0), descriptions stripped to keep it small."""
    raw = importlib_resources.files(__package__).joinpath("rbg-crd.json.gz").read_bytes()
    return json.loads(gzip.decompress(raw))


def simple_crd(kind: str, plural: str, group: str = "workloads.x-k8s.io", version: str = "v1alpha2") -> dict:
    """A schemaless CRD (any fields kept) with a status subresource, e.g. RBG v0.8's RoleInstanceSet."""
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.{group}"},
            "spec": {"group": group, "scope": "Namespaced",
                     "names": {"kind": kind, "plural": plural, "singular": kind.lower(), "listKind": f"{kind}List"},
                     "versions": [{"name": version, "served": True, "storage": True, "subresources": {"status": {}},
                                   "schema": {"openAPIV3Schema": {"type": "object",
                                                                  "x-kubernetes-preserve-unknown-fields": True}}}]}}


def crd_res(crd: dict) -> Res | None:
    """The served resource a stored CRD defines (None when it serves no version)."""
    spec = crd.get("spec", {})
    names = spec.get("names", {})
    served = [v for v in spec.get("versions", []) if v.get("served")]
    if not served or not names.get("plural"):
        return None
    # the preferred version is the storage version (kube-aggregator prefers by version priority; RBG agrees)
    served.sort(key=lambda v: (not v.get("storage"), v["name"]))
    status = any("status" in (v.get("subresources") or {}) for v in served)
    cols = tuple((c["name"], c["jsonPath"], c.get("type", "string")) for c in served[0].get("additionalPrinterColumns", []))
    return Res(spec["group"], tuple(v["name"] for v in served), names["kind"], names["plural"],
               spec.get("scope", "Namespaced") == "Namespaced", tuple(names.get("shortNames", [])),
               ("status",) if status else (), tuple(names.get("categories", [])), crd=True,
               status_subresource=status, printer_columns=cols)


def crd_schema(crd: dict, version: str) -> dict | None:
    """The openAPIV3Schema of one served version of a CRD."""
    for v in crd.get("spec", {}).get("versions", []):
        if v["name"] == version:
            return (v.get("schema") or {}).get("openAPIV3Schema")
    return None


class Registry:
    """Resolves (group, version, plural) to a Res: the built-ins plus whatever the stored CRDs serve."""

    def __init__(self, crds: list[dict]):
        self.types: list[Res] = list(BUILTIN)
        self.crds: dict[str, dict] = {}
        for crd in crds:
            r = crd_res(crd)
            if r is not None:
                self.types.append(r)
                self.crds[r.key] = crd

    def find(self, group: str, version: str, plural: str) -> Res | None:
        for r in self.types:
            if r.group == group and r.plural == plural and version in r.versions:
                return r
        return None

    def by_kind(self, api_version: str, kind: str) -> Res | None:
        group, _, version = api_version.rpartition("/")
        for r in self.types:
            if r.group == group and r.kind == kind and version in r.versions:
                return r
        return None

    def groups(self) -> dict[str, list[str]]:
        """group → served versions, preferred first (core group excluded)."""
        out: dict[str, list[str]] = {}
        for r in self.types:
            if r.group:
                vs = out.setdefault(r.group, [])
                for v in r.versions:
                    if v not in vs:
                        vs.append(v)
        return out

    # -- discovery documents ---------------------------------------------------------------------------
    def api_versions(self, server: str) -> dict:
        return {"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]}

    def group_doc(self, group: str) -> dict | None:
        versions = self.groups().get(group)
        if not versions:
            return None
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    def group_list(self) -> dict:
        return {"kind": "APIGroupList", "apiVersion": "v1",
                "groups": [self.group_doc(g) for g in self.groups()]}

    def resource_list(self, group: str, version: str) -> dict | None:
        rs = [r for r in self.types if r.group == group and version in r.versions]
        if not rs:
            return None
        out: list[dict[str, Any]] = []
        for r in rs:
            entry: dict[str, Any] = {"name": r.plural, "singularName": r.singular, "namespaced": r.namespaced,
                                     "kind": r.kind, "verbs": list(r.verbs)}
            if r.short:
                entry["shortNames"] = list(r.short)
            if r.categories:
                entry["categories"] = list(r.categories)
            if not r.crd:
                entry["storageVersionHash"] = f"{abs(hash(r.key)) % 10**8:08d}xx="[:12]
            out.append(entry)
            for sub in r.subresources:
                kind, verbs = {"status": (r.kind, ["get", "patch", "update"]),
                               "log": ("Pod", ["get"]),
                               "portforward": ("PodPortForwardOptions", ["create", "get"])}[sub]
                out.append({"name": f"{r.plural}/{sub}", "singularName": "", "namespaced": r.namespaced,
                            "kind": kind, "verbs": verbs})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": out}

    # -- OpenAPI v3 (kubectl asks for it to decide on server-side field validation) -------------------
    def openapi_root(self) -> dict:
        paths = {"api/v1": {"serverRelativeURL": "/openapi/v3/api/v1?hash=FAKE"}}
        for g, vs in self.groups().items():
            for v in vs:
                paths[f"apis/{g}/{v}"] = {"serverRelativeURL": f"/openapi/v3/apis/{g}/{v}?hash=FAKE"}
        return {"paths": paths}

    def openapi_gv(self, group: str, version: str) -> dict | None:
        """A minimal OpenAPI v3 document for one group/version: every path with its patch operation and the
        `fieldValidation` query parameter (what kubectl's QueryParamVerifierV3 looks for), plus CRD schemas."""
        rs = [r for r in self.types if r.group == group and version in r.versions]
        if not rs:
            return None
        prefix = f"/apis/{group}/{version}" if group else "/api/v1"
        paths: dict[str, Any] = {}
        schemas: dict[str, Any] = {}
        fv = {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        for r in rs:
            gvk = {"group": group, "version": version, "kind": r.kind}
            ref = f"{_schema_prefix(group)}.{version}.{r.kind}"
            base = f"{prefix}/namespaces/{{namespace}}/{r.plural}" if r.namespaced else f"{prefix}/{r.plural}"
            op = {"x-kubernetes-group-version-kind": gvk, "parameters": [fv], "responses": {"200": {
                "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}}}
            # no strategic-merge type advertised: these schemas carry no patch strategies, so kubectl falls
            # back to its compiled-in ones for built-in kinds (and to merge patches for custom resources)
            patch_types = ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
            body = {"content": {t: {"schema": {"$ref": "#/components/schemas/io.k8s.apimachinery.pkg.apis.meta.v1.Patch"}}
                                for t in patch_types}, "required": True}
            paths[base] = {"post": {**op, "x-kubernetes-action": "post"}}
            paths[base + "/{name}"] = {"get": {"x-kubernetes-action": "get", "x-kubernetes-group-version-kind": gvk},
                                       "put": {**op, "x-kubernetes-action": "put"},
                                       "patch": {**op, "x-kubernetes-action": "patch", "requestBody": body}}
            schema: dict[str, Any] = {"type": "object", "x-kubernetes-group-version-kind": [gvk]}
            if r.crd:
                s = crd_schema(self.crds[r.key], version)
                if s:
                    schema = {**s, "x-kubernetes-group-version-kind": [gvk]}
            else:
                schema["x-kubernetes-preserve-unknown-fields"] = True
            schemas[ref] = schema
        schemas["io.k8s.apimachinery.pkg.apis.meta.v1.Patch"] = {"type": "object"}
        return {"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": "v1.32.4"}, "paths": paths,
                "components": {"schemas": schemas}}


def _schema_prefix(group: str) -> str:
    if not group:
        return "io.k8s.api.core"
    if group.endswith(".k8s.io"):
        return "io.k8s.api." + group.removesuffix(".k8s.io").split(".")[0]
    return ".".join(reversed(group.split(".")))
