"""The HTML report: self-contained (images as data URIs, no external scripts), code hidden unless asked,
and an index page linking every run."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from pdlab.core.errors import PdlabError
from pdlab.orchestrate.report import render_index, render_report

PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e221bc330000000049454e44ae426082")).decode()


def _executed(path: Path) -> None:
    nb = new_notebook()
    nb.cells = [new_markdown_cell("how to use: HOWTO_MARKER", metadata={"tags": ["hide-in-report"]}),
                new_markdown_cell("# Sweep report"),
                new_code_cell("sweep_dir = 'x'", metadata={"tags": ["parameters"]}),
                new_code_cell("plots.secret_code_marker()", outputs=[
                    new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})])]
    nbformat.write(nb, str(path))


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    d = tmp_path / "s"
    for run, done in (("a", True), ("b", False)):
        (d / run).mkdir(parents=True)
        (d / run / "params.yaml").write_text("name: x\n")
        if done:
            (d / run / "summary.json").write_text("{}")
            _executed(d / run / "notebook.ipynb")
    (d / "sweep.json").write_text(json.dumps({"sweep": "s", "file": "/x/s.yaml", "points": [
        {"run": "a", "arm": "2P2D (TP1)", "repeat": 0}, {"run": "b", "arm": "colocated 4×TP1", "repeat": 0},
        {"run": "c", "arm": "colocated 4×TP1", "repeat": 1}]}))
    _executed(d / "compare.ipynb")
    return d


def test_report_is_self_contained_and_hides_code(sweep_dir: Path):
    out = render_report(sweep_dir)
    html = out.read_text()
    assert out == sweep_dir / "report.html"
    assert f"data:image/png;base64,{PNG}" in html
    assert "secret_code_marker" not in html and "sweep_dir = " not in html and "HOWTO_MARKER" not in html
    assert "Sweep report" in html
    assert 'src="http' not in html and "cdnjs" not in html and "MathJax.js" not in html
    assert (sweep_dir / "a" / "report.html").exists() and not (sweep_dir / "b" / "report.html").exists()


def test_report_with_code(sweep_dir: Path):
    html = render_report(sweep_dir, with_code=True).read_text()
    assert "secret_code_marker" in html


def test_index_links_report_and_runs(sweep_dir: Path):
    render_report(sweep_dir)
    index = render_index(sweep_dir).read_text()
    assert 'href="report.html"' in index and 'href="a/report.html"' in index and 'href="a/notebook.ipynb"' in index
    assert "colocated 4×TP1" in index and "incomplete" not in index.split("<td>b</td>")[0]
    assert "not run" in index.split("<td>c</td>")[1]  # never started
    assert "incomplete" in index.split("<td>b</td>")[1].split("<td>c</td>")[0]  # started (params.yaml), no summary


def test_report_without_runs_is_a_clear_error(tmp_path: Path):
    with pytest.raises(PdlabError, match="no completed run"):
        render_report(tmp_path)
