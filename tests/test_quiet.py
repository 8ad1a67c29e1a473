"""No alarming noise in a successful run: RBAC YAML without anchors, no 'Invalid HTTP request' warnings from
the router's gRPC probe in worker logs, progress totals that add up to what the schedule sends."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pdlab.cli import main
from pdlab.emulator.server import _RouterProbeFilter
from pdlab.measure.load.arrivals import send_times
from pdlab.measure.load.runner import LevelPlan


def test_rbac_renders_without_yaml_anchors(capsys):
    assert main(["manifests", "--rbac", "--namespace", "llm"]) == 0
    out = capsys.readouterr().out
    assert "&id" not in out and "*id" not in out
    role = next(d for d in yaml.safe_load_all(out) if d["kind"] == "Role")
    assert all(r["verbs"] for r in role["rules"])


def test_router_probe_warning_is_dropped_and_other_warnings_kept():
    f = _RouterProbeFilter()

    def rec(msg: str) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, msg, None, None)

    assert not f.filter(rec("Invalid HTTP request received."))
    assert f.filter(rec("Application startup failed"))


def test_progress_total_is_the_schedule_not_rate_times_duration():
    plan = LevelPlan(index=1, kind="rate", value=4.0, duration_s=10.0, seed=0)
    sent = sum(1 for _ in send_times("poisson", 4.0, seed=[0, 1], duration_s=10.0))
    assert plan.scheduled_requests() == sent
    assert plan.expected_requests() == 40  # the estimate, which a seeded Poisson schedule rarely hits


@pytest.mark.slow
def test_a_successful_sweep_prints_no_kernel_errors(tmp_path):
    """jupyter_client interrupts every kernel it shuts down; a successful `pdlab sweep` must not print the
    resulting 'KeyboardInterrupt caught in kernel' (nor any other kernel log line), and shows level progress."""
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "tiny.yaml").write_text(
        f"sweep: tiny\nbase: {root / 'params' / 'demo-local.yaml'}\n"
        "set: {workload.rates: [4, 6], workload.duration_s: 3, workload.warmup: 1, emulator.time_scale: 0.2}\n")
    r = subprocess.run([sys.executable, "-m", "pdlab", "sweep", str(tmp_path / "tiny.yaml"), "--results",
                        str(tmp_path / "results")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "KeyboardInterrupt" not in r.stderr and "IPKernelApp" not in r.stderr, r.stderr
    assert "level 2/2: 6 req/s: done" in r.stderr
    assert (tmp_path / "results" / "tiny" / "sweep.log").read_text().count("level 2/2") == 2
