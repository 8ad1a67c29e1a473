"""Progress of a run per load level, with an ETA: a live rich bar on a terminal, plain lines otherwise, and
always lines in `<run>/logs/progress.log` (which `pdlab sweep` follows to report each point's levels).

`run_experiment` drives a Reporter: `note` for events (deploying, saving), then per level `level_start`,
`tick` (live counters, a few times a second) and `level_end`. The ETA is the time the remaining levels are
scheduled for plus the mean drain (time past its schedule) of the levels done so far.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, TextIO

PROGRESS_LOG = "progress.log"


def fmt_s(s: float) -> str:
    """Seconds as '45s' or '3m05s'."""
    s = max(0, int(round(s)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class LineReporter:
    """Plain progress lines to `stream` (None: nowhere) and appended to `log` (set by run_experiment)."""

    wants_summary = False  # whether level_end needs the level's summary row (costs a read of the records)

    def __init__(self, stream: TextIO | None = None, log: Path | None = None):
        self.stream, self.log = stream, log

    def emit(self, text: str) -> None:
        """One line to the stream and the log file."""
        if self.stream is not None:
            print(text, file=self.stream, flush=True)
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            with self.log.open("a", encoding="utf-8") as f:
                f.write(f"{time.strftime('%H:%M:%S')} {text}\n")

    def __enter__(self) -> LineReporter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def note(self, text: str) -> None:
        """An event of the run (deploying, stopping)."""
        self.emit(text)

    def level_start(self, label: str, expected: int, eta_s: float | None) -> None:
        """A level begins: its label, how many requests it will send, the run's ETA."""
        self.emit(f"{label}: {expected} requests scheduled" + (f"; run ETA {fmt_s(eta_s)}" if eta_s else ""))

    def tick(self, stats: Any) -> None:
        """Live counters of the running level (sent, done, failed, in flight)."""

    def level_end(self, label: str, stats: Any, elapsed_s: float, eta_s: float | None,
                  summary: dict | None = None) -> None:
        """A level ended: how long it took, what was answered, the ETA of what is left."""
        self.emit(f"{label}: done in {fmt_s(elapsed_s)}, {stats.done}/{stats.sent} answered, {stats.failed} failed"
                  + (f"; run ETA {fmt_s(eta_s)}" if eta_s else ""))


class RichReporter(LineReporter):
    """A live rich bar per level on a terminal (events printed above it); lines still go to the log."""

    def __init__(self, log: Path | None = None):
        super().__init__(stream=None, log=log)
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn("in-flight {task.fields[inflight]:>4}  failed {task.fields[failed]:>4}"),
                          TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), refresh_per_second=4)
        self.task: Any = None

    def __enter__(self) -> RichReporter:
        self.p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.p.stop()

    def note(self, text: str) -> None:
        super().note(text)
        self.p.console.print(text, highlight=False, markup=False)

    def level_start(self, label: str, expected: int, eta_s: float | None) -> None:
        super().level_start(label, expected, eta_s)
        self.task = self.p.add_task(label, total=expected or None, inflight=0, failed=0,
                                    eta=f"run ETA {fmt_s(eta_s)}" if eta_s else "")

    def tick(self, stats: Any) -> None:
        if self.task is not None:
            self.p.update(self.task, completed=stats.done, total=max(stats.expected, stats.sent) or None,
                          inflight=stats.inflight, failed=stats.failed)

    def level_end(self, label: str, stats: Any, elapsed_s: float, eta_s: float | None,
                  summary: dict | None = None) -> None:
        super().level_end(label, stats, elapsed_s, eta_s, summary)
        if self.task is not None:
            self.p.update(self.task, completed=stats.done, total=stats.done, eta="")


def reporter_for(progress: bool | str | LineReporter) -> LineReporter:
    """The reporter a `progress` argument asks for: a Reporter as is; True/'auto' a rich bar on a terminal,
    else plain lines on stderr; False/'log' only the log file."""
    if isinstance(progress, LineReporter):
        return progress
    if progress in (False, "log", "off"):
        return LineReporter()
    if sys.stderr.isatty():
        return RichReporter()
    return LineReporter(stream=sys.stderr)


class Eta:
    """The run's ETA from the levels' scheduled durations and the mean drain of the levels done."""

    def __init__(self, scheduled_s: list[float | None]):
        self.scheduled = scheduled_s
        self.done: list[tuple[float | None, float]] = []

    def finished(self, scheduled_s: float | None, elapsed_s: float) -> None:
        """Record a finished level."""
        self.done.append((scheduled_s, elapsed_s))

    def remaining(self, start: int) -> float | None:
        """Seconds left for levels start… (None when nothing is known yet about an unbounded level)."""
        left = self.scheduled[start:]
        if not left:
            return 0.0
        drains = [e - s for s, e in self.done if s is not None]
        drain = sum(drains) / len(drains) if drains else 0.0
        if all(s is not None for s in left):
            return sum(left) + drain * len(left)  # type: ignore[arg-type]
        if self.done:
            return sum(e for _, e in self.done) / len(self.done) * len(left)
        return None
