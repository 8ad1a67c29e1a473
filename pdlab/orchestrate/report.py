"""HTML reports: the executed compare notebook → one self-contained `results/<sweep>/report.html` (images
embedded as data URIs, code hidden unless `with_code`, no external scripts, so it opens offline), each run's
notebook → `<run>/report.html`, and `results/<sweep>/index.html` linking them all. Also the small display
helpers the notebooks use (warning boxes, headings)."""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
from pathlib import Path

from pdlab.core.errors import PdlabError
from pdlab.core.schema import SUMMARY, is_complete, is_run_dir, run_status
from pdlab.orchestrate.notebook import NOTEBOOK

REPORT = "report.html"
HIDE_TAG = "hide-in-report"  # cells tagged so (a notebook's how-to-use intro) are left out of reports
INDEX = "index.html"
_EXTERNAL_SCRIPT = re.compile(r"<script\b[^>]*\bsrc=[\"']https?://[^>]*>\s*</script>", re.I)
_MERMAID = re.compile(r"<script type=\"module\">(?:(?!</script>).)*?cdnjs\.cloudflare\.com(?:(?!</script>).)*</script>",
                      re.I | re.S)
_MATHJAX_CFG = re.compile(r"<!-- MathJax configuration -->\s*<script type=\"text/x-mathjax-config\">.*?</script>",
                          re.S)
_CSS = """
<style>
  body { max-width: 1280px; margin: 0 auto; }
  .pdlab-warn { border-left: 4px solid #d9822b; background: #fff6ec; padding: 6px 12px; margin: 6px 0; }
  .pdlab-ok { border-left: 4px solid #2e7d32; background: #eef7ee; padding: 6px 12px; margin: 6px 0; }
  .pdlab-badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 85%;
                 background: #6a1b9a; color: white; vertical-align: middle; }
  .jp-OutputArea-output table { font-size: 12px; }
</style>
"""


def _offline(text: str) -> str:
    """Strip the template's CDN scripts (MathJax, require.js, mermaid): the report uses none of them and
    must open without a network."""
    text = _MATHJAX_CFG.sub("", text)
    text = _MERMAID.sub("", text)
    return _EXTERNAL_SCRIPT.sub("", text)


def notebook_html(notebook: Path | str, *, with_code: bool = False, title: str | None = None) -> str:
    """An executed notebook as one self-contained HTML page (code cells hidden unless with_code)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    exp = HTMLExporter(template_name="lab")
    exp.exclude_input = not with_code
    exp.exclude_input_prompt = True
    exp.exclude_output_prompt = True
    exp.embed_images = True
    nb.cells = [c for c in nb.cells if HIDE_TAG not in c.metadata.get("tags", [])]
    if not with_code:  # papermill's injected-parameters cell and the parameters cell carry no output
        nb.cells = [c for c in nb.cells if not (c.cell_type == "code" and not c.get("outputs"))]
    body, _ = exp.from_notebook_node(nb, resources={"metadata": {"name": title or Path(notebook).stem}})
    body = body.replace("</head>", _CSS + "</head>", 1)
    return _offline(body)


def render_run_report(run_dir: Path | str, *, with_code: bool = False) -> Path | None:
    """<run>/report.html from <run>/notebook.ipynb (if there is one); skipped when already up to date."""
    run_dir = Path(run_dir)
    nb, out = run_dir / "notebook.ipynb", run_dir / REPORT
    if not nb.exists():
        return None
    if out.exists() and out.stat().st_mtime >= nb.stat().st_mtime and not with_code:
        return out
    out.write_text(notebook_html(nb, with_code=with_code, title=f"pdlab run {run_dir.name}"), encoding="utf-8")
    return out


def render_report(sweep_dir: Path, with_code: bool = False) -> Path:
    """Render `<sweep_dir>/report.html` from the executed compare notebook, each run's report, and the
    index page; returns the report's path."""
    sweep_dir = Path(sweep_dir).resolve()
    nb = sweep_dir / "compare.ipynb"
    if not sweep_dir.is_dir():
        raise PdlabError(f"{sweep_dir}: no such sweep directory")
    if not nb.exists():
        execute_compare(sweep_dir)
    for d in sorted(p for p in sweep_dir.iterdir() if p.is_dir()):
        render_run_report(d)
    out = sweep_dir / REPORT
    out.write_text(notebook_html(nb, with_code=with_code, title=f"pdlab sweep {sweep_dir.name}"), encoding="utf-8")
    render_index(sweep_dir)
    return out


def execute_compare(sweep_dir: Path) -> Path:
    """Execute the compare notebook over a results directory into `<sweep_dir>/compare.ipynb`."""
    from pdlab.analysis.results import find_runs
    from pdlab.orchestrate.notebook import COMPARE, execute, kernel_name, notebooks_dir

    if not any(is_complete(r) for r in find_runs(sweep_dir)):
        raise PdlabError(f"{sweep_dir} holds no completed run (summary.json); run `pdlab sweep SWEEP.yaml` or "
                         "`pdlab run PARAMS --results DIR` first")
    out = sweep_dir / COMPARE
    error = execute(notebooks_dir() / COMPARE, out, {"sweep_dir": str(sweep_dir)}, kernel=kernel_name(),
                    cwd=sweep_dir, timeout_s=600)
    if error and not out.exists():
        raise PdlabError(f"the compare notebook failed: {error}")
    return out


def _gpu_profile(run_dir: Path) -> str:
    """The GPU profile a run names in its summary.json (datasheet defaults, or calibrated where and how)."""
    try:
        doc = json.loads((run_dir / SUMMARY).read_text())
    except (OSError, ValueError):
        return ""
    return str((doc.get("gpu_profile") or {}).get("describe") or doc.get("gpu_type") or "")


def render_index(sweep_dir: Path | str) -> Path:
    """`<sweep_dir>/index.html`: links to the report and, per run, its status, notebook and report."""
    from pdlab.analysis.sweepdata import read_sweep_json

    d = Path(sweep_dir).resolve()
    meta = read_sweep_json(d)
    points = meta.get("points") or [{"run": p.name, "arm": "", "repeat": 0}
                                    for p in sorted(d.iterdir()) if is_run_dir(p)]
    rows = []
    for p in points:
        rd = d / p["run"]
        status = run_status(rd)
        status = "incomplete" if status == "missing" and (rd / NOTEBOOK).exists() else status
        status = {"missing": "not run"}.get(status, status)
        colour = {"complete": "#2e7d32", "incomplete": "#c62828"}.get(status, "#777")
        links = " · ".join(f'<a href="{html.escape(p["run"])}/{f}">{f}</a>'
                           for f in (REPORT, NOTEBOOK, SUMMARY) if (rd / f).exists())
        rows.append(f"<tr><td>{html.escape(p['run'])}</td><td>{html.escape(str(p.get('arm', '')))}</td>"
                    f"<td>{int(p.get('repeat', 0)) + 1}</td><td style='color:{colour}'>{status}</td>"
                    f"<td>{html.escape(_gpu_profile(rd))}</td><td>{links}</td></tr>")
    report = (f'<p><a href="{REPORT}"><b>Comparison report</b></a> · <a href="compare.ipynb">compare.ipynb</a></p>'
              if (d / REPORT).exists() else "<p>No comparison report yet.</p>")
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pdlab sweep {html.escape(d.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;width:100%}}td,th{{border-bottom:1px solid #ddd;padding:4px 8px;text-align:left}}
th{{background:#f4f4f4}}</style></head>
<body><h1>pdlab sweep <code>{html.escape(d.name)}</code></h1>
<p>{html.escape(meta.get('description') or '')}</p>
<p>Sweep file: <code>{html.escape(str(meta.get('file', '?')))}</code>
{(' with <code>--set ' + html.escape(' '.join(meta.get('overrides') or [])) + '</code>') if meta.get('overrides') else ''}</p>
{report}
<table><tr><th>run</th><th>arm</th><th>repeat</th><th>status</th><th>GPU profile</th><th>files</th></tr>
{''.join(rows)}
</table><p style="color:#777;font-size:80%">rendered {when} by pdlab</p></body></html>
"""
    out = d / INDEX
    out.write_text(page, encoding="utf-8")
    return out










