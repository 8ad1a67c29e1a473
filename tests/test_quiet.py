"""No alarming noise in a successful run: RBAC YAML without anchors, no 'Invalid HTTP request' warnings from
the router's gRPC probe in worker logs, progress totals that add up to what the schedule sends."""

from __future__ import annotations

import logging

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
