"""The Kubernetes backend against the fake cluster: deploy → ready → stream → teardown, the experiment's
emulation settings reaching the emulated pods (and only on an emulated cluster), preflight, every fault mode
through `pdlab run` (exit 2, a clear error, no traceback, the run marked incomplete, nothing of pdlab's left
behind), cleanup, scale, RBAC."""

from __future__ import annotations

import base64
import json
import re

import httpx
import pytest

from pdlab.core.errors import DeployError, ResourceError
from pdlab.deploy import manifests as M
from pdlab.deploy.k8s import K8sBackend, rbac_manifests
from pdlab.deploy.k8s_client import Rest, load_client
from pdlab.testing.fakekube import ApiFault, Faults
from tests._k8s_helpers import RBG, backend, fake_kube, pdlab_objects, run_cli, seed

API_ONLY = {"run_containers": False}  # containers idle and count as ready: no processes
DNS = {"spec": {"access": "service-dns"}}  # no router /health check (the test is not in the cluster)


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
        assert pdlab_objects(kube) == []


@pytest.mark.slow
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
        assert sorted(removed) == ["rolebasedgroup/default/other", "service/default/other"]
        assert {o["metadata"]["name"] for o in kube.objects(RBG)} == {"sglang-pd"}
        assert sorted(b.cleanup()) == ["rolebasedgroup/default/sglang-pd", "service/default/sglang-pd"]
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


def test_backend_from_spec_loads_kubeconfig_context_and_rejects_unknown_context(tmp_path):
    with fake_kube(**API_ONLY) as kube:
        from pdlab.experiment.spec import K8sSpec

        with pytest.raises(DeployError, match="no context 'prod'"):
            K8sBackend(K8sSpec(kubeconfig=str(kube.kubeconfig()), context="prod")).rest()
        with pytest.raises(DeployError, match="cannot load kubeconfig"):
            (tmp_path / "bad").write_text("::: not yaml")
            K8sBackend(K8sSpec(kubeconfig=str(tmp_path / "bad"))).rest()


@pytest.mark.slow
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
