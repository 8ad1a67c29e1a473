"""Arrival schedules: Poisson, gamma (burstiness) and constant open-loop send times, and closed-loop levels.

A schedule is an iterator of send offsets in seconds from the level's start (first request at 0), drawn
from a seeded numpy Generator, so the same seed and rate give the same times on every backend. Gamma
intervals use shape = burstiness and scale = 1 / (rate × burstiness) (as vLLM/SGLang's `--burstiness`):
mean interval 1/rate, burstiness 1 = Poisson, < 1 burstier, > 1 more regular.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pdlab.core.errors import PdlabError

ARRIVALS = ("poisson", "gamma", "constant")


def intervals(kind: str, rate: float, *, burstiness: float = 1.0, seed: int | list[int] = 0,
              batch: int = 4096) -> Iterator[float]:
    """Endless inter-arrival gaps (s) for `kind` at `rate` requests/s; drawn in batches for speed."""
    if not rate > 0 or not np.isfinite(rate):
        raise PdlabError(f"request rate must be a finite number > 0 (got {rate}); use concurrencies for a closed loop")
    if kind not in ARRIVALS:
        raise PdlabError(f"unknown arrival '{kind}'; use one of {', '.join(ARRIVALS)}")
    if kind == "gamma" and not burstiness > 0:
        raise PdlabError(f"burstiness must be > 0 (got {burstiness})")
    rng = np.random.default_rng(seed)
    while True:
        if kind == "constant":
            gaps = np.full(batch, 1.0 / rate)
        elif kind == "poisson":
            gaps = rng.exponential(1.0 / rate, size=batch)
        else:
            gaps = rng.gamma(burstiness, 1.0 / (rate * burstiness), size=batch)
        yield from gaps.tolist()


def send_times(kind: str, rate: float, *, burstiness: float = 1.0, seed: int | list[int] = 0,
               duration_s: float | None = None, count: int | None = None) -> Iterator[float]:
    """Send offsets (s): 0, then cumulative gaps; stops after `count` times or at `duration_s` (exclusive)."""
    t, n = 0.0, 0
    gaps = intervals(kind, rate, burstiness=burstiness, seed=seed)
    while (count is None or n < count) and (duration_s is None or t < duration_s - 1e-9):
        yield t
        n += 1
        t += next(gaps)
