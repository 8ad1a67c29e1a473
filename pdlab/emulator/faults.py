"""Injected faults of an emulated worker (`--emu-fault-*` flags), for testing what users see when SGLang fails.

- ``error_rate`` of requests are refused at once with HTTP ``error_status`` (500 or 503), SGLang's error body;
- a stall: from ``stall_at_s`` after start the engine stops stepping for ``stall_s`` (every request freezes);
- a crash: the process exits (code 1, a line on stderr) when request number ``crash_after`` arrives, or
  ``crash_at_s`` after start — open streams are cut, the port stops answering;
- KV transfers (prefill side): ``kv_fail_rate`` of them fail after the transfer time (the decode worker gets an
  error), ``kv_timeout_rate`` of them never complete (the decode worker times out after --emu-pd-timeout-s).

Draws come from one seeded RNG (``seed``), so a run with the same requests fails the same ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

STATUSES = (500, 503)


@dataclass(frozen=True)
class FaultConfig:
    """What to inject (all off by default)."""

    error_rate: float = 0.0
    error_status: int = 503
    stall_at_s: float | None = None
    stall_s: float = 0.0
    crash_after: int | None = None
    crash_at_s: float | None = None
    kv_fail_rate: float = 0.0
    kv_timeout_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("error_rate", "kv_fail_rate", "kv_timeout_rate"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"--emu-fault-{name.replace('_', '-')} must be within [0, 1], got {v}")
        if self.error_status not in STATUSES:
            raise ValueError(f"--emu-fault-error-status must be one of {STATUSES}, got {self.error_status}")
        if self.kv_fail_rate + self.kv_timeout_rate > 1.0:
            raise ValueError("--emu-fault-kv-fail-rate + --emu-fault-kv-timeout-rate must be at most 1")
        if self.crash_after is not None and self.crash_after < 1:
            raise ValueError(f"--emu-fault-crash-after must be at least 1, got {self.crash_after}")


class Faults:
    """Decides, request by request, which injected fault (if any) happens."""

    def __init__(self, cfg: FaultConfig | None = None):
        self.cfg = cfg or FaultConfig()
        self._rng = random.Random(f"faults:{self.cfg.seed}")
        self.requests = 0

    def on_request(self) -> tuple[int | None, bool]:
        """A request arrived: (HTTP status to refuse it with, or None; whether the process must crash now)."""
        self.requests += 1
        c = self.cfg
        crash = c.crash_after is not None and self.requests >= c.crash_after
        if c.error_rate and self._rng.random() < c.error_rate:
            return c.error_status, crash
        return None, crash

    def kv_outcome(self) -> str:
        """How a KV transfer ends: 'ok', 'fail' or 'timeout'."""
        c = self.cfg
        if not (c.kv_fail_rate or c.kv_timeout_rate):
            return "ok"
        x = self._rng.random()
        if x < c.kv_fail_rate:
            return "fail"
        if x < c.kv_fail_rate + c.kv_timeout_rate:
            return "timeout"
        return "ok"
