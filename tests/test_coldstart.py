"""Cold-start timing: stages read off pod objects as the watch delivers them, per-role seconds since apply."""

import json

import pytest

from pdlab.deploy.coldstart import ColdStart, table

ROLE = "pdlab.io/role"


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


@pytest.mark.slow
def test_k8s_run_records_cold_start_per_role_in_provenance(tmp_path):
    from pdlab.analysis.deployments import cold_start_table
    from pdlab.analysis.results import load_sweep
    from tests._k8s_helpers import ROOT, fake_kube, run_cli

    params = ROOT / "params" / "demo-local.yaml"
    with fake_kube(emu_time_scale=None) as kube:
        rc, run_dir = run_cli(kube, tmp_path, "emulator.time_scale=0.05", "workload.rates=[4]",
                              "workload.duration_s=1", "workload.warmup=0", params=params, name="k8s")
    assert rc == 0
    cold = json.loads((run_dir / "provenance.json").read_text())["cold_start"]
    assert set(cold["roles"]) == {"scheduler", "prefill", "decode"}
    for role in cold["roles"].values():
        assert 0 <= role["scheduled_s"] <= role["started_s"] <= role["ready_s"]
    assert cold["router_ready_s"] >= max(r["ready_s"] for r in cold["roles"].values())
    assert {p["name"] for p in cold["pods"]} == {"demo-scheduler-0", "demo-prefill-0", "demo-decode-0"}
    table = cold_start_table(load_sweep(tmp_path))
    assert table["role"].tolist() == ["decode", "prefill", "scheduler", "router answers"]
