"""Sweep points that differ only in workload share one deployment (a params switch turns it off); the
report says which points shared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdlab.experiment.sweepspec import load_sweep
from pdlab.orchestrate import reuse
from pdlab.orchestrate.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
SWEEP = f"""
sweep: reuse
base: {ROOT / "params" / "demo-local.yaml"}
set:
  workload.rates: [4]
  workload.duration_s: 1.5
  workload.warmup: 1
  emulator.time_scale: 0.2
grid:
  workload.dataset.input_len: [128, 512]
"""


BASELINE = """baselines:
  colocated-2x:
    topology: {kind: colocated, worker: {replicas: 2, tp: 1}}
"""


def _sweep(tmp_path: Path, *overrides: str, extra: str = ""):
    p = tmp_path / "reuse.yaml"
    p.write_text(SWEEP + extra)
    return p, load_sweep(p, list(overrides))


def test_points_differing_only_in_workload_form_a_group(tmp_path):
    _, sw = _sweep(tmp_path, extra=BASELINE)
    groups = reuse.groups(sw.points)
    by_kind = {k: [p.run for p in sw.points if p.experiment.topology.kind == k] for k in ("pd", "colocated")}
    assert sorted(groups.values()) == sorted(by_kind.values())  # per topology, never across
    assert all(len(runs) == 2 for runs in groups.values())
    _, reps = _sweep(tmp_path, extra="repeats: 2\n")
    assert sorted(map(len, reuse.groups(reps.points).values())) == [2, 2]  # a repeat redeploys
    _, off = _sweep(tmp_path, "backend.reuse_deployment=false")
    assert reuse.groups(off.points) == {}


def test_order_runs_a_group_back_to_back():
    shared = {"g": ["a", "c"]}
    assert reuse.order(["a", "b", "c", "d"], str, shared) == ["a", "c", "b", "d"]
    assert reuse.order(["b", "a", "d", "c"], str, shared) == ["b", "a", "c", "d"]


@pytest.mark.slow
def test_sweep_deploys_once_for_a_group_and_the_report_says_so(tmp_path, capsys):
    from pdlab.deploy.local import cleanup_local

    p, sw = _sweep(tmp_path)
    (group, runs), = reuse.groups(sw.points).items()
    rc = run_sweep(p, results=tmp_path / "res")
    err = capsys.readouterr().err
    assert rc == 0, err
    sweep_dir = tmp_path / "res" / "reuse"
    assert err.count("deploying once for 2 points") == 1
    provs = [json.loads((sweep_dir / r / "provenance.json").read_text()) for r in runs]
    for prov in provs:
        assert prov["backend"]["deployment"] == "shared"
        assert prov["shared_deployment"]["group"] == group and prov["shared_deployment"]["runs"] == runs
    pids = [{row["name"]: row["pid"] for row in prov["deployment"]} for prov in provs]
    assert pids[0] == pids[1]  # the very same processes served both points
    points = {q["run"]: q for q in json.loads((sweep_dir / "sweep.json").read_text())["points"]}
    assert [points[r]["deployment"] for r in runs] == [group, group]
    html = (sweep_dir / "report.html").read_text()
    assert group in html and ", ".join(runs) in html
    assert cleanup_local(experiment=sw.points[0].experiment.name) == []  # torn down after the group
