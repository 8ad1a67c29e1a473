"""Issue 16 end to end: a failed level is said so (exit 3), and a SIGKILLed `pdlab run` leaves nothing running."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pdlab.deploy import local as L
from pdlab.measure.run import EXIT_LEVEL_FAILED

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params" / "demo-local.yaml"
FAST = ["emulator.time_scale=0.05", "workload.dataset.input_len=256", "workload.dataset.output_len=8",
        "workload.warmup=0"]


def _sets(*extra: str) -> list[str]:
    return [a for s in (*FAST, *extra) for a in ("--set", s)]


def _pdlab(*args: str, state: Path, **kw) -> subprocess.Popen:
    env = {**os.environ, L.STATE_ENV: str(state), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pdlab", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _alive(pids: list[int]) -> list[int]:
    return [p for p in pids if L.proc_start_time(p) is not None]


@pytest.mark.slow
def test_a_level_whose_requests_fail_fails_the_run(tmp_path: Path) -> None:
    # a 1 ms request timeout: every request fails, so the level is marked failed and `pdlab run` exits 3
    proc = _pdlab("run", str(PARAMS), "--results", str(tmp_path), "--name", "bad",
                  *_sets("workload.rates=[4]", "workload.duration_s=1", "workload.timeout_s=0.001"),
                  state=tmp_path / "state")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_LEVEL_FAILED, err
    assert "Traceback" not in err and "level(s) failed" in err
    assert "FAILED" in out and "× timeout after 0.001 s" in out
    summary = json.loads((tmp_path / "demo" / "bad" / "summary.json").read_text())
    [level] = summary["levels"]
    assert summary["failed_levels"] == [0] and level["level_failed"] and level["failed_share"] == 1.0
    assert level["top_errors"][0]["count"] == level["failed"] > 0


@pytest.mark.slow
def test_sigkilled_run_leaves_no_worker_or_router(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = _pdlab("run", str(PARAMS), "--results", str(tmp_path), "--name", "killed",
                  *_sets("workload.rates=[2]", "workload.duration_s=60"), state=state)
    run_dir = tmp_path / "demo" / "killed"
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            files = list(state.glob("*.json"))
            prov = run_dir / "provenance.json"
            if files and prov.exists() and "router_url" in prov.read_text():  # deployed, load running
                pids = [p["pid"] for p in json.loads(files[0].read_text())["processes"]]
                break
            time.sleep(0.2)
        assert len(pids) == 3, proc.stderr.read() if proc.poll() is not None else "deployment not up in time"
        time.sleep(1.0)  # mid-level
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _alive(pids) == [], "workers/router outlived the SIGKILLed pdlab run"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()
        for p in _alive(pids):
            os.kill(p, signal.SIGKILL)
