"""`pdlab sweep`: run every point of a sweep file through the benchmark notebook (papermill), then the
compare notebook and the HTML report.

Each point executes `notebooks/benchmark.ipynb` into `results/<sweep>/<run>/notebook.ipynb` (a failing
notebook keeps its executed copy with the error cell). The sweep resumes: a point whose run directory holds
`summary.json` for the same params is skipped; a crashed (incomplete) run is re-run; a completed run with
other params is never overwritten without `force`. Failures do not stop the sweep; they are listed at the
end and make the exit code 1. The last line printed (stdout) is the report's path. Ctrl-C or SIGTERM
interrupts the running point's kernel (its run saves what it measured as incomplete and tears down), then
the sweep stops (exit 130); a second signal stops at once, ending leftovers with `cleanup_local`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pdlab.analysis.sweepdata import SWEEP_JSON
from pdlab.core.errors import PdlabError
from pdlab.core.fsutil import dump_json, now_iso, write_atomic
from pdlab.core.schema import INCOMPLETE, LOGS, PARAMS, is_complete, is_run_dir, run_status
from pdlab.experiment.spec import dump_yaml, resolved
from pdlab.experiment.sweepspec import Point, Sweep, load_sweep
from pdlab.measure.progress import PROGRESS_LOG
from pdlab.orchestrate.notebook import COMPARE, NOTEBOOK, execute, kernel_name, notebooks_dir

SWEEP_LOG = "sweep.log"  # the sweep's own messages as printed, beside sweep.json


def arm_slug(arm: str) -> str:
    """An arm label as a Kubernetes-label-safe value ('2P2D (TP1)' → '2P2D-TP1')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", arm).strip("-._")[:63] or "arm"


def point_experiment(point: Point) -> Any:
    """The point's experiment with the labels that tie its results to the sweep (arm, repeat)."""
    exp = point.experiment
    return exp.model_copy(update={"arm": point.arm, "labels": {**exp.labels, "arm": arm_slug(point.arm),
                                                               "repeat": str(point.repeat)}}, deep=True)




@dataclass
class Planned:
    """A point with what the sweep will do about it: run, rerun (crashed), skip (complete), force."""

    point: Point
    run_dir: Path
    action: str
    note: str = ""


def _params_doc(point: Point) -> dict:
    return yaml.safe_load(dump_yaml(resolved(point_experiment(point)))) or {}


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Fields whose values differ; fields only one side has (a newer or older pdlab's defaults) don't count."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) & set(new), key=str):
            out += _diff(old[k], new[k], f"{prefix}{k}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} → {new!r}"]


def plan(sw: Sweep, sweep_dir: Path, force: bool = False) -> list[Planned]:
    """Decide per point: run (new), rerun (crashed), skip (complete, same params), force (complete, re-run).
    Raises PdlabError before anything runs when a completed run has other params and force is off, or a
    run directory holds something that is not a pdlab run."""
    out, conflicts = [], []
    for pt in sw.points:
        d = sweep_dir / pt.run
        if not d.exists() or not any(d.iterdir()):
            out.append(Planned(pt, d, "run"))
            continue
        if not (is_run_dir(d) or (d / NOTEBOOK).exists()):
            conflicts.append(f"{d}: exists and is not a pdlab run directory")
            continue
        if is_complete(d):
            stored = yaml.safe_load((d / PARAMS).read_text()) if is_run_dir(d) else {}
            diff = _diff(stored or {}, _params_doc(pt))
            if force:
                out.append(Planned(pt, d, "force", "complete; --force re-runs it"))
            elif diff:
                conflicts.append(f"{d}: a completed run with other params ({'; '.join(diff[:3])}"
                                 f"{' …' if len(diff) > 3 else ''})")
            else:
                out.append(Planned(pt, d, "skip", "complete"))
        else:
            why = "crashed" if (d / INCOMPLETE).exists() else "no summary.json"
            out.append(Planned(pt, d, "rerun", why))
    if conflicts:
        raise PdlabError("refusing to overwrite results:\n  " + "\n  ".join(conflicts)
                         + "\nre-run with --force to overwrite them, or pick another --results directory")
    return out


def sweep_command(sw: Sweep, overrides: list[str]) -> str:
    """The command line that runs this sweep: this process's own when it is the pdlab CLI, else rebuilt."""
    if sys.argv and Path(sys.argv[0]).name in ("pdlab", "__main__.py") and "sweep" in sys.argv[1:]:
        return " ".join(["pdlab", *sys.argv[1:]])
    return " ".join(["pdlab", "sweep", str(sw.path), *(f"--set {o}" for o in overrides)])


def write_sweep_json(sw: Sweep, sweep_dir: Path, overrides: list[str]) -> Path:
    """sweep.json: the sweep file, overrides, command line and every point (run, arm, repeat, baseline, axes,
    GPUs)."""
    doc = {"sweep": sw.name, "file": str(sw.path.resolve()), "description": sw.doc.description,
           "overrides": list(overrides), "command": sweep_command(sw, overrides), "repeats": sw.doc.repeats,
           "written_at": now_iso(),
           "points": [{"run": p.run, "arm": p.arm, "arm_label": arm_slug(p.arm), "repeat": p.repeat,
                       "baseline": p.baseline, "axes": p.axes, "kind": p.experiment.topology.kind,
                       "gpus": p.gpus} for p in sw.points]}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(sweep_dir / SWEEP_JSON, dump_json(doc))
    return sweep_dir / SWEEP_JSON


def estimate_s(pt: Point) -> float:
    """A first guess of one point's wall time before any has run: its levels' scheduled time, a fifth more
    for queues to drain, and half a minute to deploy and tear down."""
    w = pt.experiment.workload
    per = [w.duration_s or ((w.num_prompts or 0) / v if k == "rate" and v else 60.0) for k, v in w.levels]
    return 1.2 * sum(per) + 30.0


class Say:
    """Sweep messages: printed on the console (rich markup) and appended as plain text to sweep.log."""

    def __init__(self, console: Any, log: Path):
        self.console, self.log = console, log

    def __call__(self, text: str) -> None:
        from rich.text import Text

        self.console.print(text)
        with contextlib.suppress(OSError), self.log.open("a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%H:%M:%S')} {Text.from_markup(text).plain}\n")


@contextlib.contextmanager
def follow(path: Path, say: Any, prefix: str, interval_s: float = 0.5) -> Iterator[None]:
    """While the body runs, print the lines appended to `path` (a run's logs/progress.log), prefixed."""
    done = threading.Event()

    def pump() -> None:
        pos = 0
        while True:
            finished = done.wait(interval_s)
            with contextlib.suppress(OSError):
                if path.exists():
                    with path.open(encoding="utf-8") as f:
                        f.seek(pos)
                        chunk = f.read()
                        pos = f.tell()
                    for line in chunk.splitlines():
                        say(f"{prefix}{line.split(' ', 1)[-1]}")
            if finished:
                return

    th = threading.Thread(target=pump, name="pdlab-follow", daemon=True)
    th.start()
    try:
        yield
    finally:
        done.set()
        th.join(timeout=5)


def _budget_s(pt: Point) -> float:
    """A generous wall-clock bound for one point's notebook cell (deploy + every level + drain)."""
    w, b = pt.experiment.workload, pt.experiment.backend
    ready = b.k8s.ready_timeout_s if b.kind == "k8s" else b.ready_timeout_s
    per_level = (w.duration_s or 600.0) + min(w.timeout_s, 600.0) + 30
    return ready + len(w.levels) * per_level + 300




def _kernel_children() -> list[int]:
    """Our own child processes that are Jupyter kernels (papermill starts each in its own session, so a
    Ctrl-C or SIGTERM to `pdlab sweep` does not reach it by itself)."""
    me, out = os.getpid(), []
    if not Path("/proc").is_dir():
        return out
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == me and b"ipykernel" in (d / "cmdline").read_bytes():
                out.append(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


@dataclass
class _Stop:
    """What the interrupt handler saw: kernels it interrupted, and whether the sweep must stop."""

    kernels: list[int]
    requested: bool = False


@contextlib.contextmanager
def _forward_interrupts() -> Iterator[_Stop]:
    """On SIGINT/SIGTERM while a point runs: interrupt its kernel (the run saves what it measured, marks itself
    incomplete and tears its deployment down; the notebook keeps the error cell) and stop after it. A second
    signal, or one while no kernel runs, raises KeyboardInterrupt at once."""
    stop = _Stop([])
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        kernels = _kernel_children()
        if stop.requested or not kernels:
            raise KeyboardInterrupt
        stop.requested = True
        for pid in kernels:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGINT)
                stop.kernels.append(pid)

    prev = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in prev.items():
            signal.signal(s, h)


def _after_interrupt(kernels: list[int], experiments: set[str], wait_s: float = 20.0) -> None:
    """Give interrupted kernels time to tear down, then end what a killed kernel left behind (local backend,
    only this sweep's experiments, only deployments whose owner is gone)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in kernels):
        time.sleep(0.2)
    from pdlab.deploy.local import cleanup_local

    for name in sorted(experiments):
        with contextlib.suppress(Exception):
            cleanup_local(experiment=name)


def _fmt_s(s: float) -> str:
    s = max(0, int(round(s)))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def run_sweep(sweep_path: str | Path, overrides: list[str] | None = None, results: str | Path = "results",
              force: bool = False, dry_run: bool = False) -> int:
    """Run a sweep (see module docstring); returns the exit code (0 all points complete, 1 any failed).
    Errors in the sweep file raise SpecError before anything is deployed."""
    from rich.console import Console

    err = Console(stderr=True, highlight=False, soft_wrap=True)
    overrides = list(overrides or [])
    sw = load_sweep(sweep_path, overrides)
    sweep_dir = Path(results).resolve() / sw.name
    planned = plan(sw, sweep_dir, force)
    todo = [p for p in planned if p.action != "skip"]
    nb_dir = notebooks_dir()
    custom = {k: (sw.path.parent / v).resolve() for k, v in sw.doc.notebooks.items()}
    bench_nb, compare_nb = custom.get("run", nb_dir / "benchmark.ipynb"), custom.get("compare", nb_dir / COMPARE)

    if dry_run:
        print(f"sweep '{sw.name}' from {sw.path}: {len(planned)} point(s) → {sweep_dir}")
        for p in planned:
            what = {"run": "run", "rerun": f"re-run ({p.note})", "skip": "skip (complete)", "force": "re-run (--force)"}
            levels = ", ".join(f"{v:g}" for _, v in p.point.experiment.workload.levels)
            print(f"  {p.point.run:<26} {p.point.arm:<24} {p.point.gpus:>2} GPUs  levels [{levels}]  "
                  f"{what[p.action]}")
        print(f"{len(todo)} to run, {len(planned) - len(todo)} complete; nothing was run (--dry-run)")
        return 0

    write_sweep_json(sw, sweep_dir, overrides)
    kernel = kernel_name()
    guess = sum(estimate_s(p.point) for p in todo)
    Say(err, sweep_dir / SWEEP_LOG)(
        f"[bold]sweep {sw.name}[/]: {len(planned)} point(s), {len(todo)} to run, "
        f"{len(planned) - len(todo)} already complete → {sweep_dir}" + (f"; estimated ≈ {_fmt_s(guess)}" if todo else ""))
    failures: list[tuple[str, str]] = []
    started = time.monotonic()
    with _forward_interrupts() as stop, _progress(err, len(todo)) as bar:
        try:
            _run_points(planned, todo, sw, sweep_dir, overrides, bench_nb, kernel, bar.console if bar else err,
                        failures, bar, stop)
        except KeyboardInterrupt:
            err.print("[red]interrupted: ending what is still running …[/]")
            _after_interrupt(stop.kernels, {p.point.experiment.name for p in planned})
            raise
    point_failures = list(failures)
    report = finish(sweep_dir, kernel=kernel, compare_nb=compare_nb, err=err, failures=failures)
    err.print(f"sweep {sw.name}: {len(planned) - len(point_failures)}/{len(planned)} point(s) complete in "
              f"{_fmt_s(time.monotonic() - started)}")
    if point_failures:
        err.print(f"[red bold]{len(point_failures)} point(s) failed:[/]")
        for run, e in point_failures:
            err.print(f"  {run}: {e}  (see {sweep_dir / run / NOTEBOOK})")
    for what, e in failures[len(point_failures):]:
        err.print(f"[red]{what} failed:[/] {e}")
    print(report)
    return 1 if failures else 0


@contextlib.contextmanager
def _progress(err: Any, total: int) -> Iterator[Any]:
    """A live rich progress bar (points done, elapsed, ETA) on a terminal; None otherwise (lines only)."""
    if not err.is_terminal or total == 0:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=err, transient=True) as p:
        p.add_task("points", total=total)
        yield p


def _run_points(planned: list[Planned], todo: list[Planned], sw: Sweep, sweep_dir: Path, overrides: list[str],
                bench_nb: Path, kernel: str, err: Any, failures: list[tuple[str, str]], bar: Any = None,
                stop: _Stop | None = None) -> None:
    """Execute the benchmark notebook for every planned point, printing progress and ETA; after an
    interrupt (stop.requested) the running point finishes saving and the sweep raises KeyboardInterrupt."""
    times: list[float] = []
    say = Say(err, sweep_dir / SWEEP_LOG)
    for i, p in enumerate(planned, 1):
        tag = f"[{i}/{len(planned)}] {p.point.run} ({p.point.arm})"
        if p.action == "skip":
            say(f"{tag}: complete, skipped")
            continue
        if p.action == "force" and p.run_dir.exists():
            shutil.rmtree(p.run_dir)
        p.run_dir.mkdir(parents=True, exist_ok=True)
        if bar is not None:
            bar.update(bar.task_ids[0], description=f"{p.point.run} ({p.point.arm})")
        t = time.monotonic()
        params = {"point": _params_doc(p.point), "sweep": sw.name, "run_name": p.point.run,
                  "results": str(sweep_dir.parent), "progress": "log", "command": sweep_command(sw, overrides)}
        say(f"{tag}: running" + (f" (≈ {_fmt_s(estimate_s(p.point))})" if not times else ""))
        with follow(p.run_dir / LOGS / PROGRESS_LOG, say, f"  {p.point.run}: "):
            error = execute(bench_nb, p.run_dir / NOTEBOOK, params, kernel=kernel, cwd=p.run_dir,
                            timeout_s=_budget_s(p.point))
        if error is None and not is_complete(p.run_dir):
            error = "the notebook finished but the run has no summary.json"
        dt = time.monotonic() - t
        times.append(dt)
        left = [q for q in planned[i:] if q.action != "skip"]
        mean_ratio = sum(times) / sum(estimate_s(q.point) for q in todo[:len(times)])
        eta = f", sweep ETA {_fmt_s(mean_ratio * sum(estimate_s(q.point) for q in left))}" if left else ""
        done = sum(1 for q in planned[:i] if q.action != "skip")
        if error:
            failures.append((p.point.run, error))
            say(f"{tag}: [red]FAILED[/] in {_fmt_s(dt)}: {error} — see {p.run_dir / NOTEBOOK} "
                f"({done}/{len(todo)} run{eta})")
        else:
            say(f"{tag}: [green]done[/] in {_fmt_s(dt)} ({done}/{len(todo)} run{eta})")
        if bar is not None:
            bar.advance(bar.task_ids[0])
        if stop is not None and stop.requested:
            err.print(f"[red]interrupted: {p.point.run} was stopped (what it measured is saved, marked incomplete; "
                      f"its deployment torn down); the remaining points were not run[/]")
            raise KeyboardInterrupt


def finish(sweep_dir: Path, *, kernel: str, compare_nb: Path, err: Any,
           failures: list[tuple[str, str]]) -> Path:
    """Execute the compare notebook over the sweep directory and render the report (and index page)."""
    from pdlab.orchestrate.report import render_report

    out = sweep_dir / COMPARE
    complete = [d for d in sweep_dir.iterdir() if is_complete(d)]
    if not complete:
        failures.append(("compare", "no completed run to compare"))
        err.print("[red]no completed run: skipping the compare notebook[/]")
    else:
        err.print("compare notebook …")
        error = execute(compare_nb, out, {"sweep_dir": str(sweep_dir)}, kernel=kernel, cwd=sweep_dir,
                        timeout_s=600)
        if error:
            failures.append(("compare", error))
            err.print(f"[red]compare notebook FAILED: {error}[/] — see {out}")
    try:
        return render_report(sweep_dir)
    except PdlabError as e:
        failures.append(("report", str(e)))
        from pdlab.orchestrate.report import render_index

        return render_index(sweep_dir)


def sweep_status(sweep_dir: Path | str) -> dict[str, str]:
    """run → 'complete' | 'incomplete' | 'missing' for the points in sweep.json."""
    d = Path(sweep_dir)
    meta = json.loads((d / SWEEP_JSON).read_text()) if (d / SWEEP_JSON).exists() else {"points": []}
    out = {}
    for p in meta["points"]:
        rd = d / p["run"]
        out[p["run"]] = run_status(rd)
    return out


__all__ = ["run_sweep", "plan", "sweep_status"]
