"""Live progress of a run inside a notebook: one status line updated in place while a level runs and a
latency-vs-load figure redrawn after each level (between levels, so drawing never delays the load
generator's dispatch). Uses IPython display handles only (no ipywidgets): JupyterLab updates them live;
under papermill the executed notebook keeps their last state, and every level also prints a plain line.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from pdlab.measure.progress import LineReporter, fmt_s


class NotebookReporter(LineReporter):
    """LineReporter (plain lines to stdout and logs/progress.log) plus live display handles."""

    wants_summary = True

    def __init__(self, log: Any = None, min_interval_s: float = 1.0):
        from IPython.display import HTML, display

        super().__init__(stream=sys.stdout, log=log)
        self._html = HTML
        self._status = display(HTML("<i>starting …</i>"), display_id=True)
        self._figure = None
        self._rows: list[dict] = []
        self._label = ""
        self._last = 0.0
        self._min = min_interval_s

    def level_start(self, label: str, expected: int, eta_s: float | None) -> None:
        super().level_start(label, expected, eta_s)
        self._label = f"{label} · {expected} requests scheduled" + (f" · run ETA {fmt_s(eta_s)}" if eta_s else "")
        self._status.update(self._html(f"<b>{self._label}</b>"))

    def tick(self, stats: Any) -> None:
        now = time.monotonic()
        if now - self._last < self._min:
            return
        self._last = now
        total = max(stats.expected, stats.sent) or 1
        pct = min(100, int(100 * stats.done / total))
        bar = f"<progress value='{pct}' max='100' style='width:240px'></progress>"
        self._status.update(self._html(f"<b>{self._label}</b><br>{bar} {stats.done}/{total} answered · "
                                       f"{stats.inflight} in flight · {stats.failed} failed"))

    def level_end(self, label: str, stats: Any, elapsed_s: float, eta_s: float | None,
                  summary: dict | None = None) -> None:
        super().level_end(label, stats, elapsed_s, eta_s, summary)
        left = f" · run ETA {fmt_s(eta_s)}" if eta_s else ""
        self._status.update(self._html(f"<b>{label}</b>: done in {fmt_s(elapsed_s)}, {stats.done}/{stats.sent} "
                                       f"answered, {stats.failed} failed{left}"))
        if summary:
            self._rows.append(summary)
            self._draw()

    def _draw(self) -> None:
        import pandas as pd

        from pdlab.analysis import plots

        df = pd.DataFrame(self._rows).assign(arm="this run")
        df["rate"] = df["target_rate"] if "target_rate" in df else df["level_value"]
        fig = plots.ttft_vs_rate(df)
        if self._figure is None:
            from IPython.display import display

            self._figure = display(fig, display_id=True)
        else:
            self._figure.update(fig)


def reporter(progress: bool | str) -> Any:
    """The benchmark notebook's reporter: 'auto' (or True) live in the notebook, 'log' (what `pdlab sweep`
    passes) or False only the run's progress.log."""
    return NotebookReporter() if progress in (True, "auto") else LineReporter()
