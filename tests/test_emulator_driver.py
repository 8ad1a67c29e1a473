"""The real-time driver's model clock: where a busy period starts, and how much of its own time it hides."""

from __future__ import annotations

import asyncio

import pytest

from pdlab.emulator.driver import ABSORB_S, RealtimeDriver
from pdlab.emulator.engine import Engine, EngineConfig, Req
from pdlab.experiment.profiles import gpu, model


def _first_step(received_ago: float, absorb_s: float | None = None) -> tuple[float, float, float]:
    """Submit one 1-token request received `received_ago` s before now; (received, planned end, step time)."""

    async def go() -> tuple[float, float, float]:
        eng = Engine(EngineConfig(model=model("Qwen3-8B"), gpu=gpu("H100"), tp=1))
        drv = RealtimeDriver(eng, time_scale=0.01)
        if absorb_s is not None:
            drv.absorb_s = absorb_s
        steps: list[tuple[float, float]] = []
        drv.on_step = lambda batch, end: steps.append((drv.planned_end, batch.cost.total_s * drv.time_scale))
        task = asyncio.create_task(drv.run())
        await asyncio.sleep(0)
        received = drv.now() - received_ago
        eng.submit(Req("a", 512, 1, received))
        drv.notify(received)
        while not steps:
            await asyncio.sleep(0.001)
        task.cancel()
        return received, *steps[0]

    return asyncio.run(go())


def test_the_clock_starts_when_the_request_was_received() -> None:
    """Parsing and waking the engine loop are the emulator's own time: the step ends a step after arrival."""
    received, planned_end, step = _first_step(received_ago=0.05, absorb_s=1.0)
    assert planned_end == pytest.approx(received + step, abs=1e-9)


def test_the_clock_hides_at_most_absorb_s() -> None:
    """A request whose work became ready long before the loop ran is not served in the past."""
    received, planned_end, step = _first_step(received_ago=1.0)
    start = planned_end - step
    assert start > received + 1.0 - ABSORB_S - 1e-6  # at most ABSORB_S before the loop saw it
