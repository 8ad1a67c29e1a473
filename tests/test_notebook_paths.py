"""Notebook parameters resolve against the pdlab checkout, never the kernel's working directory: the notebooks
run under the papermill CLI from the repository root and from notebooks/, and results land in the repo's
results/ (git-ignored wherever a results/ directory appears)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pdlab.orchestrate.notebook import kernel_name, repo_root, resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("cwd", ["root", "notebooks", "elsewhere"])
def test_relative_parameters_resolve_against_the_checkout(cwd: str, tmp_path: Path, monkeypatch):
    monkeypatch.chdir({"root": ROOT, "notebooks": ROOT / "notebooks", "elsewhere": tmp_path}[cwd])
    assert repo_root() == ROOT
    assert resolve("params/demo-local.yaml") == ROOT / "params" / "demo-local.yaml"
    assert resolve("../params/demo-local.yaml") == ROOT / "params" / "demo-local.yaml"  # notebook-relative
    assert resolve("results") == ROOT / "results"
    assert resolve(tmp_path / "x") == tmp_path / "x"


def test_results_directories_are_ignored_anywhere_but_the_readme_is_kept():
    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    assert ignored("results/demo-sweep/report.html")
    assert ignored("notebooks/results/demo/run/summary.json")
    assert not ignored("results/README.md")
    assert not ignored("pdlab/analysis/results.py")


def _papermill(notebook: str, cwd: Path, out: Path, params: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "papermill", notebook, str(out), "-y", params, "-k", kernel_name(),
                           "--no-progress-bar"], cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("cwd", ["root", "notebooks"])
def test_deploy_notebook_runs_from_the_root_and_from_notebooks(cwd: str, tmp_path: Path):
    where, nb = (ROOT, "notebooks/deploy.ipynb") if cwd == "root" else (ROOT / "notebooks", "deploy.ipynb")
    out = tmp_path / "deploy.ipynb"
    r = _papermill(nb, where, out, "overrides: [emulator.time_scale=0.2]")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torn down" in out.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("cwd", ["root", "notebooks"])
def test_benchmark_notebook_runs_from_the_root_and_from_notebooks(cwd: str, tmp_path: Path):
    where, nb = (ROOT, "notebooks/benchmark.ipynb") if cwd == "root" else (ROOT / "notebooks", "benchmark.ipynb")
    out = tmp_path / "benchmark.ipynb"
    params = (f"{{results: '{tmp_path / 'results'}', run_name: nb-{cwd}, overrides: ['workload.rates=[4]', "
              "workload.duration_s=2, workload.warmup=1, emulator.time_scale=0.2]}")
    r = _papermill(nb, where, out, params)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "results" / "demo" / f"nb-{cwd}"
    assert (run / "summary.json").exists() and (run / "logs" / "progress.log").exists()
    text = out.read_text()
    assert "level 1/1: 4 req/s: done" in text  # the plain-text progress line under papermill
    assert not (where / "results" / "demo" / f"nb-{cwd}").exists()
