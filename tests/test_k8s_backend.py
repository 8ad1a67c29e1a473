"""The Kubernetes backend against the fake cluster, once per RBG controller profile (v0.4, v0.6, v0.8: see
docs/rbg-controllers.md): deploy → ready → stream → teardown, the experiment's emulation settings reaching the
emulated pods (and only on an emulated cluster), preflight, every fault mode through `pdlab run` (exit 2, a
clear error, no traceback, the run marked incomplete, nothing of pdlab's left behind), cleanup, scale, RBAC,
and one test per finding of issue 18 (labels, status, Service names, dependencies, events, API errors, client
version, RBAC)."""

from __future__ import annotations

import base64
import json
import re
import time

import httpx
import pytest
from kubernetes import client as kclient

from pdlab.core.errors import DeployError, ResourceError
from pdlab.deploy import manifests as M
from pdlab.deploy.k8s import K8sBackend, rbac_manifests
from pdlab.deploy.k8s_client import Rest, load_client
from pdlab.testing.fakekube import PROFILES, ApiFault, Faults
from tests import _k8s_helpers as H
from tests._k8s_helpers import RBG, backend, fake_kube, pdlab_objects, run_cli, seed

API_ONLY = {"run_containers": False}  # containers idle and count as ready: no processes
DNS = {"spec": {"access": "service-dns"}}  # no router /health check (the test is not in the cluster)


@pytest.fixture(autouse=True, params=H.PROFILE_NAMES)
def profile(request, monkeypatch) -> str:
    """Every test here runs against each RBG controller profile of the fake (unless marked `rbg_profiles`:
    what does not touch the controller runs once, to keep the slow suite lean)."""
    only = request.node.get_closest_marker("rbg_profiles")
    if only is not None and request.param not in only.args:
        pytest.skip(f"controller-independent: runs against {', '.join(only.args)} only")
    monkeypatch.setitem(H.PROFILE, "name", request.param)
    return request.param


NEWEST_ONLY = pytest.mark.rbg_profiles(H.PROFILE_NAMES[-1])


def _chat(url: str) -> list[str]:
    body = {"model": "Qwen3-32B", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "stream": True}
    with httpx.Client(timeout=30, trust_env=False) as c, c.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        return [line for line in r.iter_lines() if line]


def _failed_cleanly(kube, capsys, rc: int, run_dir, *needles: str) -> str:
    """`pdlab run` failed as a user should see it; returns its stderr."""
    err = capsys.readouterr().err
    assert rc == 2, err
    assert not re.search(r"^Traceback", err, re.M), err  # (a crash-looping pod's own log may quote one)
    assert err.count("pdlab run: error:") == 1
    for needle in needles:
        assert needle in err, f"{needle!r} not in:\n{err}"
    incomplete = json.loads((run_dir / "incomplete.json").read_text())
    assert incomplete["error_type"] in ("DeployError", "ResourceError", "ApiStatusError")  # PdlabError subclasses
    assert not (run_dir / "summary.json").exists()
    assert pdlab_objects(kube) == []
    return err


@pytest.mark.slow
def test_deploy_stream_through_port_forward_and_teardown_leaves_nothing(tmp_path):
    events: list[str] = []
    exp = seed("gpu.type=H20", "emulator.time_scale=0.02", "emulator.step_overhead_ms=1.5", "emulator.link=tcp")
    with fake_kube(emu_time_scale=None) as kube:  # the experiment's emulation settings, not the fake's
        b = backend(kube, events)
        with b.deploy(exp, run_dir=tmp_path, run_id="run-1") as dep:
            assert [e.name for e in dep.endpoints] == ["sglang-pd-scheduler-0", "sglang-pd-prefill-0",
                                                       "sglang-pd-prefill-1", "sglang-pd-decode-0"]
            lines = _chat(dep.router_url)
            assert lines[-1] == "data: [DONE]" and len(lines) > 2
            assert json.loads(lines[0].removeprefix("data: "))["object"] == "chat.completion.chunk"
            with httpx.Client(timeout=10, trust_env=False) as c:
                for ep in dep.endpoints:
                    text = c.get(ep.metrics_url).text
                    assert ("sglang:" in text) if ep.role != "scheduler" else text
                for ep in dep.workers():
                    emulated = c.get(ep.url + "/server_info").json()["emulated"]
                    assert (emulated["gpu"], emulated["link"], emulated["time_scale"],
                            emulated["step_overhead_s"]) == ("H20", "tcp", 0.02, 0.0015)
            assert {p["metadata"]["labels"][M.RUN_LABEL] for p in kube.objects("pods")} == {"run-1"}
            assert dep.cluster_info()["server_version"].startswith("v1.32")
        assert pdlab_objects(kube) == []
        assert kube.objects("pods") == []
    assert any("Scheduled" in e for e in events) and any("all roles ready" in e for e in events)
    assert (tmp_path / "manifests.yaml").exists()
    assert (tmp_path / "logs" / "sglang-pd-decode-0.log").exists()


@pytest.mark.parametrize(("opts", "overrides", "needle"), [
    ({"namespaces": ("default",)}, ["namespace=exp-ns"], "kubectl create namespace exp-ns"),
    ({"install_rbg": False}, [], "ack-rbgs"),
    ({"rbg_versions": ("v1alpha2",)}, [], "backend.k8s.api_version: v1alpha2"),
    ({"gpus_per_node": 4}, [], "needs 6 nvidia.com/gpu"),
    ({"erdma": False}, [], "eRDMA controller"),
    ({"pvcs": ()}, [], "PVC 'llm-model' does not exist"),
])
def test_preflight_says_what_to_fix_before_applying_anything(opts, overrides, needle):
    with fake_kube(**API_ONLY, **opts) as kube:
        with pytest.raises(ResourceError, match=needle):
            backend(kube).deploy(seed(*overrides))
        assert pdlab_objects(kube) == []


def test_emulator_args_reach_pods_only_on_an_emulated_cluster():
    def templates(kube) -> dict[str, dict]:
        return {r["name"]: r["template"]["metadata"].get("annotations") or {}
                for r in kube.objects(RBG)[0]["spec"]["roles"]}

    exp = seed("emulator.time_scale=0.5")
    for emulated in (True, False):
        with fake_kube(**API_ONLY, emulated_label=emulated) as kube:
            with backend(kube, **DNS).deploy(exp) as dep:
                ann = templates(kube)
                assert M.EMULATOR_ARGS_ANNOTATION not in ann["scheduler"]
                for role in ("prefill", "decode"):
                    args = json.loads(ann[role][M.EMULATOR_ARGS_ANNOTATION]) if emulated else None
                    assert args == (["--emu-gpu", "L20", "--emu-link", "erdma", "--emu-time-scale", "0.5"]
                                    if emulated else None)
                assert dep.cluster_info()["emulated"] is emulated
                assert all(o["kind"] != "Secret" for o in dep.manifests())


def test_insufficient_gpus_at_runtime_fails_with_failedscheduling_and_cleans_up(tmp_path, capsys):
    with fake_kube(**API_ONLY, gpus_per_node=4) as kube:
        rc, run_dir = run_cli(kube, tmp_path, "backend.k8s.preflight=false")
        err = _failed_cleanly(kube, capsys, rc, run_dir, "Insufficient nvidia.com/gpu", "Fix: not enough free GPUs")
        assert err.index("FailedScheduling") < err.index("pdlab run: error:")  # surfaced as it happened


def test_image_pull_failure_fails_fast_with_the_image_named(tmp_path, capsys):
    with fake_kube(**API_ONLY, faults=Faults(image_pull=r"sglang:v0\.5\.5")) as kube:
        rc, run_dir = run_cli(kube, tmp_path)
        err = _failed_cleanly(kube, capsys, rc, run_dir, "lmsysorg/sglang:v0.5.5")
        assert "ImagePullBackOff" in err or "ErrImagePull" in err


def test_timeout_gives_a_diagnosis():
    with fake_kube(**API_ONLY, faults=Faults(image_pull="sglang")) as kube:
        with pytest.raises(DeployError) as e:
            backend(kube, fail_fast_s=60, spec={"ready_timeout_s": 1.5}).deploy(seed())
        msg = str(e.value)
        assert "not ready after 2 s" in msg and "prefill 0/2" in msg and "pod sglang-pd-prefill-0:" in msg
        if PROFILES[kube.options.rbg_profile].dependency_event:  # the controller's own account (finding 5)
            assert "controller event: DependencyNotMet: dependencies not met for role 'scheduler'" in msg
        assert pdlab_objects(kube) == []


@pytest.mark.slow
@NEWEST_ONLY
def test_crash_loop_reports_last_log_lines(tmp_path, capsys):
    with fake_kube(**API_ONLY, faults=Faults(crash=r"decode-0$")) as kube:
        rc, run_dir = run_cli(kube, tmp_path, "backend.k8s.fail_fast_s=0.5")
        _failed_cleanly(kube, capsys, rc, run_dir, "CrashLoopBackOff", "last exit code 1",
                        "| torch.OutOfMemoryError: CUDA out of memory")


def test_transient_api_500_is_retried_and_a_dropping_watch_is_resumed():
    faults = Faults(api_errors=[ApiFault(500, method="PATCH", path="rolebasedgroups")], watch_drop_after=2)
    with fake_kube(**API_ONLY, faults=faults) as kube:
        with backend(kube, **DNS).deploy(seed()) as dep:
            assert dep.router_url == "http://sglang-pd.default.svc.cluster.local:8000"
        assert faults.api_errors[0].fired == 1 and faults.watch_drops >= 1
        assert pdlab_objects(kube) == []


@pytest.mark.parametrize("fault", [ApiFault(500, method="PATCH", path="rolebasedgroups", times=0),
                                   ApiFault(409, method="PATCH", path="services", times=0)])
def test_persistent_api_errors_fail_clearly_and_leave_nothing(fault, tmp_path, capsys):
    with fake_kube(**API_ONLY, faults=Faults(api_errors=[fault])) as kube:
        rc, run_dir = run_cli(kube, tmp_path, "backend.k8s.access=service-dns")
        _failed_cleanly(kube, capsys, rc, run_dir, f"(HTTP {fault.status}")


def test_interrupt_during_wait_tears_down():
    def interrupt(line: str) -> None:
        if "Scheduled" in line:
            raise KeyboardInterrupt

    with fake_kube(**API_ONLY) as kube:
        with pytest.raises(KeyboardInterrupt):
            backend(kube, on_event=interrupt).deploy(seed())
        assert pdlab_objects(kube) == []


def test_cleanup_touches_only_pdlab_labelled_objects():
    with fake_kube(**API_ONLY) as kube:
        api, _, _ = load_client(str(kube.kubeconfig()))
        rest = Rest(api)
        for exp in (seed(), seed("name=other")):
            for obj in M.render(exp, run_id=f"{exp.name}-run"):
                rest.apply(obj)
        rest.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "keep-me", "namespace": "default",
                                                                         "labels": {"app": "mine"}},
                    "spec": {"ports": [{"port": 80}]}})
        b = backend(kube)
        removed = b.cleanup(experiment="other")
        # the workers' headless Services may already be gone with the group (the controller owns them too)
        assert {"rolebasedgroup/default/other", "service/default/other"} <= set(removed) <= {
            "rolebasedgroup/default/other", "service/default/other", "service/default/other-decode",
            "service/default/other-prefill"}
        assert {o["metadata"]["name"] for o in kube.objects(RBG)} == {"sglang-pd"}
        assert {"rolebasedgroup/default/sglang-pd", "service/default/sglang-pd"} <= set(b.cleanup())
        assert pdlab_objects(kube) == []
        names = {s["metadata"]["name"] for s in kube.objects("services")}
        assert "keep-me" in names and not any(n.startswith(("sglang-pd", "other")) for n in names)


@pytest.mark.slow
def test_scale_a_role_in_place_rolls_the_router():
    with fake_kube() as kube:
        with backend(kube).deploy(seed()) as dep:
            router_uid = next(p["metadata"]["uid"] for p in kube.objects("pods")
                              if p["metadata"]["name"] == "sglang-pd-scheduler-0")
            dep.scale("decode", 2)
            pods = {p["metadata"]["name"]: p for p in kube.objects("pods")}
            assert "sglang-pd-decode-1" in pods
            router = pods["sglang-pd-scheduler-0"]
            assert router["metadata"]["uid"] != router_uid  # rolled with the new worker list
            assert sum("decode-1" in a for a in router["spec"]["containers"][0]["command"]) == 1
            assert [e.name for e in dep.workers("decode")] == ["sglang-pd-decode-0", "sglang-pd-decode-1"]
            assert _chat(dep.router_url)[-1] == "data: [DONE]"
        assert pdlab_objects(kube) == []


@NEWEST_ONLY
def test_rbac_is_least_privilege_and_applies():
    objs = rbac_manifests("llm")
    kinds = [o["kind"] for o in objs]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"]
    rules = [r for o in objs for r in o.get("rules", [])]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in rules)
    assert any("pods/portforward" in r["resources"] and "create" in r["verbs"] for r in rules)
    cluster = next(o for o in objs if o["kind"] == "ClusterRole")["rules"]
    assert {res for r in cluster for res in r["resources"]} == {"nodes", "persistentvolumes"}
    pods = next(r for r in rules if r["resources"] == ["pods"])
    assert set(pods["verbs"]) == {"get", "list", "watch"}  # pdlab never writes pods itself
    with fake_kube(**API_ONLY, namespaces=("default", "llm")) as kube:
        api, _, _ = load_client(str(kube.kubeconfig()))
        for obj in objs:
            Rest(api).apply(obj)
        assert [o["metadata"]["name"] for o in kube.objects("roles.rbac.authorization.k8s.io", "llm")] == ["pdlab"]


@NEWEST_ONLY
def test_backend_from_spec_loads_kubeconfig_context_and_rejects_unknown_context(tmp_path):
    with fake_kube(**API_ONLY) as kube:
        from pdlab.experiment.spec import K8sSpec

        with pytest.raises(DeployError, match="no context 'prod'"):
            K8sBackend(K8sSpec(kubeconfig=str(kube.kubeconfig()), context="prod")).rest()
        with pytest.raises(DeployError, match="cannot load kubeconfig"):
            (tmp_path / "bad").write_text("::: not yaml")
            K8sBackend(K8sSpec(kubeconfig=str(tmp_path / "bad"))).rest()


@pytest.mark.slow
@NEWEST_ONLY
def test_oss_keys_reach_the_cluster_secret_but_never_the_run_directory(tmp_path, monkeypatch):
    """The OSS Secret's values come from the environment at apply time; manifests.yaml, logs and provenance
    in the run directory never carry them, and teardown removes the Secret pdlab created."""
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "AKID-visible-only-in-cluster")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "SECRET-visible-only-in-cluster")
    exp = seed("storage.oss={bucket: my-models}", "emulator.time_scale=0.02")
    with fake_kube() as kube:
        with backend(kube).deploy(exp, run_dir=tmp_path, run_id="oss-1") as dep:
            secrets = [s for s in kube.objects("secrets") if s["metadata"]["name"] == "oss-secret"]
            assert len(secrets) == 1
            data = secrets[0].get("stringData") or {
                k: base64.b64decode(v).decode() for k, v in (secrets[0].get("data") or {}).items()}
            assert data == {"akId": "AKID-visible-only-in-cluster", "akSecret": "SECRET-visible-only-in-cluster"}
            dep.logs("sglang-pd-decode-0")
        assert pdlab_objects(kube) == []
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "manifests.yaml" for p in written)
    assert "PersistentVolume" in (tmp_path / "manifests.yaml").read_text()
    for p in written:
        text = p.read_text(errors="replace")
        assert "visible-only-in-cluster" not in text, p


# --------------------------------------------------------------------------- issue 18, one test per finding


def _router_urls(kube) -> list[tuple[str, str]]:
    """(host, subdomain) of every worker URL in the running router pod's command."""
    router = next(p for p in kube.objects("pods") if p["metadata"]["labels"].get("pdlab.io/role") == "scheduler"
                  and not p["metadata"].get("deletionTimestamp"))
    hosts = re.findall(r"http://([a-z0-9-]+)\.([a-z0-9-]+):\d+", " ".join(router["spec"]["containers"][0]["command"]))
    assert hosts
    return hosts


@pytest.mark.parametrize("api", ["v1alpha1", "v1alpha2"])
def test_pods_found_and_routed_by_pdlabs_labels_and_services(profile, api):
    """Findings 1-3: whatever the controller's labels (v0.7+ renamed them), status fields (observedGeneration
    only from v0.5) and Service naming (`s-<group>-<role>` from v0.5 unless `<group>-<role>` exists), pdlab finds
    its pods by its own labels and every worker URL the router was given resolves to that very pod."""
    if api not in PROFILES[profile].versions:
        pytest.skip(f"RBG {profile} does not serve {api}")
    with fake_kube(**API_ONLY) as kube:
        with backend(kube, spec={"access": "service-dns", "api_version": api}).deploy(seed(), run_id="r1") as dep:
            assert sorted(dep.pods) == ["sglang-pd-decode-0", "sglang-pd-prefill-0", "sglang-pd-prefill-1",
                                        "sglang-pd-scheduler-0"]
            for host, sub in _router_urls(kube):
                assert kube.call(lambda h=host, s=sub: kube.cluster.pod_dns("default", h, s)) == host, (host, sub)
            for ep in dep.workers():
                assert ep.url == f"http://{ep.name}.sglang-pd-{ep.role}.default.svc.cluster.local:8000"
            labels = kube.objects("pods")[0]["metadata"]["labels"]
            assert PROFILES[profile].name_label in labels and labels["pdlab.io/run"] == "r1"
            svc = next(s for s in kube.objects("services") if s["metadata"]["name"] == "sglang-pd")
            assert svc["spec"]["selector"] == {"pdlab.io/run": "r1", "pdlab.io/role": "scheduler"}
        assert pdlab_objects(kube) == []


def test_worker_addresses_follow_the_subdomain_the_controller_gave_the_pods(profile):
    """Finding 3, the other way round: should a v0.5+ controller name the Service `s-<group>-<role>` after all
    (its cache had not seen pdlab's Service yet), pdlab re-applies the router with the addresses the pods
    actually have, and every URL resolves."""
    if not PROFILES[profile].compatible_service_name:
        pytest.skip(f"RBG {profile} always names the Service <group>-<role>")
    events: list[str] = []
    with fake_kube(**API_ONLY, rbg_stale_service_cache=True) as kube:
        with backend(kube, events, **DNS).deploy(seed()) as dep:
            urls = _router_urls(kube)
            assert {sub for _, sub in urls} == {"s-sglang-pd-prefill", "s-sglang-pd-decode"}
            for host, sub in urls:
                assert kube.call(lambda h=host, s=sub: kube.cluster.pod_dns("default", h, s)) == host
            assert dep.workers("decode")[0].url.startswith("http://sglang-pd-decode-0.s-sglang-pd-decode.default.")
            dep.scale("decode", 2)
            assert ("sglang-pd-decode-1", "s-sglang-pd-decode") in _router_urls(kube)
    assert any("re-applying the router with the pods' addresses" in e for e in events)


def test_scale_waits_for_the_router_running_the_new_worker_list():
    """Finding 4: dependencies gate the router's workload update, not its pods, and the status can call the
    group ready while the old router pod still runs; readiness waits for a router pod with the new template."""
    with fake_kube(**API_ONLY) as kube:
        with backend(kube, **DNS).deploy(seed()) as dep:
            dep.scale("decode", 2)
            live = [p for p in kube.objects("pods") if not p["metadata"].get("deletionTimestamp")]
            router = [p for p in live if p["metadata"]["labels"]["pdlab.io/role"] == "scheduler"]
            assert len(router) == 1
            assert "sglang-pd-decode-1.sglang-pd-decode" in " ".join(router[0]["spec"]["containers"][0]["command"])
            assert router[0]["metadata"]["annotations"][M.TEMPLATE_HASH_ANNOTATION] == \
                dep.expected_hashes()["scheduler"]
            assert [e.name for e in dep.workers("decode")] == ["sglang-pd-decode-0", "sglang-pd-decode-1"]


def test_rolebasedgroup_events_are_surfaced_as_they_happen(profile):
    """Finding 5: the controller's failures are events on the RoleBasedGroup (v0.5+: DependencyNotMet while the
    workers start); they reach on_event like pod events."""
    events: list[str] = []
    with fake_kube(**API_ONLY) as kube:
        with backend(kube, events, **DNS).deploy(seed()):
            pass
    rbg_events = [e for e in events if "rolebasedgroup/sglang-pd" in e]
    if PROFILES[profile].dependency_event:
        assert any("DependencyNotMet: rolebasedgroup/sglang-pd: dependencies not met for role 'scheduler'" in e
                   for e in rbg_events), events
    assert not any("ReconcileSucceed" in e for e in events)  # routine Normal events stay quiet


def test_a_conversion_webhook_that_goes_down_ends_the_wait_with_the_cause(profile):
    """Finding 6: from RBG v0.7 v1alpha1 is served through the controller's conversion webhook; when it is down
    every v1alpha1 call answers 500. The watch gives up after a few failures and the wait ends naming the cause,
    long before ready_timeout_s."""
    if not PROFILES[profile].conversion_webhook:
        pytest.skip(f"RBG {profile} has no conversion webhook")
    faults = Faults(image_pull="sglang")  # the pods never get ready: only the failing watch can end the wait

    def webhook_dies(line: str) -> None:
        if line.startswith("applied RoleBasedGroup"):
            faults.conversion_webhook_down = True

    with fake_kube(**API_ONLY, faults=faults) as kube:
        start = time.monotonic()
        with pytest.raises(DeployError) as e:
            backend(kube, on_event=webhook_dies, fail_fast_s=60, spec={"ready_timeout_s": 60}).deploy(seed())
        assert time.monotonic() - start < 30
        msg = str(e.value)
        assert "watching the RoleBasedGroup failed 5 times in a row" in msg and "(HTTP 500" in msg
        assert "conversion webhook is down" in msg and "api_version: v1alpha2" in msg
        faults.conversion_webhook_down = False


@NEWEST_ONLY
def test_a_client_without_param_serialize_is_named_not_blamed_on_the_network(monkeypatch):
    """Finding 7: pdlab's REST calls need kubernetes>=37 (ApiClient.param_serialize); an older client is
    reported as such, not as "cannot reach the API server"."""
    monkeypatch.delattr(kclient.ApiClient, "param_serialize")
    with fake_kube(**API_ONLY) as kube:
        with pytest.raises(DeployError, match=r"too old: pdlab needs kubernetes>=37") as e:
            backend(kube).deploy(seed())
        assert "cannot reach" not in str(e.value)


def test_deploy_and_cleanup_work_with_exactly_the_rendered_role(tmp_path, capsys):
    """Finding 8: under the Role and ClusterRole of `rbac_manifests` (the fake enforcing RBAC), a deployment
    works and `pdlab cleanup --backend k8s` (default: the context's namespace) removes pdlab's leftovers; asked
    for every namespace it says what it could not list instead of silently skipping."""
    from pdlab.cli import main

    with fake_kube(**API_ONLY, rbac=True) as kube:
        api, _, _ = load_client(str(kube.kubeconfig()))
        for obj in rbac_manifests("default"):
            Rest(api).apply(obj)
        sa = str(kube.kubeconfig(tmp_path / "sa", user="system:serviceaccount:default:pdlab"))
        with backend(kube, spec={"access": "service-dns", "kubeconfig": sa}).deploy(seed()) as dep:
            assert len(dep.pods) == 4
        for exp in (seed(), seed("name=other")):
            for obj in M.render(exp, run_id=f"{exp.name}-run"):
                Rest(api).apply(obj)
        assert main(["cleanup", "--backend", "k8s", "--kubeconfig", sa, "--all-namespaces"]) == 0
        out = capsys.readouterr()
        assert "cannot list RoleBasedGroups in all namespaces (Forbidden)" in out.err
        assert "could not list RoleBasedGroup, Service" in out.err and "nothing to clean up" in out.out
        assert main(["cleanup", "--backend", "k8s", "--kubeconfig", sa]) == 0
        out = capsys.readouterr()
        assert "removed rolebasedgroup/default/other" in out.out and "skipped" not in out.err
        assert pdlab_objects(kube) == []
