"""Rendered manifests: the reference deployment field by field, and schema validity (RBG CRD + core)."""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from conftest import SHARED

from pdlab.deploy.manifests import render, to_yaml
from pdlab.experiment.loader import experiment_from_dict, load_experiment

CRD = SHARED / "crds" / "workloads.x-k8s.io_rolebasedgroups.yaml"
K8S_VERSION = "1.32.0"


@functools.cache
def _validators() -> dict[str, jsonschema.Draft7Validator]:
    """One validator per served version of the upstream RBG CRD (built once: the schema is large)."""
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {v["name"]: jsonschema.Draft7Validator(v["schema"]["openAPIV3Schema"]) for v in crd["spec"]["versions"]}


def _rbg(objs: list[dict]) -> dict:
    return next(o for o in objs if o["kind"] == "RoleBasedGroup")


def _role(rbg: dict, name: str) -> dict:
    return next(r for r in rbg["spec"]["roles"] if r["name"] == name)


@pytest.fixture
def seed(params_dir: Path):
    return load_experiment(params_dir / "seed-2p1d.yaml")


def test_seed_reproduces_reference_deployment(seed) -> None:
    objs = render(seed, api="v1alpha1", run_id="run-1")
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("Service", "sglang-pd-prefill"), ("Service", "sglang-pd-decode"), ("RoleBasedGroup", "sglang-pd"),
        ("Service", "sglang-pd")]  # the workers' headless Services before the group (the controller adopts them)
    *headless, rbg, svc = objs
    assert rbg["apiVersion"] == "workloads.x-k8s.io/v1alpha1"
    assert rbg["metadata"]["name"] == "sglang-pd"

    sched = _role(rbg, "scheduler")
    assert sched["replicas"] == 1
    assert sorted(sched["dependencies"]) == ["decode", "prefill"]
    cmd = sched["template"]["spec"]["containers"][0]["command"]
    assert cmd[:4] == ["python3", "-m", "sglang_router.launch_router", "--pd-disaggregation"]
    text = " ".join(cmd)
    assert "--prefill http://sglang-pd-prefill-0.sglang-pd-prefill:8000 34000" in text
    assert "--prefill http://sglang-pd-prefill-1.sglang-pd-prefill:8000 34000" in text
    assert "--decode http://sglang-pd-decode-0.sglang-pd-decode:8000" in text

    for name, replicas in (("prefill", 2), ("decode", 1)):
        role = _role(rbg, name)
        assert role["replicas"] == replicas
        pod = role["template"]["spec"]
        c = pod["containers"][0]
        cmd = c["command"]
        assert cmd[:3] == ["python3", "-m", "sglang.launch_server"]
        pairs = {cmd[i]: cmd[i + 1] for i in range(3, len(cmd) - 1) if cmd[i].startswith("--")}
        assert pairs["--tp"] == "2"
        assert pairs["--model-path"] == "/models/Qwen3-32B/"
        assert pairs["--disaggregation-mode"] == name
        assert pairs["--port"] == "8000" and pairs["--host"] == "$(POD_IP)"
        assert "--enable-metrics" in cmd
        assert c["env"] == [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["http"] == 8000
        if name == "prefill":
            assert pairs["--disaggregation-bootstrap-port"] == "34000"
            assert ports["bootstrap"] == 34000
        else:
            assert "--disaggregation-bootstrap-port" not in cmd and "bootstrap" not in ports
        assert c["readinessProbe"]["tcpSocket"]["port"] == 8000
        assert c["resources"]["limits"] == {"nvidia.com/gpu": "2", "aliyun/erdma": "1", "cpu": "4", "memory": "16Gi"}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        vols = {v["name"]: v for v in pod["volumes"]}
        assert vols[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "15Gi"}
        assert vols[mounts["/models"]]["persistentVolumeClaim"]["claimName"] == "llm-model"

    assert svc["metadata"]["name"] == "sglang-pd"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"][0]["port"] == 8000
    # pdlab's own labels, never the controller's (they changed in RBG v0.7)
    assert svc["spec"]["selector"] == {"pdlab.io/run": "run-1", "pdlab.io/role": "scheduler"}
    for h, role in zip(headless, ("prefill", "decode"), strict=True):
        assert h["spec"]["clusterIP"] == "None" and h["spec"]["publishNotReadyAddresses"] is True
        assert h["spec"]["selector"] == {"pdlab.io/run": "run-1", "pdlab.io/role": role}
    for role in rbg["spec"]["roles"]:
        meta = role["template"]["metadata"]
        assert meta["labels"]["pdlab.io/run"] == "run-1" and meta["labels"]["pdlab.io/role"] == role["name"]
        assert len(meta["annotations"]["pdlab.io/template-hash"]) == 16
    for obj in objs:
        assert obj["metadata"]["labels"]["pdlab.io/experiment"] == "sglang-pd"
        assert obj["metadata"]["labels"]["pdlab.io/run"] == "run-1"


def _variants(params_dir: Path):
    seed = load_experiment(params_dir / "seed-2p1d.yaml")
    yield "seed", seed
    yield "colocated", load_experiment(params_dir / "colocated-3x-tp2.yaml")
    yield "mini_lb", load_experiment(params_dir / "seed-2p1d.yaml", ["topology.router.impl=mini_lb"])
    yield "discovery", load_experiment(params_dir / "seed-2p1d.yaml", ["topology.router.service_discovery=true"])
    yield "oss", load_experiment(params_dir / "seed-2p1d.yaml", ["storage.oss={bucket: my-models}"])
    yield "3p1d-args", load_experiment(params_dir / "seed-2p1d.yaml",
                                       ["topology.ratio=3P1D", "engine_args={chunked-prefill-size: 8192}"])


@pytest.mark.parametrize("api", ["v1alpha1", "v1alpha2"])
def test_every_rbg_validates_against_crd_schema(params_dir: Path, api: str) -> None:
    validator = _validators()[api]
    for name, exp in _variants(params_dir):
        rbg = next(o for o in render(exp, api=api) if o["kind"] == "RoleBasedGroup")
        validator.validate(rbg)  # raises with the failing path
        for role in rbg["spec"]["roles"]:
            assert ("template" in role) == (api == "v1alpha1"), name
            assert ("standalonePattern" in role) == (api == "v1alpha2"), name


def test_crd_schema_rejects_a_broken_rbg(seed) -> None:
    rbg = _rbg(render(seed))
    del rbg["spec"]["roles"][0]["name"]
    with pytest.raises(jsonschema.ValidationError):
        _validators()["v1alpha1"].validate(rbg)


def test_core_objects_validate_against_kubernetes_schemas(params_dir: Path, monkeypatch) -> None:
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "id-123")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "secret-456")
    for _, exp in _variants(params_dir):
        for obj in render(exp, with_secrets=True):
            if obj["kind"] != "RoleBasedGroup":
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        # the pod templates are core PodTemplateSpecs
        rbg = _rbg(render(exp))
        for role in rbg["spec"]["roles"]:
            tmpl = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": role["template"]}
            kubernetes_validate.validate(tmpl, K8S_VERSION, strict=True)


def test_worker_urls_name_pdlabs_own_service_whatever_the_api_version(seed) -> None:
    """Finding 3 of issue 18: the Service name depends on the controller, not the API version, so pdlab names
    (and renders) `<group>-<role>` itself in both shapes."""
    for api in ("v1alpha1", "v1alpha2"):
        objs = render(seed, api=api)
        tmpl = _role(_rbg(objs), "scheduler")
        tmpl = tmpl.get("template") or tmpl["standalonePattern"]["template"]
        cmd = " ".join(tmpl["spec"]["containers"][0]["command"])
        assert "http://sglang-pd-prefill-0.sglang-pd-prefill:8000 34000" in cmd and "s-sglang-pd" not in cmd
        assert {o["metadata"]["name"] for o in objs if o["kind"] == "Service"} >= {"sglang-pd-prefill",
                                                                                  "sglang-pd-decode"}


def test_template_hash_changes_with_the_template_only(params_dir: Path) -> None:
    """Readiness compares pods' hash with the applied one: the router's changes with its worker list, the
    decode template's does not change with decode's replica count."""
    from pdlab.deploy.manifests import role_templates

    def hashes(*overrides: str) -> dict[str, str]:
        exp = load_experiment(params_dir / "seed-2p1d.yaml", list(overrides))
        return {r: t["metadata"]["annotations"]["pdlab.io/template-hash"]
                for r, t in role_templates(_rbg(render(exp, run_id="r"))).items()}

    one, two = hashes(), hashes("topology.decode.replicas=2")
    assert one["decode"] == two["decode"] and one["prefill"] == two["prefill"]
    assert one["scheduler"] != two["scheduler"]


def test_service_discovery_selects_pdlab_labels(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "seed-2p1d.yaml", ["topology.router.service_discovery=true"])
    cmd = _role(_rbg(render(exp, run_id="run-7")), "scheduler")["template"]["spec"]["containers"][0]["command"]
    i = cmd.index("--prefill-selector")
    assert cmd[i + 1:i + 3] == ["pdlab.io/run=run-7", "pdlab.io/role=prefill"]
    assert not any("rolebasedgroup.workloads" in a or "rbg.workloads" in a for a in cmd)


def test_colocated_renders_router_and_worker_roles(params_dir: Path) -> None:
    rbg = _rbg(render(load_experiment(params_dir / "colocated-3x-tp2.yaml")))
    assert [r["name"] for r in rbg["spec"]["roles"]] == ["worker", "scheduler"]
    cmd = _role(rbg, "scheduler")["template"]["spec"]["containers"][0]["command"]
    assert "--pd-disaggregation" not in cmd
    i = cmd.index("--worker-urls")
    assert cmd[i + 1:i + 4] == [f"http://sglang-colocated-worker-{k}.sglang-colocated-worker:8000" for k in range(3)]
    worker_cmd = _role(rbg, "worker")["template"]["spec"]["containers"][0]["command"]
    assert "--disaggregation-mode" not in worker_cmd


def test_secret_values_only_from_environment(params_dir: Path, monkeypatch) -> None:
    exp = load_experiment(params_dir / "seed-2p1d.yaml", ["storage.oss={bucket: b}"])
    assert "Secret" not in [o["kind"] for o in render(exp)]
    monkeypatch.delenv("OSS_ACCESS_KEY_ID", raising=False)
    with pytest.raises(Exception, match="OSS_ACCESS_KEY_ID is not set"):
        render(exp, with_secrets=True)
    monkeypatch.setenv("OSS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("OSS_ACCESS_KEY_SECRET", "SEKRET")
    secret = next(o for o in render(exp, with_secrets=True) if o["kind"] == "Secret")
    assert secret["stringData"] == {"akId": "AKID", "akSecret": "SEKRET"}


def test_user_values_stay_single_arguments() -> None:
    exp = experiment_from_dict({"model": {"name": "my model; rm -rf /", "path": "/models/Qwen3-32B/"}})
    cmd = _rbg(render(exp))["spec"]["roles"][0]["template"]["spec"]["containers"][0]["command"]
    assert "my model; rm -rf /" in cmd  # one list item, never shell-split


def test_cli_manifests_output_is_multidoc_yaml(params_dir: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "pdlab", "manifests", str(params_dir / "seed-2p1d.yaml"),
                          "--api", "v1alpha2"], capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    assert [d["kind"] for d in docs] == ["Service", "Service", "RoleBasedGroup", "Service"]
    assert _rbg(docs)["apiVersion"].endswith("/v1alpha2")
    assert out == to_yaml(render(load_experiment(params_dir / "seed-2p1d.yaml"), api="v1alpha2"),
                          header=out.splitlines()[0][2:])
