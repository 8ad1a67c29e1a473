"""`pdlab calibrate --backend k8s`: run the measuring code as a Job on a GPU node of the experiment's cluster.

The Job uses the experiment's SGLang image (it carries torch and CUDA) and needs nothing else from it: a
ConfigMap carries `measure.py` (standalone, torch only) and the model's shape; the container prints the raw
measurements between two marker lines, and pdlab reads them back from the pod's log through the Kubernetes
API. The Job and the ConfigMap carry pdlab's labels (so `pdlab cleanup` finds them) and are always deleted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from pdlab.core.errors import DeployError
from pdlab.deploy.k8s_client import ApiStatusError, Rest, load_client
from pdlab.deploy.manifests import labels
from pdlab.experiment.profiles import ModelProfile

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment

BEGIN, END = "===PDLAB-CALIBRATION-BEGIN===", "===PDLAB-CALIBRATION-END==="
MOUNT = "/pdlab-calibrate"


def job_name(exp: Experiment) -> str:
    """The Job's (and ConfigMap's) name: the experiment's with a -calibrate suffix, within 63 characters."""
    return f"{exp.name[:50]}-calibrate"


def container_script(model: str, tps: list[int], quick: bool) -> str:
    """The shell line the container runs: measure, then print the raw JSON between the markers."""
    sizes = " --prefill 256 1024 4096 --batch 1 8 64 --context 1024 4096 --reps 5" if quick else ""
    tp = " ".join(str(t) for t in tps)
    return (f"python3 {MOUNT}/measure.py --shape {MOUNT}/shape.json --model '{model}' --tp {tp}{sizes} "
            f"--out /tmp/raw.json && echo '{BEGIN}' && cat /tmp/raw.json && echo && echo '{END}'")


def manifests(exp: Experiment, shape: ModelProfile, tps: list[int], *, quick: bool = False,
              run_id: str | None = None) -> list[dict]:
    """The ConfigMap (measuring code + model shape) and the Job (one pod, max(tps) GPUs, no retries)."""
    from pdlab.calibrate.measure import SHAPE_KEYS

    name, ns, lab = job_name(exp), exp.namespace, labels(exp, run_id or f"{exp.name}-calibrate")
    code = resources.files("pdlab.calibrate").joinpath("measure.py").read_text()
    shape_doc = json.dumps({k: getattr(shape, k) for k in SHAPE_KEYS})
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, "labels": lab},
          "data": {"measure.py": code, "shape.json": shape_doc}}
    gpus = str(max(tps))
    container = {"name": "calibrate", "image": exp.image, "command": ["bash", "-c",
                                                                       container_script(shape.name, tps, quick)],
                 "env": [{"name": "NCCL_NVLS_ENABLE", "value": "0"}, {"name": "PYTHONUNBUFFERED", "value": "1"}],
                 "resources": {"limits": {"nvidia.com/gpu": gpus}, "requests": {"nvidia.com/gpu": gpus}},
                 "volumeMounts": [{"name": "code", "mountPath": MOUNT, "readOnly": True},
                                  {"name": "shm", "mountPath": "/dev/shm"}]}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": ns, "labels": lab},
           "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 3600, "activeDeadlineSeconds": 3600,
                    "template": {"metadata": {"labels": {**lab, "job-name": name}},
                                 "spec": {"restartPolicy": "Never", "containers": [container],
                                          "volumes": [{"name": "code", "configMap": {"name": name}},
                                                      {"name": "shm", "emptyDir": {"medium": "Memory"}}]}}}}
    return [cm, job]


def _path(obj_or_kind: dict | str, ns: str, name: str | None = None) -> str:
    kind = obj_or_kind["kind"] if isinstance(obj_or_kind, dict) else obj_or_kind
    base = {"ConfigMap": f"/api/v1/namespaces/{ns}/configmaps", "Job": f"/apis/batch/v1/namespaces/{ns}/jobs",
            "Pod": f"/api/v1/namespaces/{ns}/pods"}[kind]
    return base + (f"/{name}" if name else "")


def parse_log(text: str) -> list[dict]:
    """The raw measurement documents printed between the markers of the container's log."""
    if BEGIN not in text or END not in text:
        raise DeployError("the calibration Job finished without printing its measurements; log tail:\n"
                          + "\n".join(text.splitlines()[-20:]))
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    try:
        docs = json.loads(body)
    except json.JSONDecodeError as e:
        raise DeployError(f"the calibration Job's measurements are not valid JSON ({e})") from None
    return docs if isinstance(docs, list) else [docs]


def run_job(rest: Rest, objs: list[dict], *, timeout_s: float = 3600.0, poll_s: float = 2.0,
            on_event: Callable[[str], None] = print) -> list[dict]:
    """Apply the objects, wait for the Job's pod to finish, read its log, always delete both objects."""
    cm, job = objs
    ns, name = job["metadata"]["namespace"], job["metadata"]["name"]
    try:
        for obj in objs:
            rest.apply(obj)
        on_event(f"calibration Job {ns}/{name} created (image {job['spec']['template']['spec']['containers'][0]['image']})")
        deadline = time.monotonic() + timeout_s
        pod: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            pods = rest.get(_path("Pod", ns), query={"labelSelector": f"job-name={name}"}) or {}
            pod = (pods.get("items") or [None])[0]
            phase = (pod or {}).get("status", {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                break
            time.sleep(poll_s)
        else:
            raise DeployError(f"calibration Job {ns}/{name} did not finish within {timeout_s:.0f} s")
        assert pod is not None
        pod_name = pod["metadata"]["name"]
        resp = rest.send("GET", _path("Pod", ns, pod_name) + "/log", None, None, "application/json", stream=False)
        log = (resp.read() or b"").decode(errors="replace")
        if pod["status"]["phase"] == "Failed":
            raise DeployError(f"calibration pod {ns}/{pod_name} failed; log tail:\n"
                              + "\n".join(log.splitlines()[-20:]))
        return parse_log(log)
    finally:
        for obj in (job, cm):
            try:
                rest.request("DELETE", _path(obj, ns, obj["metadata"]["name"]),
                             body={"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"})
            except (ApiStatusError, DeployError):
                pass


def measure_k8s(exp: Experiment, shape: ModelProfile, tps: list[int], *, quick: bool = False) -> list[dict]:
    """Raw measurements taken by a Job on the experiment's cluster (kubeconfig/context from backend.k8s)."""
    k = exp.backend.k8s
    api, _, _ = load_client(k.kubeconfig, k.context)
    return run_job(Rest(api), manifests(exp, shape, tps, quick=quick))
