"""In-cluster load generation (`backend.k8s.load: job`): an Indexed Job of `load_pods` pods, each running
`python -m pdlab.measure.loadpod` next to the router (reached by its Service's DNS name), and their records
and logs read back through the Kubernetes API (pod logs), never kubectl or a shared volume.

`render_job(exp, spec, run_id)` is the Job (image `backend.k8s.load_image:load_image_tag`, completions =
parallelism = pods, no retries, the spec in an env var, pdlab's labels). `LoadJob(rest, exp, run_id)` applies
it, watches its pods (an image that cannot be pulled, or a pod that stays unschedulable, fails fast with the
reason; so does the deadline), reads every pod's log when the pods are done — also when one failed or was
evicted, so its partial records are kept — and deletes the Job and its pods (`close()`, always).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pdlab.core.errors import DeployError
from pdlab.deploy import manifests as M
from pdlab.deploy.k8s_client import Rest, call_quietly, path_for

if TYPE_CHECKING:
    from pdlab.experiment.spec import Experiment

ENV_SPEC = "PDLAB_LOAD_SPEC"  # read by pdlab.measure.loadpod
JOB_LABEL = "pdlab.io/load-job"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
PULL_FAILURES = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName"}
POLL_S = 0.5


def job_name(exp: Experiment) -> str:
    """The load Job's name: `<experiment>-load`."""
    return f"{exp.name}-load"


def in_cluster_router_url(exp: Experiment) -> str:
    """The router as the load pods reach it: its Service's cluster DNS name."""
    return f"http://{exp.name}.{exp.namespace}.svc.cluster.local:{M.HTTP_PORT}"


def image(exp: Experiment) -> str:
    """The pdlab image the load pods run (`load_image:load_image_tag`)."""
    from pdlab import __version__

    k = exp.backend.k8s
    return f"{k.load_image}:{k.load_image_tag or __version__}"


def render_job(exp: Experiment, spec: dict[str, Any], run_id: str | None = None) -> dict:
    """The Indexed Job running `pods` load processes, each told its index by Kubernetes."""
    pods = int(spec["pods"])
    lab = {**M.labels(exp, run_id), JOB_LABEL: job_name(exp)}
    container = {"name": "load", "image": image(exp), "imagePullPolicy": "IfNotPresent",
                 "command": ["python", "-m", "pdlab.measure.loadpod"],
                 "env": [{"name": ENV_SPEC, "value": json.dumps(spec, separators=(",", ":"))},
                         {"name": "PYTHONUNBUFFERED", "value": "1"}],
                 "resources": {"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "4Gi"}}}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name(exp), "namespace": exp.namespace, "labels": lab},
            "spec": {"completionMode": "Indexed", "completions": pods, "parallelism": pods, "backoffLimit": 0,
                     "template": {"metadata": {"labels": lab},
                                  "spec": {"restartPolicy": "Never", "containers": [container],
                                           "terminationGracePeriodSeconds": 30}}}}


@dataclass
class PodResult:
    """One load pod at the end: its index, final phase, why it ended badly (if so), and its log."""

    name: str
    index: int
    phase: str
    reason: str = ""
    log: str = ""


@dataclass
class LoadJob:
    """A load Job in the cluster: apply, wait for its pods, collect their logs, delete."""

    rest: Rest
    exp: Experiment
    run_id: str | None = None
    on_event: Callable[[str], None] = field(default=lambda _m: None)
    fail_fast_s: float = 60.0
    applied: bool = False

    @property
    def namespace(self) -> str:
        return self.exp.namespace

    def start(self, spec: dict[str, Any]) -> None:
        """Apply the Job (replacing a leftover one of the same name)."""
        self.delete(wait=True)
        self.rest.apply(render_job(self.exp, spec, self.run_id))
        self.applied = True
        self.on_event(f"applied Job {self.namespace}/{job_name(self.exp)} ({spec['pods']} load pod(s), {image(self.exp)})")

    def pods(self) -> list[dict]:
        """The Job's pods (by pdlab's load-job label)."""
        return self.rest.get(path_for("v1", "Pod", self.namespace),
                             query={"labelSelector": f"{JOB_LABEL}={job_name(self.exp)}"}).get("items", [])

    def wait(self, pods: int, deadline_s: float) -> list[PodResult]:
        """Wait until every load pod has ended (or the deadline); raise DeployError (after collecting what the
        pods wrote) when pods cannot start. Returns each pod's result with its log."""
        deadline = time.monotonic() + deadline_s
        bad_since: dict[str, float] = {}
        while True:
            items = self.pods()
            for p in items:
                problem = _start_problem(p)
                if problem is None:
                    bad_since.pop(p["metadata"]["name"], None)
                elif time.monotonic() - bad_since.setdefault(p["metadata"]["name"], time.monotonic()) >= self.fail_fast_s:
                    raise DeployError(f"load pod {p['metadata']['name']} cannot start: {problem}. "
                                      f"{_fix(problem, self.exp)}")
            ended = [p for p in items if _phase(p) in ("Succeeded", "Failed")]
            if len(items) >= pods and len(ended) == len(items):
                return [self.result(p) for p in items]
            if time.monotonic() > deadline:
                results = [self.result(p) for p in items]
                running = [r.name for r in results if r.phase not in ("Succeeded", "Failed")]
                raise LoadJobTimeout(f"the load Job did not finish within {deadline_s:.0f} s (still running: "
                                     f"{', '.join(running) or 'none'}; {len(items)}/{pods} pods created)", results)
            time.sleep(POLL_S)

    def result(self, pod: dict) -> PodResult:
        """A pod's phase, failure reason and full log."""
        name = pod["metadata"]["name"]
        index = int((pod["metadata"].get("annotations") or {}).get(INDEX_ANNOTATION)
                    or (pod["metadata"].get("labels") or {}).get(INDEX_ANNOTATION, 0))
        log = call_quietly(lambda: self.log(name)) or ""
        return PodResult(name, index, _phase(pod), _end_reason(pod), log)

    def log(self, name: str) -> str:
        """A pod's whole log through the API."""
        resp = self.rest.send("GET", f"/api/v1/namespaces/{self.namespace}/pods/{name}/log", None, None,
                              "application/json", stream=False)
        data = resp.read() or b""
        if resp.status != 200:
            raise DeployError(f"logs of {name}: HTTP {resp.status}")
        return data.decode(errors="replace")

    def delete(self, wait: bool = False, timeout_s: float = 60.0) -> None:
        """Delete the Job and its pods (foreground: pods first); with wait, until they are gone."""
        call_quietly(lambda: self.rest.delete(path_for("batch/v1", "Job", self.namespace, job_name(self.exp)),
                                              propagation="Foreground"))
        if not wait:
            return
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if not call_quietly(self.pods) and call_quietly(lambda: self.rest.get_or_none(
                    path_for("batch/v1", "Job", self.namespace, job_name(self.exp)))) is None:
                return
            time.sleep(POLL_S)

    def close(self) -> None:
        """Delete the Job and wait for its pods to go (nothing of the load is left in the cluster)."""
        if self.applied:
            self.delete(wait=True)
            self.applied = False


class LoadJobTimeout(DeployError):
    """The load Job outlived its deadline; `results` holds what the pods had written so far."""

    def __init__(self, msg: str, results: list[PodResult]):
        super().__init__(msg)
        self.results = results


def _phase(pod: dict) -> str:
    return (pod.get("status") or {}).get("phase", "Pending")


def _start_problem(pod: dict) -> str | None:
    st = pod.get("status") or {}
    for c in st.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            return f"unschedulable: {c.get('message', '')}"
    for cs in st.get("containerStatuses") or []:
        w = (cs.get("state") or {}).get("waiting") or {}
        if w.get("reason") in PULL_FAILURES:
            return f"{w['reason']}: {w.get('message', '')}".rstrip(": ")
    return None


def _end_reason(pod: dict) -> str:
    st = pod.get("status") or {}
    if st.get("reason"):  # Evicted, DeadlineExceeded, ...
        return f"{st['reason']}: {st.get('message', '')}".rstrip(": ")
    for cs in st.get("containerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated") or {}
        if term and term.get("exitCode"):
            return f"exit code {term['exitCode']} ({term.get('reason', 'Error')})"
    return ""


def _fix(problem: str, exp: Experiment) -> str:
    if any(r in problem for r in PULL_FAILURES):
        return (f"Fix: push the pdlab image to a registry the nodes can pull from (see the Dockerfile), then set "
                f"backend.k8s.load_image / load_image_tag (now {image(exp)}), and imagePullSecrets if it is private")
    return "Fix: free CPU/memory for the load pods (each requests 1 CPU, 1 GiB) or lower backend.k8s.load_pods"


__all__ = ["LoadJob", "LoadJobTimeout", "PodResult", "in_cluster_router_url", "job_name", "render_job"]
