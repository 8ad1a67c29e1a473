"""Real-time driver: runs an Engine under asyncio, sleeping each step's modelled time × the time scale.

During a busy period the driver keeps a model clock (the sum of step times since the period began) and
sleeps until each step's end on that clock, so scheduling jitter does not accumulate; ``stats`` reports how
far the wall clock lagged the model clock (``drift`` = (wall − model) ÷ model over busy periods, and the
mean/max lateness of step ends).

The emulator's own Python time stays out of the modelled latency as far as it can (up to ``ABSORB_S``): a
busy period's clock starts when the work became ready (a request's arrival at the HTTP handler, not after
its body was parsed and the engine loop woke), each sleep aims early by the event loop's usual timer
overshoot (learned as it runs), and a step's tokens reach their streams before the next step is planned.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from pdlab.emulator.engine import Batch, Engine, Req

# A process that slept long runs its next few milliseconds of Python up to several times slower (measured on
# the 2-core CI VM: 2× after 200 ms); waking in short slices before a long step ends keeps that out of the
# step's end, where the tokens are emitted.
WARM_S, WARM_SLICE_S = 0.01, 0.002
ABSORB_S = 0.002  # default for `absorb_s`: the most of its own time the driver hides per busy-period start and per sleep


@dataclass
class ClockStats:
    """How well the wall clock followed the modelled step clock."""

    steps: int = 0
    model_s: float = 0.0
    wall_s: float = 0.0
    late_sum_s: float = 0.0
    late_max_s: float = 0.0

    @property
    def drift(self) -> float:
        """(wall − model) ÷ model over completed busy periods and the current one."""
        return (self.wall_s - self.model_s) / self.model_s if self.model_s else 0.0

    def as_dict(self) -> dict:
        """JSON-friendly view."""
        return {"steps": self.steps, "model_s": self.model_s, "wall_s": self.wall_s, "drift": self.drift,
                "late_mean_ms": 1e3 * self.late_sum_s / self.steps if self.steps else 0.0,
                "late_max_ms": 1e3 * self.late_max_s}


class RealtimeDriver:
    """Runs `engine` in wall-clock time; `on_admit` is called for decode-mode requests given KV."""

    def __init__(self, engine: Engine, time_scale: float = 1.0,
                 on_admit: Callable[[Req], None] | None = None,
                 on_step: Callable[[Batch, float], None] | None = None):
        self.engine = engine
        self.time_scale = time_scale
        engine.power.time_scale = time_scale
        self.on_admit = on_admit
        self.on_step = on_step
        self.stats = ClockStats()
        self.running = False
        self.stall_until = 0.0  # an injected stall: no step starts before this time
        self._wake = asyncio.Event()
        self._ready_at: float | None = None  # since idle: when work first became ready
        self._idle_since = 0.0  # when the last busy period's model clock ended
        self._lead = 0.0  # how early each sleep aims: the loop's timer overshoot, smoothed
        self.absorb_s = ABSORB_S
        self.planned_end = 0.0  # the current (or last) step's end on the model clock

    @staticmethod
    def now() -> float:
        """The driver's clock (monotonic seconds)."""
        return time.monotonic()

    def notify(self, at: float | None = None) -> None:
        """Something changed (arrival, KV arrived, abort) at `at` (default now): admit and schedule."""
        at = self.now() if at is None else at
        self._ready_at = at if self._ready_at is None else min(self._ready_at, at)
        self.admit()
        self._wake.set()

    def admit(self) -> None:
        """Decode mode: give KV to waiting requests and hand them to `on_admit`."""
        if self.engine.config.mode == "decode" and self.engine.waiting:
            for r in self.engine.admit(self.now()):
                if self.on_admit is not None:
                    self.on_admit(r)

    async def run(self) -> None:
        """The engine loop: schedule a step, sleep its modelled time, apply it; idle until notified."""
        self.running = True
        eng, st = self.engine, self.stats
        target = busy_start = None
        end = 0.0  # the last step's end: a busy period ends there, not when the loop next looks
        try:
            while True:
                now = self.now()
                if self.stall_until > now:
                    if busy_start is not None:  # the stall is not model time: close the busy period
                        self._close(max(end, target), busy_start)
                        busy_start = target = None
                    await asyncio.sleep(self.stall_until - now)
                    continue
                batch = eng.next_batch(now)
                if batch is None:
                    if busy_start is not None:  # (the streams' handlers ran in between: not the engine's time)
                        self._close(max(end, target), busy_start)
                        busy_start = target = None
                    self._ready_at = None
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                dur = batch.cost.total_s * self.time_scale
                if busy_start is None:  # the clock starts when the work was ready, not when this loop woke
                    ready = now if self._ready_at is None else max(min(self._ready_at, now), now - self.absorb_s)
                    busy_start = target = max(ready, self._idle_since, self.stall_until)
                target += dur
                self.planned_end = target
                aim = target - self._lead
                delay = aim - self.now()
                if delay > 0:
                    if delay > WARM_S:  # most of a long step in one sleep, its last WARM_S in short ones
                        await asyncio.sleep(delay - WARM_S)
                        while aim - self.now() > WARM_SLICE_S:
                            await asyncio.sleep(WARM_SLICE_S)
                    await asyncio.sleep(max(aim - self.now(), 0.0))
                    over = self.now() - aim
                    self._lead = min(max(0.9 * self._lead + 0.1 * over, 0.0), self.absorb_s)
                end = self.now()
                late = end - target
                st.steps += 1
                st.model_s += dur
                st.late_sum_s += max(late, 0.0)
                st.late_max_s = max(st.late_max_s, late)
                eng.complete(batch, end)
                self.admit()
                if self.on_step is not None:
                    self.on_step(batch, end)
                await asyncio.sleep(0)  # the step's tokens reach their streams before the next step is planned
        finally:
            self.running = False

    def _close(self, end: float, start: float) -> None:
        """A busy period ended at `end` (wall clock)."""
        self.stats.wall_s += end - start
        self._idle_since = end
