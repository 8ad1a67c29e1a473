"""Drive one load level: an open-loop dispatcher that keeps the arrival schedule, or a closed loop.

The dispatcher sleeps until each scheduled send time, takes an in-flight slot (`max_inflight`; if none is
free the request waits in the dispatcher, not as a task, and its dispatch lag shows it), and starts the
request as its own task. Records go to a `RecordSink`, which spills them to parquet part files every
`spill_every` records (in a writer thread) so a 100,000-request run keeps the client's memory bounded and a
crash keeps what was measured. `run_level_sync` runs a level on a uvloop event loop (or in a helper thread
when called from a running loop, as in Jupyter).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pdlab.core.errors import PdlabError
from pdlab.core.schema import REQUEST_SCHEMA
from pdlab.measure.load.arrivals import send_times
from pdlab.measure.load.client import LoadClient, RequestRecord
from pdlab.measure.load.datasets import Dataset

SHED_LAG_S = 0.05  # dispatcher this late → cap in-flight at SHED_FACTOR × the on-schedule peak
SHED_FACTOR = 2
SHED_MIN_INFLIGHT = 64  # floor of that cap: below it a saturated client idles between completions
DISPATCH_GRACE_S = 1.0  # a scheduled request not sent by the level's end + max(this, share × span) is not sent
DISPATCH_GRACE_SHARE = 0.05
DRAIN_CANCELLED = "not finished within the drain after the level's duration"
_REC_FIELDS = [f.name for f in fields(RequestRecord)]


@dataclass
class LevelPlan:
    """One load level: ('rate', r) open loop or ('concurrency', c) closed loop, and its bounds."""

    index: int
    kind: str
    value: float
    arrival: str = "poisson"
    burstiness: float = 1.0
    duration_s: float | None = 60.0
    num_prompts: int | None = None
    warmup: int = 0
    max_inflight: int = 2048
    seed: int = 0
    first_prompt: int = 0
    drain_s: float = 600.0

    def span_s(self) -> float | None:
        """How long the level's schedule lasts (s): its duration, or num_prompts at the rate (open loop)."""
        if self.duration_s:
            return self.duration_s
        if self.kind == "rate" and self.num_prompts:
            return (self.num_prompts + self.warmup) / self.value
        return None

    def dispatch_deadline_s(self) -> float | None:
        """Offset after which no scheduled request is sent any more (None: unbounded closed loop by count)."""
        span = self.span_s()
        return None if span is None else span + max(DISPATCH_GRACE_S, DISPATCH_GRACE_SHARE * span)

    def expected_requests(self) -> int:
        """Requests this level will send (an estimate for duration-bounded open loops)."""
        n = self.num_prompts + self.warmup if self.num_prompts else None
        if self.kind == "rate" and self.duration_s:
            est = math.ceil(self.value * self.duration_s)
            n = min(n, est) if n else est
        return n or 0

    def scheduled_requests(self) -> int:
        """Requests the level sends: exact for open loops (the seeded schedule's length), else the estimate."""
        if self.kind != "rate":
            return self.expected_requests()
        count = self.num_prompts + self.warmup if self.num_prompts else None
        return sum(1 for _ in send_times(self.arrival, self.value, burstiness=self.burstiness,
                                         seed=[self.seed, self.index], duration_s=self.duration_s, count=count))


@dataclass
class LevelStats:
    """Live counters of a level (what the progress display shows)."""

    sent: int = 0
    done: int = 0
    failed: int = 0
    inflight: int = 0
    expected: int = 0
    started: float = 0.0
    finished: float = 0.0
    not_sent: int = 0  # scheduled, but the client could not send them before the dispatch deadline
    drain_cancelled: int = 0  # in flight when the drain ran out, cancelled (recorded as failed)


class RecordSink:
    """Collects records; spills to `<dir>/part-NNNNN.parquet` every `spill_every` (None: keep in memory)."""

    def __init__(self, spill_dir: Path | None = None, spill_every: int = 5000):
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self.spill_every = spill_every
        self._buf: list[RequestRecord] = []
        self._level: tuple[str, float] = ("rate", math.nan)
        self._levels: dict[int, tuple[str, float]] = {}
        self._parts: list[Path] = []
        self._tables: list[pa.Table] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pdlab-spill")
        self._pending: list[concurrent.futures.Future] = []
        self.count = 0

    def set_level(self, index: int, kind: str, value: float) -> None:
        self._levels[index] = (kind, float(value))

    def add(self, rec: RequestRecord) -> None:
        self._buf.append(rec)
        self.count += 1
        if self.spill_dir is not None and len(self._buf) >= self.spill_every:
            self._spill()

    def _spill(self) -> None:
        buf, self._buf = self._buf, []
        if not buf:
            return
        assert self.spill_dir is not None
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"part-{len(self._parts):05d}.parquet"
        self._parts.append(path)
        self._pending.append(self._pool.submit(self._write_part, buf, path))

    def _write_part(self, buf: list[RequestRecord], path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        pq.write_table(self.to_table(buf), tmp)
        tmp.replace(path)

    def to_table(self, recs: list[RequestRecord]) -> pa.Table:
        cols: dict[str, list[Any]] = {name: [getattr(r, name) for r in recs] for name in _REC_FIELDS}
        lv = [self._levels.get(lvl, ("rate", math.nan)) for lvl in cols["level"]]
        cols["level_kind"] = [k for k, _ in lv]
        cols["level_value"] = [v for _, v in lv]
        return pa.table({f.name: pa.array(cols[f.name], type=f.type) for f in REQUEST_SCHEMA}, schema=REQUEST_SCHEMA)

    def flush(self) -> None:
        """Spill what is buffered (if spilling) and wait for pending writes."""
        if self.spill_dir is not None:
            self._spill()
        for f in self._pending:
            f.result()
        self._pending = []

    def write(self, path: Path) -> int:
        """Write every record so far to one parquet file (streaming part by part); returns the row count."""
        self.flush()
        tmp = Path(path).with_suffix(".parquet.tmp")
        n = 0
        with pq.ParquetWriter(tmp, REQUEST_SCHEMA) as w:
            for p in self._parts:
                if p.exists():
                    t = pq.read_table(p, schema=REQUEST_SCHEMA)
                    w.write_table(t)
                    n += t.num_rows
            if self._buf:
                t = self.to_table(self._buf)
                w.write_table(t)
                n += t.num_rows
        tmp.replace(path)
        return n

    def close(self, remove_parts: bool = True) -> None:
        self.flush()
        self._pool.shutdown(wait=True)
        if remove_parts:
            for p in self._parts:
                p.unlink(missing_ok=True)
            if self.spill_dir is not None and self.spill_dir.exists() and not any(self.spill_dir.iterdir()):
                self.spill_dir.rmdir()

    def table(self) -> pa.Table:
        """All records as one arrow table (reads spilled parts back)."""
        self.flush()
        tables = [pq.read_table(p, schema=REQUEST_SCHEMA) for p in self._parts if p.exists()]
        if self._buf:
            tables.append(self.to_table(self._buf))
        return pa.concat_tables(tables) if tables else REQUEST_SCHEMA.empty_table()


async def run_level(client: LoadClient, dataset: Dataset, plan: LevelPlan, sink: RecordSink, *,
                    stats: LevelStats | None = None, stop: threading.Event | None = None,
                    start_delay_s: float = 0.05) -> LevelStats:
    """Run one level to completion on the running loop; records go to `sink`. Returns the counters."""
    if plan.kind == "rate" and not plan.value > 0:
        raise PdlabError(f"request rate must be > 0 (got {plan.value})")
    if plan.kind == "concurrency" and plan.value < 1:
        raise PdlabError(f"concurrency must be ≥ 1 (got {plan.value})")
    if plan.duration_s is None and plan.num_prompts is None:
        raise PdlabError("bound each level by 'duration_s' or 'num_prompts'")
    stats = stats or LevelStats()
    stats.expected = plan.scheduled_requests()
    sink.set_level(plan.index, plan.kind, plan.value)
    t0 = client.t0
    perf = time.perf_counter
    tasks: set[asyncio.Task] = set()
    freed: asyncio.Event | None = None
    count = plan.num_prompts + plan.warmup if plan.num_prompts else None

    def on_record(rec: RequestRecord) -> None:
        stats.done += 1
        stats.failed += not rec.ok
        sink.add(rec)

    sessions = getattr(dataset, "multi_turn", False)

    async def one(k: int, t_sched: float, slot: asyncio.Semaphore | None) -> None:
        stats.sent += 1
        stats.inflight += 1
        try:
            if not sessions:
                rec = await client.send(dataset[plan.first_prompt + k], req_id=plan.first_prompt + k,
                                        level=plan.index, warmup=k < plan.warmup, t_sched=t_sched - t0)
                on_record(rec)
            else:  # a chat session: its turns in order, each after the previous reply and a think time
                s = plan.first_prompt + k
                for j, prompt in enumerate(dataset.turns(s)):  # type: ignore[attr-defined]
                    if j:
                        await asyncio.sleep(dataset.think_time(s, j))  # type: ignore[attr-defined]
                        stats.sent += 1
                    rec = await client.send(prompt, req_id=prompt.index, level=plan.index, warmup=k < plan.warmup,
                                            t_sched=(t_sched if j == 0 else perf()) - t0)
                    on_record(rec)
                    if not rec.ok or (stop is not None and stop.is_set()):
                        break
        except asyncio.CancelledError:
            raise
        finally:
            stats.inflight -= 1
            if slot is not None:
                slot.release()
            if freed is not None:
                freed.set()

    start = perf() + start_delay_s
    stats.started = start - t0
    bound = plan.dispatch_deadline_s()
    deadline = start + bound if bound is not None else math.inf
    try:
        if plan.kind == "rate":
            slot = asyncio.Semaphore(plan.max_inflight)
            freed = asyncio.Event()
            healthy = 0  # most requests in flight while the dispatcher was on schedule
            times = level_offsets(dataset, plan, count)
            for k, off in enumerate(times):
                if stop is not None and stop.is_set():
                    break
                target = start + off
                delay = target - perf()
                if delay > 0.0002:
                    await asyncio.sleep(delay)
                elif -delay > SHED_LAG_S:
                    # behind schedule: the client is the bottleneck. Hold in-flight near what it sustained on
                    # schedule instead of piling up requests (which makes every request slower: collapse).
                    cap = max(SHED_MIN_INFLIGHT, SHED_FACTOR * healthy)
                    while stats.inflight >= cap and perf() < deadline:
                        freed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(freed.wait(), deadline - perf())
                if -delay < 0.005:
                    healthy = max(healthy, stats.inflight)
                if perf() >= deadline or not await _acquire(slot, deadline - perf()):
                    stats.not_sent = 1 + sum(1 for _ in times)  # this one and every later one: not sent
                    break
                t = asyncio.get_running_loop().create_task(one(k, target, slot))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        else:
            conc = int(plan.value)
            deadline = start + plan.duration_s if plan.duration_s else math.inf
            counter = iter(range(count) if count else iter(int, 1))

            async def worker() -> None:
                for k in counter:
                    now = perf()
                    if now >= deadline or (stop is not None and stop.is_set()):
                        return
                    await one(k, now, None)

            await asyncio.sleep(max(0.0, start - perf()))
            ws = [asyncio.get_running_loop().create_task(worker()) for _ in range(min(conc, plan.max_inflight))]
            tasks.update(ws)
        if tasks:
            span = plan.span_s()  # None: a closed loop bounded by count only, which ends by itself
            drain_end = None if span is None else max(perf(), start + span) + plan.drain_s
            stats.drain_cancelled = await _drain(tasks, None if drain_end is None else drain_end - perf())
            for rec in client.cancelled:
                rec.error = f"{DRAIN_CANCELLED} ({plan.drain_s:g} s)"
                on_record(rec)
            client.cancelled.clear()
    except BaseException:
        for t in list(tasks):
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        for rec in client.cancelled:
            on_record(rec)
        client.cancelled.clear()
        raise
    finally:
        stats.finished = perf() - t0
    return stats


def level_offsets(dataset: Dataset, plan: LevelPlan, count: int | None) -> Iterator[float]:
    """Send offsets of an open-loop level: the arrival process, or a trace's own times scaled to the level's rate."""
    offsets = getattr(dataset, "offsets", None)
    if offsets is None:
        yield from send_times(plan.arrival, plan.value, burstiness=plan.burstiness, seed=[plan.seed, plan.index],
                              duration_s=plan.duration_s, count=count)
        return
    for k, off in enumerate(offsets(plan.value)):
        if (count is not None and k >= count) or (plan.duration_s is not None and off >= plan.duration_s):
            return
        yield off


async def _acquire(slot: asyncio.Semaphore, timeout: float) -> bool:
    """Take an in-flight slot within `timeout` seconds (False if none freed up in time)."""
    if not slot.locked():
        await slot.acquire()  # returns without yielding while a slot is free
        return True
    try:
        await asyncio.wait_for(slot.acquire(), max(0.0, timeout))
    except TimeoutError:
        return False
    return True


async def _drain(tasks: set[asyncio.Task], timeout: float | None) -> int:
    """Wait for the level's requests up to `timeout` s, cancel the rest; returns how many were cancelled.

    An exception of a finished task is re-raised, as `asyncio.gather` would."""
    done, pending = await asyncio.wait(set(tasks), timeout=None if timeout is None else max(0.0, timeout))
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5.0)
    for t in done:
        if not t.cancelled() and t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    return len(pending)


def run_level_sync(base_url: str, dataset: Dataset, plan: LevelPlan, sink: RecordSink, *, t0: float,
                   api: str = "chat", model: str = "default", timeout_s: float = 600.0,
                   stats: LevelStats | None = None, on_tick: Callable[[LevelStats], None] | None = None,
                   tick_s: float = 0.5, client_kwargs: dict[str, Any] | None = None) -> LevelStats:
    """Run one level from synchronous code (uvloop if available); KeyboardInterrupt stops it cleanly."""
    stats = stats or LevelStats()
    stop = threading.Event()
    dataset.prepare(plan.first_prompt + (plan.expected_requests() or 1000))  # file loads outside the loop

    async def main() -> LevelStats:
        async with LoadClient(base_url, api=api, model=model, timeout_s=timeout_s, t0=t0,
                              max_connections=plan.max_inflight, **(client_kwargs or {})) as client:
            ticker = None
            if on_tick is not None:
                async def tick() -> None:
                    while True:
                        on_tick(stats)
                        await asyncio.sleep(tick_s)
                ticker = asyncio.get_running_loop().create_task(tick())
            try:
                return await run_level(client, dataset, plan, sink, stats=stats, stop=stop)
            finally:
                if ticker is not None:
                    ticker.cancel()
                    on_tick(stats)

    try:
        asyncio.get_running_loop()
        in_loop = True
    except RuntimeError:
        in_loop = False
    if not in_loop:
        with _gc_frozen(), asyncio.Runner(loop_factory=_loop_factory()) as runner:
            return runner.run(_terminable(main()))
    # called from a running loop (Jupyter): run in a helper thread; Ctrl-C (kernel interrupt) sets `stop`
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                box["result"] = runner.run(main())
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    th = threading.Thread(target=target, name="pdlab-load", daemon=True)
    with _gc_frozen():
        th.start()
        _join_or_stop(th, stop, timeout_s)
    if "error" in box:
        raise box["error"]
    return box["result"]


async def _terminable(coro: Any) -> Any:
    """Await `coro` so that SIGTERM cancels it cleanly, as asyncio.Runner does for Ctrl-C, then SystemExit(143).

    A Python-level SIGTERM handler raising SystemExit at an arbitrary point inside the event loop would leave
    a task holding the exception ("Task exception was never retrieved" and a traceback at exit); cancelling
    the level's task lets the runner record every in-flight request as interrupted first.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    terminated = False

    def on_term() -> None:
        nonlocal terminated
        terminated = True
        if task is not None:
            task.cancel()

    previous = signal.getsignal(signal.SIGTERM)
    try:
        loop.add_signal_handler(signal.SIGTERM, on_term)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals here
        return await coro
    try:
        return await coro
    except asyncio.CancelledError:
        if terminated:
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        signal.signal(signal.SIGTERM, previous)  # remove_signal_handler leaves SIG_DFL behind


def _join_or_stop(th: threading.Thread, stop: threading.Event, timeout_s: float) -> None:
    """Wait for the load thread; a KeyboardInterrupt asks it to stop, waits for it, and re-raises."""
    try:
        while th.is_alive():
            th.join(0.2)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C / kernel interrupt, or SIGTERM via the deployment's handler
        stop.set()
        th.join(timeout_s + 10)
        raise


@contextlib.contextmanager
def _gc_frozen():
    """Collect once, then move every existing object out of the collector's reach for the level.

    A full collection otherwise walks the whole heap (tokenizer, pandas, pyarrow: ~50 ms), a stall that
    shows as a dispatch-lag spike; frozen, collections only visit objects made during the level.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop

        return uvloop.new_event_loop
    except ImportError:  # pragma: no cover - Windows
        return None
