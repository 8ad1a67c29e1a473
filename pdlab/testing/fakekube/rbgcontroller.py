"""The fake RBG controller and the workload controllers under it, behaving like one released version
(rbgprofiles.RbgProfile): per role, in dependency order, a workload object (a StatefulSet, or for v0.8 groups
created as v1alpha2 a RoleInstanceSet with RoleInstances) and its headless Service; the group's status and
its events; then the pods of every workload, `<workload>-<i>` with hostname/subdomain, rolled one at a time.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from typing import Any

from pdlab.testing.fakekube.cluster import RBG_KEY, Cluster, rbg_created_as
from pdlab.testing.fakekube.store import ApiError, now

STS_KEY = "statefulsets.apps"
RIS_KEY = "roleinstancesets.workloads.x-k8s.io"
RI_KEY = "roleinstances.workloads.x-k8s.io"
REVISION_LABEL = "controller-revision-hash"
EVENT_REPEAT_S = 5.0  # the same controller event about the same group is recorded again at most this often


def template_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:10]


def pod_ready(pod: dict) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in (pod.get("status") or {}).get("conditions", []))


def dependency_order(roles: list[dict]) -> list[dict]:
    """Roles sorted so that each comes after its dependencies (name order among equals, as upstream)."""
    by_name = {r["name"]: r for r in roles}
    done: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in done or name in path or name not in by_name:
            return
        for dep in sorted(by_name[name].get("dependencies") or []):
            visit(dep, (*path, name))
        done.append(name)

    for name in sorted(by_name):
        visit(name, ())
    return [by_name[n] for n in done]


class RbgController:
    """Reconciles RoleBasedGroups into workloads, Services and pods, as the cluster's profile says."""

    def __init__(self, cluster: Cluster):
        self.c = cluster
        self.p = cluster.profile
        self._events: dict[tuple[str, str, str, str], float] = {}

    def reconcile(self) -> None:
        for rbg in self.c.store.list(RBG_KEY):
            if not rbg["metadata"].get("deletionTimestamp"):
                self._group(rbg)
        for key in (STS_KEY, RIS_KEY):
            for wl in self.c.store.list(key):
                if not wl["metadata"].get("deletionTimestamp"):
                    self._pods(key, wl)
        self._workload_statuses()

    # -- the RBG controller -----------------------------------------------------------------------------
    def _group(self, rbg: dict) -> None:
        roles = (rbg.get("spec") or {}).get("roles") or []
        key = RIS_KEY if rbg_created_as(rbg) == "v1alpha2" and self.p.v1alpha2_workload == "RoleInstanceSet" \
            else STS_KEY
        if self.p.status_first:
            self._status(rbg, roles, key)
        for role in dependency_order(roles):
            unmet = [d for d in role.get("dependencies") or [] if not self._workload_ready(rbg, d, key)]
            if unmet:  # gates the create/update of this role's workload object, and of every role after it
                if self.p.dependency_event:
                    self._event(rbg, "Warning", "DependencyNotMet",
                                f"dependencies not met for role '{role['name']}'")
                return
            wl = self._workload(rbg, role, key)
            self._service(rbg, role, wl)
        if not self.p.status_first:
            self._status(rbg, roles, key)
        self._event(rbg, "Normal", "Succeed", "ReconcileSucceed")

    def labels(self, group: str, role: str) -> dict[str, str]:
        return {self.p.name_label: group, self.p.role_label: role}

    def _workload_ready(self, rbg: dict, role: str, key: str) -> bool:
        meta = rbg["metadata"]
        wl = self.c.store.get(key, meta["namespace"], f"{meta['name']}-{role}")
        if wl is None:
            return False
        return (wl.get("status") or {}).get("readyReplicas", 0) == int(wl["spec"].get("replicas", 1))

    def service_name(self, ns: str, group: str, role: str) -> str:
        """v0.4: `<group>-<role>`; v0.5+ (GetCompatibleHeadlessServiceName): that name if such a Service exists,
        else `s-<group>-<role>`."""
        old = f"{group}-{role}"
        seen = not self.c.opt.rbg_stale_service_cache and self.c.store.get("services", ns, old) is not None
        if not self.p.compatible_service_name or seen:
            return old
        return f"s-{group}-{role}"

    def _workload(self, rbg: dict, role: dict, key: str) -> dict:
        meta = rbg["metadata"]
        group, ns, rname = meta["name"], meta["namespace"], role["name"]
        name = f"{group}-{rname}"
        template = copy.deepcopy(role.get("template") or (role.get("standalonePattern") or {}).get("template") or {})
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**tmeta.get("labels", {}), **self.labels(group, rname)}
        replicas = int(role.get("replicas", 1))
        cur = self.c.store.get(key, ns, name)
        svc = (cur or {}).get("spec", {}).get("serviceName") or self.service_name(ns, group, rname)
        owner = {"apiVersion": rbg["apiVersion"], "kind": "RoleBasedGroup", "name": group, "uid": meta["uid"],
                 "controller": True, "blockOwnerDeletion": True}
        selector = {"matchLabels": self.labels(group, rname)}
        if key == STS_KEY:
            spec: dict[str, Any] = {"replicas": replicas, "serviceName": svc, "podManagementPolicy": "Parallel",
                                    "selector": selector, "template": template}
            av, kind, plural, grp, ver = "apps/v1", "StatefulSet", "statefulsets", "apps", "v1"
        else:
            spec = {"replicas": replicas, "selector": selector, "roleInstanceTemplate": {"components": [
                {"name": rname, "serviceName": svc, "size": 1, "template": template}]}}
            av, kind, plural, grp, ver = "workloads.x-k8s.io/v1alpha2", "RoleInstanceSet", "roleinstancesets", \
                "workloads.x-k8s.io", "v1alpha2"
        if cur is None:
            return self.c.create(self.c.res(grp, ver, plural), ns, {
                "apiVersion": av, "kind": kind,
                "metadata": {"name": name, "namespace": ns, "labels": self.labels(group, rname),
                             "ownerReferences": [owner]}, "spec": spec}, field_manager=self.p.controller)
        if cur["spec"] != spec:
            cur = copy.deepcopy(cur)
            cur["spec"] = spec
            cur["metadata"]["generation"] = cur["metadata"].get("generation", 1) + 1
            return self.c.store.put(key, ns, cur)
        return cur

    def _service(self, rbg: dict, role: dict, wl: dict) -> None:
        """The role's headless Service, applied like upstream's server-side apply with force: selector
        (atomic) and labels the controller's, an owner reference to the workload, no ports of its own."""
        meta = rbg["metadata"]
        group, ns = meta["name"], meta["namespace"]
        name = wl["spec"].get("serviceName") or wl["spec"]["roleInstanceTemplate"]["components"][0]["serviceName"]
        lab = self.labels(group, role["name"])
        ref = {"apiVersion": wl["apiVersion"], "kind": wl["kind"], "name": wl["metadata"]["name"],
               "uid": wl["metadata"]["uid"], "blockOwnerDeletion": True}
        cur = self.c.store.get("services", ns, name)
        if cur is None:
            self.c.create(self.c.res("", "v1", "services"), ns, {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": name, "namespace": ns, "labels": lab, "ownerReferences": [ref]},
                "spec": {"clusterIP": "None", "selector": lab, "publishNotReadyAddresses": True}},
                field_manager=self.p.controller)
            return
        refs = cur["metadata"].get("ownerReferences") or []
        new_refs = refs if any(r.get("uid") == ref["uid"] for r in refs) else [*refs, ref]
        new_labels = {**(cur["metadata"].get("labels") or {}), **lab}
        if cur["spec"].get("selector") != lab or new_refs != refs or new_labels != cur["metadata"].get("labels"):
            cur = copy.deepcopy(cur)
            cur["spec"]["selector"] = lab
            cur["metadata"]["labels"] = new_labels
            cur["metadata"]["ownerReferences"] = new_refs
            self.c.store.put("services", ns, cur)

    def _status(self, rbg: dict, roles: list[dict], key: str) -> None:
        meta = rbg["metadata"]
        old = rbg.get("status") or {}
        previous = {r["name"]: r for r in old.get("roleStatuses", [])}
        statuses, changed = [], False
        for role in roles:
            wl = self.c.store.get(key, meta["namespace"], f"{meta['name']}-{role['name']}")
            if wl is None:
                rs = previous.get(role["name"]) or {"name": role["name"], "readyReplicas": 0, "replicas": 0}
            elif (wl.get("status") or {}).get("observedGeneration", 0) < wl["metadata"].get("generation", 1):
                if self.p.name == "v0.6":  # sts_reconciler.go ConstructRoleStatus: an error, status not written
                    self._event(rbg, "Warning", "FailedReconcileWorkload", f"Failed to construct role "
                                f"{role['name']} status: sts generation not equal to observed generation")
                    return
                rs = previous.get(role["name"]) or {"name": role["name"], "readyReplicas": 0, "replicas": 0}
            else:
                st = wl.get("status") or {}
                replicas = st.get("replicas", 0) if key == RIS_KEY else int(wl["spec"].get("replicas", 1))
                rs = {"name": role["name"], "readyReplicas": st.get("readyReplicas", 0), "replicas": replicas}
                if self.p.updated_replicas:
                    rs["updatedReplicas"] = st.get("updatedReplicas", 0)
            prev = previous.get(role["name"])
            # the status is written when any count changed (common.go ConstructRoleStatue), but an entry is
            # rewritten only when replicas or readyReplicas changed (updateRBGStatus): updatedReplicas goes stale
            changed = changed or prev is None or any(prev.get(k) != rs.get(k) for k in
                                                     ("replicas", "readyReplicas", "updatedReplicas"))
            if prev is not None and (prev.get("replicas"), prev.get("readyReplicas")) == (rs["replicas"],
                                                                                        rs["readyReplicas"]):
                rs = prev
            statuses.append(rs)
        if not changed and self.p.name != "v0.8" and old:
            return  # v0.4/v0.6 write the status only when a role's counts changed (observedGeneration with it)
        want = {r["name"]: int(r.get("replicas", 1)) for r in roles}
        ready = bool(statuses) and all(
            rs["readyReplicas"] == rs["replicas"] and (not self.p.ready_needs_spec_replicas
                                                       or want[rs["name"]] == rs["replicas"]) for rs in statuses)
        reason = self.p.ready_reason[0 if ready else 1]
        cond_old = next((c for c in old.get("conditions", []) if c.get("type") == "Ready"), None)
        status_s = "True" if ready else "False"
        cond: dict[str, Any] = {
            "type": "Ready", "status": status_s, "reason": reason,
            "message": "All roles are ready" if ready else "Not all role ready",
            "lastTransitionTime": cond_old["lastTransitionTime"] if cond_old and cond_old["status"] == status_s
            else now()}
        if self.p.name == "v0.8":
            cond["observedGeneration"] = meta.get("generation", 1)
        new: dict[str, Any] = {"conditions": [cond], "roleStatuses": statuses}
        if self.p.observed_generation:
            new["observedGeneration"] = meta.get("generation", 1)
        if new != old:
            obj = copy.deepcopy(rbg)
            obj["status"] = new
            self.c.store.put(RBG_KEY, meta["namespace"], obj)

    def _event(self, rbg: dict, etype: str, reason: str, message: str) -> None:
        key = (rbg["metadata"]["uid"], etype, reason, message)
        if time.monotonic() - self._events.get(key, -1e9) < EVENT_REPEAT_S:
            return
        self._events[key] = time.monotonic()
        self.c.event({**rbg, "kind": "RoleBasedGroup"}, etype, reason, message, component=self.p.controller)

    # -- the workload controllers (StatefulSet, RoleInstanceSet → RoleInstance) ------------------------------
    def _pods(self, key: str, wl: dict) -> None:
        meta = wl["metadata"]
        ns, name = meta["namespace"], meta["name"]
        replicas = int(wl["spec"].get("replicas", 1))
        if key == STS_KEY:
            template, svc = wl["spec"]["template"], wl["spec"]["serviceName"]
        else:
            comp = wl["spec"]["roleInstanceTemplate"]["components"][0]
            template, svc = comp["template"], comp["serviceName"]
        rev = f"{name}-{template_hash(template)}"
        owners = {meta["uid"]: meta["name"]}
        if key == RIS_KEY:
            owners = {}
            for i in range(replicas):
                ri = self._instance(wl, i)
                owners[ri["metadata"]["uid"]] = ri["metadata"]["name"]
            for ri in self.c.store.list(RI_KEY, ns):
                if _ordinal(ri["metadata"]["name"]) >= replicas and _owned_by(ri, meta["uid"]):
                    self.c.delete(self.c.res("workloads.x-k8s.io", "v1alpha2", "roleinstances"), ns,
                                  ri["metadata"]["name"])
        pods = {p["metadata"]["name"]: p for p in self._owned_pods(key, wl)}
        for pname, pod in pods.items():
            if _ordinal(pname) >= replicas and not pod["metadata"].get("deletionTimestamp"):
                self.c.delete(self.c.res("", "v1", "pods"), ns, pname)
        for i in range(replicas):
            pname = f"{name}-{i}"
            if pname not in pods:
                owner = (wl, meta["uid"]) if key == STS_KEY else (None, next(u for u, n in owners.items()
                                                                             if n == pname))
                self._create_pod(wl, key, pname, i, svc, template, rev, owner[1])
        # rolling update: replace one stale pod at a time, highest ordinal first, once none is terminating
        stale = sorted((p for p in pods.values() if (p["metadata"].get("labels") or {}).get(REVISION_LABEL) != rev
                        and not p["metadata"].get("deletionTimestamp")),
                       key=lambda p: -_ordinal(p["metadata"]["name"]))
        if stale and not any(p["metadata"].get("deletionTimestamp") for p in pods.values()):
            self.c.delete(self.c.res("", "v1", "pods"), ns, stale[0]["metadata"]["name"])

    def _owned_pods(self, key: str, wl: dict) -> list[dict]:
        """The workload's pods: owned by the StatefulSet, or by the RoleInstanceSet's RoleInstances."""
        meta = wl["metadata"]
        uids = {meta["uid"]}
        if key == RIS_KEY:
            uids = {ri["metadata"]["uid"] for ri in self.c.store.list(RI_KEY, meta["namespace"])
                    if _owned_by(ri, meta["uid"])}
        return [p for p in self.c.store.list("pods", meta["namespace"]) if any(_owned_by(p, u) for u in uids)]

    def _instance(self, ris: dict, i: int) -> dict:
        meta = ris["metadata"]
        name = f"{meta['name']}-{i}"
        cur = self.c.store.get(RI_KEY, meta["namespace"], name)
        if cur is not None:
            return cur
        return self.c.create(self.c.res("workloads.x-k8s.io", "v1alpha2", "roleinstances"), meta["namespace"], {
            "apiVersion": "workloads.x-k8s.io/v1alpha2", "kind": "RoleInstance",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": dict(meta.get("labels") or {}),
                         "ownerReferences": [{"apiVersion": ris["apiVersion"], "kind": "RoleInstanceSet",
                                              "name": meta["name"], "uid": meta["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": {"components": copy.deepcopy(ris["spec"]["roleInstanceTemplate"]["components"])}},
            field_manager=self.p.controller)

    def _create_pod(self, wl: dict, key: str, name: str, idx: int, svc: str, template: dict, rev: str,
                    owner_uid: str) -> None:
        ns = wl["metadata"]["namespace"]
        labels = dict(self.labels((wl["metadata"]["labels"] or {}).get(self.p.name_label, ""),
                                  (wl["metadata"]["labels"] or {}).get(self.p.role_label, "")))
        role = labels[self.p.role_label]
        group = labels[self.p.name_label]
        spec = copy.deepcopy(template.get("spec") or {})
        extra_env = [{"name": "GROUP_NAME", "value": group}, {"name": "ROLE_NAME", "value": role},
                     {"name": "ROLE_INDEX", "value": str(idx)}]
        for ctr in spec.get("containers", []):
            ctr["env"] = [*ctr.get("env", []), *extra_env]
            ctr.setdefault("imagePullPolicy", "IfNotPresent")
            ctr.setdefault("terminationMessagePath", "/dev/termination-log")
        spec.update(hostname=name, subdomain=svc)
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("serviceAccountName", "default")
        lab = {**(template.get("metadata") or {}).get("labels", {}), REVISION_LABEL: rev}
        if key == STS_KEY:
            lab.update({"statefulset.kubernetes.io/pod-name": name, "apps.kubernetes.io/pod-index": str(idx)})
            ref = {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": wl["metadata"]["name"], "uid": owner_uid}
        else:
            lab.update({self.p.name_label.rsplit("/", 1)[0] + "/role-instance-name": name})
            ref = {"apiVersion": "workloads.x-k8s.io/v1alpha2", "kind": "RoleInstance", "name": name,
                   "uid": owner_uid}
        meta: dict[str, Any] = {"name": name, "namespace": ns, "labels": lab,
                                "ownerReferences": [{**ref, "controller": True, "blockOwnerDeletion": True}]}
        ann = (template.get("metadata") or {}).get("annotations")
        if ann:
            meta["annotations"] = dict(ann)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
               "status": {"phase": "Pending", "qosClass": "Burstable"}}
        try:
            self.c.create(self.c.res("", "v1", "pods"), ns, pod, field_manager="kube-controller-manager")
        except ApiError as e:
            if e.code != 409:
                raise

    def _workload_statuses(self) -> None:
        for key in (STS_KEY, RIS_KEY):
            for wl in self.c.store.list(key):
                meta = wl["metadata"]
                template = wl["spec"]["template"] if key == STS_KEY else \
                    wl["spec"]["roleInstanceTemplate"]["components"][0]["template"]
                rev = f"{meta['name']}-{template_hash(template)}"
                pods = self._owned_pods(key, wl)
                ready = sum(1 for p in pods if pod_ready(p) and not p["metadata"].get("deletionTimestamp"))
                updated = sum(1 for p in pods if (p["metadata"].get("labels") or {}).get(REVISION_LABEL) == rev)
                new = {"replicas": len(pods), "readyReplicas": ready, "availableReplicas": ready,
                       "currentReplicas": len(pods), "updatedReplicas": updated,
                       "observedGeneration": meta.get("generation", 1), "updateRevision": rev}
                if wl.get("status") != new:
                    wl = copy.deepcopy(wl)
                    wl["status"] = new
                    self.c.store.put(key, meta["namespace"], wl)


def _owned_by(obj: dict, uid: str) -> bool:
    return any(o.get("uid") == uid for o in obj["metadata"].get("ownerReferences", []))


def _ordinal(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1
