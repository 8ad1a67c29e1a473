"""The fake Kubernetes API server: checked by the real kubectl and the real `kubernetes` client."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import yaml
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.rest import ApiException

from pdlab.deploy import manifests as M
from pdlab.testing.fakekube import PROFILES, ApiFault, Faults
from tests._k8s_helpers import RBG, ROOT, SEED, fake_kube, kubectl, seed


def _api(kube) -> kclient.ApiClient:
    return kconfig.new_client_from_config(config_file=str(kube.kubeconfig()))


def _until(fn, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_kubectl_applies_gets_and_deletes_pdlab_manifests(tmp_path):
    """The real kubectl, on a kubeconfig for the fake, applies `pdlab manifests`, sees the pods and deletes."""
    kc = kubectl()
    out = subprocess.run([sys.executable, "-m", "pdlab", "manifests", str(SEED)], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True).stdout
    path = tmp_path / "seed.yaml"
    path.write_text(out)
    with fake_kube(run_containers=False) as kube:
        cfg = str(kube.kubeconfig(tmp_path / "kubeconfig"))

        def run(*args: str) -> str:
            r = subprocess.run([kc, "--kubeconfig", cfg, *args], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, f"kubectl {' '.join(args)} failed:\n{r.stdout}\n{r.stderr}"
            assert "warning" not in r.stderr.lower(), r.stderr
            return r.stdout

        assert "rolebasedgroup.workloads.x-k8s.io/sglang-pd created" in run("apply", "-f", str(path))
        assert "unchanged" in run("apply", "-f", str(path))
        _until(lambda: [c["status"] for o in kube.objects(RBG) for c in (o.get("status") or {}).get("conditions", [])]
               == ["True"], what="the RBG Ready")
        got = run("get", "rolebasedgroups,pods")
        for pod in ("sglang-pd-prefill-0", "sglang-pd-prefill-1", "sglang-pd-decode-0", "sglang-pd-scheduler-0"):
            assert f"pod/{pod}" in got
        assert "Running" in got and "True" in got  # pod status and the RBG's READY column
        bumped = path.read_text().replace("replicas: 2", "replicas: 3", 1)
        (tmp_path / "bumped.yaml").write_text(bumped)
        assert "rolebasedgroup.workloads.x-k8s.io/sglang-pd configured" in run("apply", "-f", str(tmp_path / "bumped.yaml"))
        _until(lambda: any(p["metadata"]["name"] == "sglang-pd-prefill-2" for p in kube.objects("pods")),
               what="the third prefill pod")
        rbg = yaml.safe_load(run("get", "rbg", "sglang-pd", "-o", "yaml"))
        assert rbg["metadata"]["labels"][M.EXPERIMENT_LABEL] == "sglang-pd"
        deleted = run("delete", "-f", str(path))
        assert 'rolebasedgroup.workloads.x-k8s.io "sglang-pd" deleted' in deleted
        _until(lambda: not kube.objects("pods") and not kube.objects(RBG), what="pods garbage-collected")
        assert "No resources found" in subprocess.run([kc, "--kubeconfig", cfg, "get", "rbg,pods"], capture_output=True,
                                                      text=True, timeout=60).stderr


def test_errors_are_status_objects_with_real_shapes():
    with fake_kube(run_containers=False) as kube:
        core = kclient.CoreV1Api(_api(kube))
        with pytest.raises(ApiException) as e:
            core.read_namespaced_service("nope", "default")
        body = json.loads(e.value.body)
        assert (e.value.status, body["kind"], body["reason"], body["message"]) == \
            (404, "Status", "NotFound", 'services "nope" not found')
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"}, "spec": {"ports": [{"port": 80}]}}
        core.create_namespaced_service("default", svc)
        with pytest.raises(ApiException) as e:
            core.create_namespaced_service("default", svc)
        assert e.value.status == 409 and json.loads(e.value.body)["reason"] == "AlreadyExists"
        with pytest.raises(ApiException) as e:
            core.create_namespaced_service("missing-ns", svc)
        assert json.loads(e.value.body)["message"] == 'namespaces "missing-ns" not found'

        custom = kclient.CustomObjectsApi(_api(kube))
        rbg = M.rolebasedgroup(seed())
        rbg["spec"]["roles"][0]["replicas"] = "two"
        with pytest.raises(ApiException) as e:
            custom.create_namespaced_custom_object("workloads.x-k8s.io", "v1alpha1", "default", "rolebasedgroups", rbg)
        body = json.loads(e.value.body)
        assert e.value.status == 422 and body["reason"] == "Invalid"
        assert body["details"]["causes"][0]["field"] == "spec.roles[0].replicas"
        rbg = M.rolebasedgroup(seed())
        rbg["spec"]["roles"][0]["replicaz"] = 1
        with pytest.raises(ApiException) as e:
            custom.create_namespaced_custom_object("workloads.x-k8s.io", "v1alpha1", "default", "rolebasedgroups", rbg,
                                                   field_validation="Strict")
        assert e.value.status == 400 and 'unknown field "spec.roles[0].replicaz"' in json.loads(e.value.body)["message"]


def test_rbg_served_in_both_versions_and_controller_names_things_like_rbg():
    with fake_kube(run_containers=False) as kube:
        custom = kclient.CustomObjectsApi(_api(kube))
        custom.create_namespaced_custom_object("workloads.x-k8s.io", "v1alpha2", "default", "rolebasedgroups",
                                               M.rolebasedgroup(seed(), api="v1alpha2"))
        v1 = custom.get_namespaced_custom_object("workloads.x-k8s.io", "v1alpha1", "default", "rolebasedgroups",
                                                 "sglang-pd")
        assert v1["apiVersion"] == "workloads.x-k8s.io/v1alpha1" and "template" in v1["spec"]["roles"][0]
        pods = _until(lambda: len(kube.objects("pods")) == 4 and kube.objects("pods"), what="4 pods")
        p0 = next(p for p in pods if p["metadata"]["name"] == "sglang-pd-prefill-0")
        assert p0["metadata"]["labels"]["rbg.workloads.x-k8s.io/group-name"] == "sglang-pd"  # v0.8 labels
        assert p0["metadata"]["labels"]["rbg.workloads.x-k8s.io/role-name"] == "prefill"
        assert p0["metadata"]["labels"][M.EXPERIMENT_LABEL] == "sglang-pd"  # the template's labels
        names = {s["metadata"]["name"] for s in kube.objects("services")}
        assert {"s-sglang-pd-prefill", "s-sglang-pd-decode", "s-sglang-pd-scheduler"} <= names  # v1alpha2 naming
        status = _until(lambda: (custom.get_namespaced_custom_object(
            "workloads.x-k8s.io", "v1alpha2", "default", "rolebasedgroups", "sglang-pd").get("status") or {})
            .get("conditions", [{}])[0].get("status") == "True", what="RBG Ready")
        assert status


def test_watch_resumes_from_resource_version_sends_bookmarks_and_expires_old_versions():
    with fake_kube(run_containers=False, bookmark_interval_s=0.2) as kube:
        api = _api(kube)
        core = kclient.CoreV1Api(api)
        rv = core.list_namespaced_service("default").metadata.resource_version
        core.create_namespaced_service("default", {"metadata": {"name": "w1"}, "spec": {"ports": [{"port": 1}]}})
        resp = core.list_namespaced_service("default", watch=True, resource_version=rv, allow_watch_bookmarks=True,
                                            timeout_seconds=1, _preload_content=False)
        events = [json.loads(line) for line in resp.read().decode().splitlines() if line]
        assert events[0]["type"] == "ADDED" and events[0]["object"]["metadata"]["name"] == "w1"
        assert any(e["type"] == "BOOKMARK" and int(e["object"]["metadata"]["resourceVersion"]) >= int(rv)
                   for e in events)
        resp = core.list_namespaced_service("default", watch=True, resource_version="5", timeout_seconds=1,
                                            _preload_content=False)
        first = json.loads(resp.read().decode().splitlines()[0])
        assert first["type"] == "ERROR" and first["object"]["code"] == 410 and first["object"]["reason"] == "Expired"


def test_patch_flavours_and_server_side_apply():
    with fake_kube(run_containers=False) as kube:
        api = _api(kube)
        core = kclient.CoreV1Api(api)
        core.create_namespaced_service("default", {"metadata": {"name": "p", "labels": {"a": "1"}},
                                                   "spec": {"ports": [{"name": "http", "port": 80}]}})
        # strategic merge: ports merge by port, so a new port is added and the old one kept
        core.patch_namespaced_service("p", "default", {"spec": {"ports": [{"name": "m", "port": 9090}]}})
        assert [p["port"] for p in kube.objects("services")[0]["spec"]["ports"]] == [80, 9090]
        core.patch_namespaced_service("p", "default", [{"op": "replace", "path": "/metadata/labels/a", "value": "2"}])
        assert kube.objects("services")[0]["metadata"]["labels"] == {"a": "2"}
        custom = kclient.CustomObjectsApi(api)
        rbg = M.rolebasedgroup(seed())
        custom.create_namespaced_custom_object("workloads.x-k8s.io", "v1alpha1", "default", "rolebasedgroups", rbg)
        gen = kube.objects(RBG)[0]["metadata"]["generation"]
        with pytest.raises(ApiException) as e:  # a JSON patch sent as a merge patch is refused, not applied
            custom.patch_namespaced_custom_object("workloads.x-k8s.io", "v1alpha1", "default", "rolebasedgroups",
                                                  "sglang-pd", [{"op": "remove", "path": "/spec"}])
        assert e.value.status == 400
        custom.patch_namespaced_custom_object("workloads.x-k8s.io", "v1alpha1", "default", "rolebasedgroups",
                                              "sglang-pd", [{"op": "replace", "path": "/spec/roles/1/replicas",
                                                             "value": 2}],
                                              _content_type="application/json-patch+json")
        stored = kube.objects(RBG)[0]
        assert stored["spec"]["roles"][1]["replicas"] == 2 and stored["metadata"]["generation"] == gen + 1
        # server-side apply creates, then updates, idempotently
        from pdlab.deploy.k8s_client import Rest

        rest = Rest(api)
        svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ssa", "namespace": "default"},
               "spec": {"ports": [{"port": 1}]}}
        first = rest.apply(svc)
        again = rest.apply(svc)
        assert first["metadata"]["resourceVersion"] == again["metadata"]["resourceVersion"]


def test_scheduler_reports_insufficient_gpus_and_missing_pvc():
    with fake_kube(run_containers=False, gpus_per_node=4, pvcs=()) as kube:
        custom = kclient.CustomObjectsApi(_api(kube))
        custom.create_namespaced_custom_object("workloads.x-k8s.io", "v1alpha1", "default", "rolebasedgroups",
                                               M.rolebasedgroup(seed()))
        msgs = _until(lambda: [e["message"] for e in kube.events() if e["reason"] == "FailedScheduling"],
                      what="FailedScheduling")
        assert msgs[0].startswith('0/1 nodes are available: persistentvolumeclaim "llm-model" not found.')
        kclient.CoreV1Api(_api(kube)).create_namespaced_persistent_volume_claim("default", {
            "metadata": {"name": "llm-model"}, "spec": {"accessModes": ["ReadOnlyMany"], "volumeName": "pv1",
                                                        "resources": {"requests": {"storage": "1Gi"}}}})
        kclient.CoreV1Api(_api(kube)).create_persistent_volume({
            "metadata": {"name": "pv1"}, "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                                                  "csi": {"driver": "x", "volumeHandle": "pv1"}}})
        msg = _until(lambda: next((e["message"] for e in kube.events() if e["reason"] == "FailedScheduling"
                                   and "Insufficient" in e["message"]), None), what="Insufficient GPU")
        assert msg.startswith("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
        pending = [p for p in kube.objects("pods") if not p["spec"].get("nodeName")]
        assert pending and pending[0]["status"]["conditions"][0]["reason"] == "Unschedulable"


def test_injected_api_errors_answer_the_nth_call():
    faults = Faults(api_errors=[ApiFault(500, method="GET", path=r"/api/v1/nodes$", nth=2)])
    with fake_kube(run_containers=False, faults=faults) as kube:
        core = kclient.CoreV1Api(_api(kube))
        core.list_node()
        with pytest.raises(ApiException) as e:
            core.list_node()
        assert e.value.status == 500 and json.loads(e.value.body)["reason"] == "InternalError"
        assert core.list_node().items  # only once


def test_vendored_crd_is_the_shared_one_without_descriptions():
    from pdlab.testing.fakekube.resources import rbg_crd
    from tests.conftest import SHARED

    src = SHARED / "crds" / "workloads.x-k8s.io_rolebasedgroups.yaml"
    if not src.exists():
        pytest.skip(f"{src} not present; the vendored copy is used as is")

    def strip(o):
        if isinstance(o, dict):
            return {k: strip(v) for k, v in o.items() if k != "description"}
        return [strip(v) for v in o] if isinstance(o, list) else o

    assert rbg_crd() == strip(yaml.load(src.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


@pytest.mark.slow
def test_standalone_server_writes_a_kubeconfig_kubectl_can_use(tmp_path):
    import signal

    cfg = tmp_path / "kc"
    proc = subprocess.Popen([sys.executable, "-m", "pdlab.testing.fakekube", "--port", "0", "--kubeconfig", str(cfg),
                             "--gpus-per-node", "4", "--no-erdma"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert "serving http://127.0.0.1:" in proc.stdout.readline()
        out = subprocess.run([kubectl(), "--kubeconfig", str(cfg), "get", "nodes", "-o", "json"], capture_output=True,
                             text=True, timeout=60, check=True).stdout
        alloc = json.loads(out)["items"][0]["status"]["allocatable"]
        assert alloc["nvidia.com/gpu"] == "4" and "aliyun/erdma" not in alloc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)


# --------------------------------------------------------------------------- RBG controller profiles


def _until_rbg(kube, pred, what: str):
    return _until(lambda: next((o for o in kube.objects(RBG) if pred(o)), None), what=what)


@pytest.mark.parametrize("name", list(PROFILES))
def test_controller_profiles_follow_upstream(name):
    """Each profile's labels, workload kind, Service naming/ownership and status shape, as its upstream release
    writes them (docs/rbg-controllers.md names the files)."""
    p = PROFILES[name]
    api = "v1alpha2" if "v1alpha2" in p.versions else "v1alpha1"
    with fake_kube(run_containers=False, rbg_profile=name) as kube:
        custom = kclient.CustomObjectsApi(_api(kube))
        custom.create_namespaced_custom_object("workloads.x-k8s.io", api, "default", "rolebasedgroups",
                                               M.rolebasedgroup(seed(), api=api))
        rbg = _until_rbg(kube, lambda o: (o.get("status") or {}).get("conditions", [{}])[0].get("status") == "True",
                         "Ready")
        st = rbg["status"]
        assert st["conditions"][0]["reason"] == "AllRolesReady"
        assert ("observedGeneration" in st) is p.observed_generation
        assert all(("updatedReplicas" in r) is p.updated_replicas for r in st["roleStatuses"])
        pod = next(o for o in kube.objects("pods") if o["metadata"]["name"] == "sglang-pd-prefill-0")
        assert pod["metadata"]["labels"][p.name_label] == "sglang-pd"
        assert pod["metadata"]["labels"][p.role_label] == "prefill"
        owner = pod["metadata"]["ownerReferences"][0]["kind"]
        assert owner == ("RoleInstance" if api == "v1alpha2" and p.v1alpha2_workload == "RoleInstanceSet"
                         else "StatefulSet")
        svc_name = "s-sglang-pd-prefill" if p.compatible_service_name else "sglang-pd-prefill"
        assert pod["spec"]["subdomain"] == svc_name and pod["spec"]["hostname"] == "sglang-pd-prefill-0"
        svc = next(s for s in kube.objects("services") if s["metadata"]["name"] == svc_name)
        assert "ports" not in svc["spec"] and svc["spec"]["clusterIP"] == "None"
        assert [o["kind"] for o in svc["metadata"]["ownerReferences"]] == [owner if owner == "StatefulSet"
                                                                           else "RoleInstanceSet"]


def test_status_reason_and_dependency_gating_of_workloads():
    """Upstream says `RoleNotReady` while a role is not ready, gates the router's workload object (not pods) on
    its dependencies, and records DependencyNotMet on the group (v0.5+)."""
    with fake_kube(run_containers=False, rbg_profile="v0.6", faults=Faults(image_pull="sglang")) as kube:
        custom = kclient.CustomObjectsApi(_api(kube))
        custom.create_namespaced_custom_object("workloads.x-k8s.io", "v1alpha1", "default", "rolebasedgroups",
                                               M.rolebasedgroup(seed()))
        rbg = _until_rbg(kube, lambda o: (o.get("status") or {}).get("conditions"), "a status")
        assert rbg["status"]["conditions"][0]["reason"] == "RoleNotReady"
        _until(lambda: any(e["reason"] == "DependencyNotMet" and e["involvedObject"]["kind"] == "RoleBasedGroup"
                           for e in kube.events()), what="DependencyNotMet")
        names = {s["metadata"]["name"] for s in kube.objects("statefulsets.apps")}
        assert names == {"sglang-pd-prefill", "sglang-pd-decode"}  # no router workload while workers are not ready


def test_pod_dns_resolves_only_through_a_service_that_selects_the_pod():
    """`<pod>.<svc>` exists only when Service <svc> exists, selects the pod and is its subdomain."""
    with fake_kube(run_containers=False, rbg_profile="v0.8") as kube:
        kclient.CustomObjectsApi(_api(kube)).create_namespaced_custom_object(
            "workloads.x-k8s.io", "v1alpha1", "default", "rolebasedgroups", M.rolebasedgroup(seed()))
        _until(lambda: len(kube.objects("pods")) == 4, what="4 pods")
        dns = kube.cluster.pod_dns
        assert kube.call(lambda: dns("default", "sglang-pd-prefill-0", "s-sglang-pd-prefill")) == "sglang-pd-prefill-0"
        assert kube.call(lambda: dns("default", "sglang-pd-prefill-0", "sglang-pd-prefill")) is None  # no such Service
        assert kube.call(lambda: dns("default", "sglang-pd-prefill-0", "s-sglang-pd-decode")) is None  # not selected
        argv = kube.call(lambda: kube.controller._rewrite("default", "x", [
            "--prefill", "http://sglang-pd-prefill-0.sglang-pd-prefill:8000", "34000"]))
        assert argv == ["--prefill", "http://sglang-pd-prefill-0.sglang-pd-prefill.nxdomain.invalid:8000", "34000"]


def test_conversion_webhook_down_fails_non_storage_versions_only():
    with fake_kube(run_containers=False, rbg_profile="v0.8") as kube:
        custom = kclient.CustomObjectsApi(_api(kube))
        kube.faults.conversion_webhook_down = True
        with pytest.raises(ApiException) as e:
            custom.list_namespaced_custom_object("workloads.x-k8s.io", "v1alpha1", "default", "rolebasedgroups")
        assert e.value.status == 500 and "conversion webhook for workloads.x-k8s.io/v1alpha2" in e.value.body
        custom.list_namespaced_custom_object("workloads.x-k8s.io", "v1alpha2", "default", "rolebasedgroups")


def test_rbac_mode_holds_service_account_tokens_to_their_roles(tmp_path):
    with fake_kube(run_containers=False, rbac=True, namespaces=("default", "other")) as kube:
        admin = _api(kube)
        rbac = kclient.RbacAuthorizationV1Api(admin)
        rbac.create_namespaced_role("default", {"metadata": {"name": "r"}, "rules": [
            {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]}]})
        rbac.create_namespaced_role_binding("default", {"metadata": {"name": "r"}, "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "r"}, "subjects": [
            {"kind": "ServiceAccount", "name": "sa", "namespace": "default"}]})
        sa = kconfig.new_client_from_config(config_file=str(kube.kubeconfig(
            tmp_path / "sa", user="system:serviceaccount:default:sa")))
        core = kclient.CoreV1Api(sa)
        core.list_namespaced_service("default")
        for call, msg in ((lambda: core.list_namespaced_service("other"), 'in the namespace "other"'),
                          (lambda: core.list_service_for_all_namespaces(), "at the cluster scope"),
                          (lambda: core.list_namespaced_pod("default"), 'cannot list resource "pods"')):
            with pytest.raises(ApiException) as e:
                call()
            assert e.value.status == 403 and msg in json.loads(e.value.body)["message"]
