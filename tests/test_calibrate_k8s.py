"""`pdlab calibrate --backend k8s`: the Job and ConfigMap it applies (valid Kubernetes objects, the experiment's
image, GPUs, labels), the log protocol that brings the measurements back, and the apply → wait → read →
always-delete flow; on the fake cluster where it runs Jobs."""

from __future__ import annotations

import io
import json
from importlib import resources

import kubernetes_validate
import pytest

from pdlab.calibrate.k8s_job import BEGIN, END, manifests, parse_log, run_job
from pdlab.core.errors import DeployError
from pdlab.deploy.manifests import EXPERIMENT_LABEL
from pdlab.experiment.loader import load_experiment
from pdlab.experiment.profiles import model

K8S_VERSION = "1.32.0"


@pytest.fixture
def exp(params_dir):
    return load_experiment(params_dir / "seed-2p1d.yaml", ["backend.kind=k8s"])


def test_job_runs_the_shipped_measuring_code_with_the_experiments_image(exp) -> None:
    cm, job = manifests(exp, model("Qwen3-32B"), [1, 2])
    for obj in (cm, job):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        assert obj["metadata"]["labels"][EXPERIMENT_LABEL] == exp.name  # `pdlab cleanup` finds it
        assert obj["metadata"]["namespace"] == exp.namespace
    assert cm["data"]["measure.py"] == resources.files("pdlab.calibrate").joinpath("measure.py").read_text()
    assert json.loads(cm["data"]["shape.json"])["num_key_value_heads"] == 8
    pod = job["spec"]["template"]["spec"]
    ctr = pod["containers"][0]
    assert ctr["image"] == exp.image and pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] == 0
    assert ctr["resources"]["limits"]["nvidia.com/gpu"] == "2"  # TP2 needs two GPUs for the NCCL all-reduce
    script = ctr["command"][-1]
    assert "measure.py" in script and "--tp 1 2" in script and BEGIN in script and END in script
    assert {"name": "NCCL_NVLS_ENABLE", "value": "0"} in ctr["env"]


def test_log_protocol_round_trips_and_names_missing_output() -> None:
    docs = [{"tp": 1, "rows": []}, {"tp": 2, "rows": []}]
    log = f"loading...\n{BEGIN}\n{json.dumps(docs)}\n{END}\n"
    assert parse_log(log) == docs
    with pytest.raises(DeployError, match="(?s)without printing its measurements.*CUDA error"):
        parse_log("Traceback ...\nRuntimeError: CUDA error: no kernel image\n")


class _Resp:
    def __init__(self, text: str):
        self.status = 200
        self._b = io.BytesIO(text.encode())

    def read(self) -> bytes:
        return self._b.read()


class _Cluster:
    """The API calls run_job makes, answered like a cluster whose Job pod goes Pending → Running → `final`."""

    def __init__(self, final: str, log: str):
        self.phases = ["Pending", "Running", final]
        self.log, self.applied, self.deleted = log, [], []

    def apply(self, obj: dict) -> dict:
        self.applied.append(obj["kind"])
        return obj

    def get(self, path: str, query: dict | None = None) -> dict:
        assert path.endswith("/pods") and query is not None
        assert query["labelSelector"].startswith("job-name=") and query["labelSelector"].endswith("-calibrate")
        phase = self.phases.pop(0) if len(self.phases) > 1 else self.phases[0]
        return {"items": [{"metadata": {"name": "job-pod-1"}, "status": {"phase": phase}}]}

    def send(self, method: str, path: str, *a, **kw) -> _Resp:
        assert method == "GET" and path.endswith("/pods/job-pod-1/log")
        return _Resp(self.log)

    def request(self, method: str, path: str, **kw) -> None:
        assert method == "DELETE"
        self.deleted.append(path.rsplit("/", 2)[-2])


def test_run_job_reads_the_measurements_back_and_always_cleans_up(exp) -> None:
    docs = [{"tp": 2, "rows": [{"phase": "decode"}]}]
    ok = _Cluster("Succeeded", f"{BEGIN}\n{json.dumps(docs)}\n{END}\n")
    assert run_job(ok, manifests(exp, model("Qwen3-32B"), [2]), poll_s=0, on_event=lambda m: None) == docs
    assert ok.applied == ["ConfigMap", "Job"] and ok.deleted == ["jobs", "configmaps"]
    failed = _Cluster("Failed", "RuntimeError: CUDA out of memory\n")
    with pytest.raises(DeployError, match="failed; log tail:\nRuntimeError: CUDA out of memory"):
        run_job(failed, manifests(exp, model("Qwen3-32B"), [2]), poll_s=0, on_event=lambda m: None)
    assert failed.deleted == ["jobs", "configmaps"]
    stuck = _Cluster("Pending", "")
    with pytest.raises(DeployError, match="did not finish within 0 s"):
        run_job(stuck, manifests(exp, model("Qwen3-32B"), [2]), timeout_s=0.0, poll_s=0, on_event=lambda m: None)
    assert stuck.deleted == ["jobs", "configmaps"]


@pytest.mark.slow
def test_job_on_the_fake_cluster(exp) -> None:
    """Against the fake's Job controller: the ConfigMap and Job are applied, the Job's GPU pod is created and
    scheduled; the fake cannot run torch, so the pod never finishes: run_job gives up and deletes everything."""
    import time

    from pdlab.deploy.k8s_client import Rest, load_client
    from tests._k8s_helpers import fake_kube

    with fake_kube() as kube:
        api, _, _ = load_client(str(kube.kubeconfig()), None)
        with pytest.raises(DeployError, match="did not finish within 3 s"):
            run_job(Rest(api), manifests(exp, model("Qwen3-32B"), [2]), timeout_s=3.0, poll_s=0.1,
                    on_event=lambda m: None)
        scheduled = [e["involvedObject"]["name"] for e in kube.events() if e.get("reason") == "Scheduled"]
        assert len(scheduled) == 1 and scheduled[0].startswith("sglang-pd-calibrate-0-")  # the Job's GPU pod
        deadline = time.monotonic() + 20
        while (kube.objects("pods") or kube.objects("jobs.batch")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert kube.objects("jobs.batch") == [] and kube.objects("configmaps") == [] and kube.objects("pods") == []
