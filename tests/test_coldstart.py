"""Cold-start timing: stages read off pod objects as the watch delivers them, per-role seconds since apply."""

from pdlab.deploy.coldstart import ColdStart, table

ROLE = "rolebasedgroup.workloads.x-k8s.io/role"


def _pod(name: str, role: str, *, node: str | None = None, scheduled: bool = False, running: bool = False,
         ready: bool = False) -> dict:
    conds = [{"type": "PodScheduled", "status": "True" if scheduled else "False"},
             {"type": "Ready", "status": "True" if ready else "False"}]
    state = {"running": {"startedAt": "x"}} if running else {"waiting": {"reason": "ContainerCreating"}}
    return {"metadata": {"name": name, "labels": {ROLE: role}}, "spec": {"nodeName": node} if node else {},
            "status": {"conditions": conds, "containerStatuses": [{"state": state}]}}


def test_stages_per_pod_and_slowest_pod_per_role(monkeypatch):
    import pdlab.deploy.coldstart as cs

    c = ColdStart()
    c.applied(at=100.0)
    steps = [(100.5, _pod("g-prefill-0", "prefill")),
             (101.0, _pod("g-prefill-0", "prefill", node="n1", scheduled=True)),
             (101.0, _pod("g-prefill-1", "prefill", node="n2", scheduled=True)),
             (103.0, _pod("g-prefill-0", "prefill", node="n1", scheduled=True, running=True)),
             (104.0, _pod("g-prefill-1", "prefill", node="n2", scheduled=True, running=True)),
             (160.0, _pod("g-prefill-0", "prefill", node="n1", scheduled=True, running=True, ready=True)),
             (190.0, _pod("g-prefill-1", "prefill", node="n2", scheduled=True, running=True, ready=True)),
             (195.0, _pod("g-prefill-1", "prefill", node="n2", scheduled=True, running=True, ready=True))]
    for t, pod in steps:  # the watch delivers each pod object at time t
        monkeypatch.setattr(cs.time, "time", lambda t=t: t)
        c.observe(pod)
    c.router_ready(at=192.5)
    d = c.as_dict()
    p0 = next(p for p in d["pods"] if p["name"] == "g-prefill-0")
    assert (p0["created_s"], p0["scheduled_s"], p0["started_s"], p0["ready_s"]) == (0.5, 1.0, 3.0, 60.0)
    assert p0["node"] == "n1"
    role = d["roles"]["prefill"]
    assert role == {"pods": 2, "created_s": 1.0, "scheduled_s": 1.0, "started_s": 4.0, "ready_s": 90.0}
    assert d["router_ready_s"] == 92.5
    rows = table(d)
    assert [r["role"] for r in rows] == ["prefill", "router answers"] and rows[0]["ready"] == 90.0


def test_deleted_pods_are_ignored():
    c = ColdStart()
    pod = _pod("g-decode-0", "decode", ready=True, scheduled=True, running=True)
    pod["metadata"]["deletionTimestamp"] = "now"
    c.observe(pod)
    assert c.as_dict()["pods"] == []
