"""The notebooks execute under papermill against the local backend with tiny parameters: a sweep end to end
through `run_sweep` (a failing point is listed and keeps its executed notebook; resume skips completed runs;
the report embeds its images and hides code), the refusal to overwrite, and the deploy notebook."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from pdlab.core.errors import PdlabError, SpecError
from pdlab.experiment.sweepspec import load_sweep
from pdlab.orchestrate.sweep import plan, run_sweep

ROOT = Path(__file__).resolve().parents[1]
TINY = f"""
sweep: tiny
base: {ROOT / "params" / "demo-local.yaml"}
set:
  workload.rates: [4]
  workload.duration_s: 2
  workload.warmup: 1
  emulator.time_scale: 0.2
grid:
  topology.ratio: [1P1D]
baselines:
  colocated-2x:
    topology: {{kind: colocated, worker: {{replicas: 2, tp: 1}}}}
  broken:                      # never gets ready in time: the failing point
    topology: {{kind: colocated, worker: {{replicas: 2, tp: 1}}}}
    backend: {{ready_timeout_s: 0.01}}
"""


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    (tmp_path / "sweeps").mkdir()
    p = tmp_path / "sweeps" / "tiny.yaml"
    p.write_text(TINY)
    return p


def test_dry_run_lists_points_and_runs_nothing(tiny: Path, tmp_path: Path, capsys):
    assert run_sweep(tiny, results=tmp_path / "res", dry_run=True) == 0
    out = capsys.readouterr().out
    assert "1p1d" in out and "colocated-2x" in out and "broken" in out
    assert out.strip().splitlines()[-1].startswith("3 to run, 0 complete")
    assert not (tmp_path / "res").exists()


def test_bad_sweep_fails_before_anything_runs(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    p.write_text(TINY.replace("topology.ratio: [1P1D]", "topology.ratoi: [1P1D]"))
    with pytest.raises(SpecError, match="ratoi"):
        run_sweep(p, results=tmp_path / "res")
    assert not (tmp_path / "res").exists()


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str, str]:
    """The tiny sweep run once from an unrelated cwd with relative paths: (sweep dir, rc, stdout, stderr)."""
    import contextlib
    import io
    import os

    root = tmp_path_factory.mktemp("swept")
    (root / "sweeps").mkdir()
    (root / "sweeps" / "tiny.yaml").write_text(TINY)
    out, err, cwd = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(root / "sweeps")  # papermill must get absolute paths
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = run_sweep("tiny.yaml", results="../res")
    finally:
        os.chdir(cwd)
    return root / "res" / "tiny", rc, out.getvalue(), err.getvalue()


@pytest.mark.slow
def test_sweep_lists_failure_keeps_its_notebook_and_reports(swept):
    sweep_dir, rc, out, err = swept
    report = sweep_dir / "report.html"
    assert out.strip().splitlines()[-1] == str(report)
    assert rc == 1, err
    assert "1 point(s) failed" in err and "broken:" in err
    # the failing point keeps its executed notebook with the error
    failed_nb = nbformat.read(str(sweep_dir / "broken" / "notebook.ipynb"), as_version=4)
    errors = [o for c in failed_nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "DeployError"
    assert not (sweep_dir / "broken" / "summary.json").exists()
    for run in ("1p1d", "colocated-2x"):
        assert (sweep_dir / run / "summary.json").exists()
        assert (sweep_dir / run / "notebook.ipynb").exists() and (sweep_dir / run / "report.html").exists()
    # the report: self-contained, images embedded, code hidden, the missing point called out
    html = report.read_text()
    assert html.count("data:image/png;base64,") >= 7
    assert "from pdlab import" not in html and 'src="http' not in html
    assert "emulated" in html and "broken" in html and "Conclusion" in html
    index = (sweep_dir / "index.html").read_text()
    assert 'href="report.html"' in index and 'href="1p1d/notebook.ipynb"' in index
    points = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    assert [p["run"] for p in points] == ["1p1d", "colocated-2x", "broken"]


@pytest.mark.slow
def test_sweep_resumes_and_never_overwrites(swept, capsys):
    sweep_dir, *_ = swept
    sweep_file = sweep_dir.parent.parent / "sweeps" / "tiny.yaml"
    stamp = (sweep_dir / "1p1d" / "summary.json").stat().st_mtime_ns
    # other params on top of completed runs: refused before anything runs, unless --force
    with pytest.raises(PdlabError, match="refusing to overwrite"):
        run_sweep(sweep_file, overrides=["workload.duration_s=1"], results=sweep_dir.parent)
    sw = load_sweep(sweep_file, ["workload.duration_s=1"])
    assert {p.action for p in plan(sw, sweep_dir, force=True)} == {"force", "rerun"}
    # resume: completed points are skipped, the crashed one is re-run
    rc = run_sweep(sweep_file, results=sweep_dir.parent)
    err = capsys.readouterr().err
    assert rc == 1
    assert "1p1d (1P1D (TP1)): complete, skipped" in err
    assert "broken (broken (colocated 2×TP1)): FAILED" in err
    assert (sweep_dir / "1p1d" / "summary.json").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_deploy_notebook_runs(tmp_path: Path):
    import papermill as pm

    from pdlab.orchestrate.notebook import kernel_name, notebooks_dir

    out = tmp_path / "deploy.ipynb"
    pm.execute_notebook(str(notebooks_dir() / "deploy.ipynb"), str(out), kernel_name=kernel_name(),
                        parameters={"params_file": str(ROOT / "params" / "demo-local.yaml"),
                                    "overrides": ["emulator.time_scale=0.2"]},
                        cwd=str(tmp_path), progress_bar=False, execution_timeout=120)
    text = out.read_text()
    assert "torn down" in text and "completion_tokens" in text


@pytest.mark.slow
def test_interrupted_sweep_leaves_nothing_running_and_resumes(tmp_path: Path):
    """SIGTERM in the middle of a point: exit 130, the point's records kept and marked incomplete, no
    emulator or router left behind; the next `pdlab sweep` re-runs that point and completes the sweep."""
    import os
    import signal
    import subprocess
    import sys
    import time

    sweep_file = tmp_path / "one.yaml"
    sweep_file.write_text(f"""
sweep: one
base: {ROOT / "params" / "demo-local.yaml"}
set:
  workload.rates: [4]
  workload.duration_s: 30
  workload.warmup: 0
  emulator.time_scale: 0.2
grid:
  topology.ratio: [1P1D]
""")
    res = tmp_path / "res"
    env = {**os.environ, "PDLAB_STATE_DIR": str(tmp_path / "state")}
    cmd = [sys.executable, "-m", "pdlab", "sweep", str(sweep_file), "--results", str(res)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    run_dir = res / "one" / "1p1d"
    try:
        deadline = time.monotonic() + 90
        state = tmp_path / "state"
        while time.monotonic() < deadline:  # wait until the point's processes are up and load is flowing
            if list(state.glob("*.json")) and (run_dir / "params.yaml").exists():
                break
            time.sleep(0.3)
        else:
            raise AssertionError("the sweep's first point never started")
        time.sleep(4)
        pids = [p["pid"] for f in state.glob("*.json") for p in json.loads(f.read_text())["processes"]]
        assert pids
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 130, err
    assert not (run_dir / "summary.json").exists() and (run_dir / "incomplete.json").exists()
    time.sleep(0.5)
    alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()
             and "Z" not in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]]
    assert alive == [], f"processes left behind: {alive}"
    # resume: the crashed point is re-run (shorter now) and the sweep completes with its report
    rc = subprocess.run(cmd + ["--set", "workload.duration_s=2"], env=env, capture_output=True, text=True,
                        timeout=240)
    assert rc.returncode == 0, rc.stderr[-2000:]
    assert (run_dir / "summary.json").exists() and not (run_dir / "incomplete.json").exists()
    assert rc.stdout.strip().splitlines()[-1].endswith("report.html")
