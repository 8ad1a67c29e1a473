"""`pdlab run` with `backend: k8s` against the fake cluster, end to end: the same results layout and schemas
as the local backend for a PD and a colocated topology (a dropping watch on the way), cluster facts in the
provenance and never a token, and an interrupted run (SIGINT, SIGTERM) saved as incomplete and torn down."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from pdlab.analysis.results import load_run
from pdlab.cli import main
from pdlab.testing.fakekube import Faults
from tests._k8s_helpers import PROFILE_NAMES, ROOT, fake_kube, pdlab_objects, run_cli

PARAMS = ROOT / "params" / "demo-local.yaml"  # 1P1D of Qwen3-8B on L20 TP1
SHORT = ["emulator.time_scale=0.05", "workload.rates=[4,8]", "workload.duration_s=1.5", "workload.warmup=1",
         "workload.dataset.output_len=16"]
COLOCATED = "topology={kind: colocated, worker: {replicas: 2, tp: 1}}"


def _schema(df) -> dict[str, str]:
    return {c: str(t) for c, t in df.dtypes.items()}


def _layout(run_dir: Path) -> set[str]:
    return {p.name for p in run_dir.iterdir() if not p.name.startswith(".")}


@pytest.mark.slow
@pytest.mark.parametrize(("topology", "roles"), [([], {"scheduler", "prefill", "decode"}),
                                                 ([COLOCATED], {"scheduler", "worker"})], ids=["1p1d", "colocated"])
def test_k8s_run_matches_the_local_layout(topology, roles, tmp_path, capsys):
    sets = [*SHORT, *topology]
    assert main(["run", str(PARAMS), "--results", str(tmp_path), "--name", "local",
                 *[a for s in sets for a in ("--set", s)]]) == 0
    faults = Faults(watch_drop_after=3)
    with fake_kube(emu_time_scale=None, faults=faults) as kube:  # the experiment's time scale reaches the pods
        rc, k8s_dir = run_cli(kube, tmp_path, *sets, params=PARAMS, name="k8s")
        out, err = capsys.readouterr()
        assert rc == 0, err
        assert out.strip().splitlines()[-1] == str(k8s_dir)
        assert pdlab_objects(kube) == [] and kube.objects("pods") == []
        token = yaml.safe_load(kube.kubeconfig().read_text())["users"][0]["user"]["token"]
    assert faults.watch_drops >= 1  # resumed, not fatal
    local_dir = k8s_dir.parent / "local"
    local, k8s = load_run(local_dir), load_run(k8s_dir)
    assert local.complete and k8s.complete, k8s.incomplete
    assert _layout(k8s_dir) == _layout(local_dir) >= {"params.yaml", "manifests.yaml", "provenance.json",
                                                      "requests.parquet", "server_metrics.parquet", "summary.json"}
    for frame in ("requests", "summary", "server_metrics"):
        assert _schema(getattr(k8s, frame)) == _schema(getattr(local, frame)), frame
    assert k8s.summary["completed"].tolist() == local.summary["completed"].tolist()  # same seeded arrivals
    assert len(k8s.summary) == 2 and k8s.summary["completed"].min() > 0
    assert k8s.summary["failed"].sum() == 0

    # every worker's and the router's /metrics scraped through port-forward, the same series as locally
    sm = k8s.server_metrics
    pods = {e["name"] for e in k8s.provenance["deployment"]}
    assert set(sm["name"]) == pods and set(sm["role"]) == roles
    assert {(r, m) for r, m in zip(sm.role, sm.metric, strict=True) if r != "scheduler"} == \
        {(r, m) for r, m in zip(local.server_metrics.role, local.server_metrics.metric, strict=True) if r != "scheduler"}
    assert sm[sm.role == "scheduler"]["metric"].nunique() > 0

    # manifests.yaml: the applied objects (no Secret); the emulator flags only because the cluster is the fake
    docs = list(yaml.safe_load_all((k8s_dir / "manifests.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Service"] * (len(roles) - 1) + ["RoleBasedGroup", "Service"]
    assert all(d["metadata"]["labels"]["pdlab.io/run"] == "demo-k8s" for d in docs)
    rbg = next(d for d in docs if d["kind"] == "RoleBasedGroup")
    worker = next(r for r in rbg["spec"]["roles"] if r["name"] != "scheduler")
    assert "--emu-time-scale" in worker["template"]["metadata"]["annotations"]["pdlab.io/emulator-args"]

    # provenance: cluster and nodes, never a credential
    prov = k8s.provenance
    assert prov["backend"]["kind"] == "k8s"
    cluster = prov["cluster"]
    assert cluster["server_version"].startswith("v1.32") and cluster["context"] == "fakekube"
    assert cluster["api_version"] == "v1alpha1" and "v1alpha1" in cluster["rbg_versions"]
    assert cluster["nodes"][0]["gpus"] == 8 and cluster["nodes"][0]["erdma"] == 8 and cluster["emulated"] is True
    assert set(cluster["pods"]) == pods
    for path in k8s_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_k8s_run_completes_against_every_controller_profile(profile, tmp_path, capsys):
    """`pdlab run --set backend.kind=k8s` end to end against each RBG controller release the fake emulates,
    kept lean (one short load level): real router and emulated workers, routed through the Services' DNS."""
    with fake_kube(rbg_profile=profile, emu_time_scale=0.05) as kube:
        rc, run_dir = run_cli(kube, tmp_path, "emulator.time_scale=0.05", "workload.rates=[4]",
                              "workload.duration_s=1", "workload.warmup=1", "workload.dataset.output_len=8",
                              params=PARAMS, name=profile)
        err = capsys.readouterr().err
        assert rc == 0, err
        assert pdlab_objects(kube) == []
    run = load_run(run_dir)
    assert run.complete and run.summary["completed"].min() > 0 and run.summary["failed"].sum() == 0


def _wait_for_load(kube, run_dir: Path, proc: subprocess.Popen, timeout: float = 25.0) -> None:
    """Until the decode pod has completed a few requests of the run's load (read from its /metrics)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        port = kube.controller.ports.get(("default", "demo-decode-0", 8000))
        if port and (run_dir / "provenance.json").exists() and \
                "router_url" in json.loads((run_dir / "provenance.json").read_text()):
            try:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2, trust_env=False).text
            except httpx.HTTPError:
                text = ""
            done = [float(v) for v in re.findall(r"^sglang:num_requests_total\{[^}]*\} (\S+)", text, re.M)]
            if done and done[0] >= 3:
                return
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"load did not start within {timeout} s")


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "rc"), [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)],
                         ids=["sigint", "sigterm"])
def test_interrupted_k8s_run_is_saved_incomplete_and_torn_down(sig, rc, tmp_path):
    with fake_kube(emu_time_scale=None) as kube:
        sets = ["backend.kind=k8s", f"backend.k8s.kubeconfig={kube.kubeconfig()}", "backend.k8s.ready_timeout_s=30",
                "emulator.time_scale=0.05", "workload.rates=[4]", "workload.duration_s=60", "workload.warmup=0",
                "workload.dataset.output_len=16"]
        # started with SIGINT ignored, as a shell starts background jobs: a `kill -INT` must still stop it
        proc = subprocess.Popen([sys.executable, "-m", "pdlab", "run", str(PARAMS), "--results", str(tmp_path),
                                 "--name", "cut", *[a for s in sets for a in ("--set", s)]],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
        run_dir = tmp_path / "demo" / "cut"
        try:
            _wait_for_load(kube, run_dir, proc)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=25)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == rc, err
        assert "Traceback" not in err
        assert pdlab_objects(kube) == [] and kube.objects("pods") == []
    run = load_run(run_dir)
    assert not run.complete and not (run_dir / "summary.json").exists()
    assert run.incomplete["reason"] == ("interrupted (Ctrl-C)" if sig == signal.SIGINT else "SystemExit: 143")
    # what was measured before the signal is kept: the server had finished ≥ 3 requests, so the client holds
    # at least 3 records (the last may have been cut mid-stream, recorded as interrupted) and some complete ones
    assert len(run.requests) >= 3 and run.requests["ok"].sum() >= 1
    assert set(run.server_metrics["role"]) >= {"prefill", "decode"}


@pytest.mark.slow
def test_deploy_notebook_on_the_fake_cluster(tmp_path):
    import papermill as pm

    from pdlab.orchestrate.notebook import kernel_name, notebooks_dir

    out = tmp_path / "deploy.ipynb"
    with fake_kube(emu_time_scale=None) as kube:
        pm.execute_notebook(str(notebooks_dir() / "deploy.ipynb"), str(out), kernel_name=kernel_name(),
                            parameters={"params_file": str(PARAMS),
                                        "overrides": ["backend.kind=k8s", f"backend.k8s.kubeconfig={kube.kubeconfig()}",
                                                      "backend.k8s.ready_timeout_s=30", "emulator.time_scale=0.05"]},
                            cwd=str(tmp_path), progress_bar=False, execution_timeout=60)
        assert pdlab_objects(kube) == [] and kube.objects("pods") == []
    text = out.read_text()
    assert "backend k8s" in text and "demo-decode-0" in text  # the pods' table
    assert "torn down" in text and "completion_tokens" in text


@pytest.mark.slow
def test_benchmark_notebook_on_the_fake_cluster(tmp_path):
    import papermill as pm

    from pdlab.orchestrate.notebook import kernel_name, notebooks_dir

    with fake_kube(emu_time_scale=None) as kube:
        pm.execute_notebook(str(notebooks_dir() / "benchmark.ipynb"), str(tmp_path / "benchmark.ipynb"),
                            kernel_name=kernel_name(), cwd=str(tmp_path), progress_bar=False, execution_timeout=60,
                            parameters={"params_file": str(PARAMS), "results": str(tmp_path / "res"),
                                        "run_name": "nb", "progress": False,
                                        "overrides": ["backend.kind=k8s", f"backend.k8s.kubeconfig={kube.kubeconfig()}",
                                                      "backend.k8s.ready_timeout_s=30", *SHORT]})
        assert pdlab_objects(kube) == []
    run = load_run(tmp_path / "res" / "demo" / "nb")
    assert run.complete and run.provenance["cluster"]["emulated"] is True
    assert len(run.summary) == 2
