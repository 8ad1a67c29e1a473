"""Capacity bounds: an optimistic request rate per candidate, from the performance model alone (no simulation).

Prefill: requests/s of an instance running chunk-sized prefill steps back to back. Decode: requests/s of an
instance at the largest batch whose step time meets the TPOT target and whose KV fits the pool and the cap.
Colocated: one GPU-time budget for both (r ≤ 1 / (t_prefill + OSL·T(b)/b)); PD: min(P·prefill, D·decode).
If even a lone shortest prompt (plus the KV transfer) misses the TTFT target, the candidate is infeasible.
The bound carries SLACK: a finite steady-state window can pass a little above the fluid limit.
"""

from __future__ import annotations

from dataclasses import dataclass

from pdlab.emulator import perfmodel
from pdlab.emulator.engine import EngineConfig
from pdlab.experiment.spec import Experiment
from pdlab.plan.space import Candidate

SLACK = 1.15


@dataclass(frozen=True)
class Bound:
    """Optimistic total request rate of a candidate (0 when infeasible), and why."""

    rate: float
    reason: str
    miss: float = 0.0  # when infeasible: how far the floor is over its target (1.5 = 50 % over)


def _prefill_time(cfg: EngineConfig, tokens: int, batch: int = 1) -> float:
    """Seconds to prefill `batch` prompts of `tokens` tokens, chunked as the engine does."""
    step = min(cfg.chunked_prefill_size if cfg.chunked_prefill_size > 0 else 1 << 62,
               cfg.max_prefill_tokens if cfg.max_prefill_tokens > 0 else 1 << 62)
    if tokens * batch <= step:
        return perfmodel.step_time(cfg.model, cfg.gpu, cfg.tp, prefill=[(tokens, 0)] * batch,
                                   overhead_s=cfg.step_overhead_s).total_s
    total, done = 0.0, 0
    while done < tokens:
        n = min(step, tokens - done)
        total += perfmodel.step_time(cfg.model, cfg.gpu, cfg.tp, prefill=[(n, done)],
                                     overhead_s=cfg.step_overhead_s).total_s
        done += n
    return total * batch


def prefill_seconds_per_request(cfg: EngineConfig, prompt: int) -> float:
    """Prefill GPU-seconds per request at the best batching (as many prompts per step as the chunk holds)."""
    step = min(cfg.chunked_prefill_size if cfg.chunked_prefill_size > 0 else 1 << 62,
               cfg.max_prefill_tokens if cfg.max_prefill_tokens > 0 else 1 << 62)
    batch = max(1, step // max(prompt, 1))
    return _prefill_time(cfg, prompt, batch) / batch


def decode_batch(cfg: EngineConfig, prompt: int, output: int, tpot_s: float) -> tuple[int, float]:
    """The largest decode batch within the KV pool and cap whose step meets `tpot_s`, and its step time."""
    kv = prompt + output // 2

    def step(b: int) -> float:
        return perfmodel.step_time(cfg.model, cfg.gpu, cfg.tp, decode=[kv] * b, overhead_s=cfg.step_overhead_s).total_s

    most = min(cfg.max_running_requests, int(cfg.kv_pool_tokens or 0) // max(prompt + output, 1))
    if most < 1 or step(1) > tpot_s:
        return 0, step(1)
    lo, hi = 1, most
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if step(mid) <= tpot_s:
            lo = mid
        else:
            hi = mid - 1
    return lo, step(lo)


def bound(exp: Experiment, c: Candidate, prefill: EngineConfig, decode: EngineConfig) -> Bound:
    """Optimistic max request rate of the whole candidate (all replicas) under the SLO targets."""
    ds, slo = exp.workload.dataset, exp.slo
    prompt, output = ds.input_len, ds.output_len
    shortest = max(1, int(prompt * (1 - ds.range_ratio)))
    floor = _prefill_time(prefill, shortest)
    if c.kind == "pd":
        floor += perfmodel.kv_transfer_time(shortest, prefill.model, prefill.link)
    if floor * 1e3 > slo.ttft_ms:
        return Bound(0.0, f"a lone {shortest}-token prompt takes {floor * 1e3:.0f} ms to its first token "
                          f"(TTFT target {slo.ttft_ms:g} ms)", floor * 1e3 / slo.ttft_ms)
    b, t_step = decode_batch(decode, prompt, output, slo.tpot_ms / 1e3)
    if b < 1:
        return Bound(0.0, f"a single decode step takes {t_step * 1e3:.1f} ms (TPOT target {slo.tpot_ms:g} ms) "
                          f"or one request's KV does not fit", t_step * 1e3 / slo.tpot_ms)
    t_prefill = prefill_seconds_per_request(prefill, prompt)
    decode_rate = b / (t_step * output)
    if c.kind == "pd":
        rate = min(c.prefill / t_prefill, c.decode * decode_rate)
        why = "prefill" if c.prefill / t_prefill < c.decode * decode_rate else "decode"
    else:
        rate = 1.0 / (t_prefill + 1.0 / decode_rate)
        why = "prefill + decode"
    return Bound(SLACK * rate * c.replicas, f"{why}-bound, decode batch ≤ {b}")
