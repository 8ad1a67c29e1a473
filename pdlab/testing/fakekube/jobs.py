"""The fake cluster's Job controller (batch/v1, what pdlab's in-cluster load uses).

`reconcile_jobs(cluster)` creates one pod per completion index of an Indexed Job (never re-creating a pod
that ended: pdlab's load Jobs have backoffLimit 0), labelled and annotated with the index, with
`JOB_COMPLETION_INDEX` in the environment and the Job as controller owner (so deleting the Job deletes its
pods), and keeps the Job's status (active / succeeded / failed, Complete / Failed conditions).
`SVC_URL` matches the `http://<svc>.<ns>.svc.cluster.local:<port>` URLs in a load pod's spec, which the kubelet
points at the local port of the pod behind the Service.
"""

from __future__ import annotations

import copy
import hashlib
import re
from typing import Any

from pdlab.testing.fakekube.store import ApiError, now

JOBS = "jobs.batch"
INDEX_KEY = "batch.kubernetes.io/job-completion-index"
SVC_URL = re.compile(r"http://(?P<host>[a-z0-9-]+\.[a-z0-9-]+\.svc(?:\.cluster\.local)?):(?P<port>\d+)")


def _suffix(*parts: str) -> str:
    return hashlib.sha1("/".join(parts).encode(), usedforsecurity=False).hexdigest()[:5]


def reconcile_jobs(c: Any) -> None:
    """Create the pods of every live Job and write each Job's status."""
    for job in c.store.list(JOBS):
        meta = job["metadata"]
        if meta.get("deletionTimestamp"):
            continue
        ns, uid = meta["namespace"], meta["uid"]
        spec = job.get("spec") or {}
        completions = int(spec.get("completions", 1))
        pods = [p for p in c.store.list("pods", ns)
                if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences", []))]
        have = {int((p["metadata"].get("annotations") or {}).get(INDEX_KEY, -1)) for p in pods}
        for i in range(min(completions, int(spec.get("parallelism", completions)))):
            if i not in have:
                _create_pod(c, job, i)
        _status(c, job, pods, completions)


def _create_pod(c: Any, job: dict, index: int) -> None:
    meta = job["metadata"]
    template = copy.deepcopy(job["spec"]["template"])
    spec = template.get("spec") or {}
    for ctr in spec.get("containers", []):
        ctr["env"] = [*ctr.get("env", []), {"name": "JOB_COMPLETION_INDEX", "value": str(index)}]
    spec.setdefault("restartPolicy", "Never")
    spec.setdefault("serviceAccountName", "default")
    name = f"{meta['name']}-{index}-{_suffix(meta['uid'], str(index))}"
    labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": meta["name"],
              "batch.kubernetes.io/job-name": meta["name"], "controller-uid": meta["uid"], INDEX_KEY: str(index)}
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                        "annotations": {INDEX_KEY: str(index)},
                        "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                             "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
           "spec": spec, "status": {"phase": "Pending", "qosClass": "Burstable"}}
    try:
        c.create(c.res("", "v1", "pods"), meta["namespace"], pod, field_manager="kube-controller-manager")
    except ApiError as e:
        if e.code != 409:
            raise


def _status(c: Any, job: dict, pods: list[dict], completions: int) -> None:
    phases = [(p.get("status") or {}).get("phase", "Pending") for p in pods]
    ok, failed = phases.count("Succeeded"), phases.count("Failed")
    status: dict[str, Any] = {"active": len(phases) - ok - failed, "succeeded": ok, "failed": failed,
                              "startTime": (job.get("status") or {}).get("startTime") or now()}
    done = None
    if failed:
        done = {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit"}
    elif ok >= completions:
        done = {"type": "Complete", "status": "True"}
        status["completionTime"] = (job.get("status") or {}).get("completionTime") or now()
    if done:
        old = next((x for x in (job.get("status") or {}).get("conditions", []) if x["type"] == done["type"]), None)
        done["lastTransitionTime"] = old["lastTransitionTime"] if old else now()
        status["conditions"] = [done]
    if job.get("status") != status:
        job = copy.deepcopy(job)
        job["status"] = status
        c.store.put(JOBS, job["metadata"]["namespace"], job)


__all__ = ["JOBS", "SVC_URL", "reconcile_jobs"]
