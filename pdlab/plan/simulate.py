"""One probe of the planner: a candidate's unit at one Poisson rate, in virtual time, judged against the SLO.

The unit runs on the emulator's engine (`engine.simulate`) configured from the very argument lists the
local backend starts workers with. The window is steady-state: the first max(workload.warmup,
rate × OSL × TPOT target) requests fill the batch and are dropped, the next `measured` are judged, arrivals go
on for another fill time so the judged requests see a full system. Arrival gaps are one seeded sequence
scaled by 1/rate (common random numbers), so a faster rate is the same traffic compressed. The simulation stops
early once the verdict is certain: every judged request done, too many certainly late, or a request waiting
so long that the queue is growing without bound.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np

from pdlab.core.stats import meets_slo, percentile
from pdlab.emulator.cli import parse as parse_emulator_args
from pdlab.emulator.engine import EngineConfig, RequestTiming, SimRequest, simulate
from pdlab.experiment.commands import emulator_args, worker_args
from pdlab.experiment.spec import Experiment
from pdlab.experiment.topology import build
from pdlab.measure.load.arrivals import send_times
from pdlab.measure.load.datasets import sample_length
from pdlab.plan.bounds import prefill_seconds_per_request
from pdlab.plan.routing import policies
from pdlab.plan.space import Candidate, unit_experiment

UNBOUNDED = 4.0  # a judged request unfinished after this × its SLO budget means the queue grows without bound


@dataclass
class Probe:
    """The outcome of one candidate at one total request rate."""

    rate: float
    meets: bool
    why: str = ""  # why it misses ("" when it meets)
    miss: float = math.inf  # how far from the SLO: ≤ 1 meets, e.g. 1.3 = 30 % over (inf: stopped early)
    requests: int = 0
    figures: dict[str, float] = field(default_factory=dict)


def engine_config(exp: Experiment, role: str) -> EngineConfig:
    """The EngineConfig an emulated worker of `role` runs with, parsed from its real argument list."""
    r = build(exp).role(role)
    return parse_emulator_args(worker_args(exp, r, host="127.0.0.1", port=1) + emulator_args(exp)).engine


def unit_configs(exp: Experiment, c: Candidate) -> tuple[EngineConfig, EngineConfig]:
    """(prefill, decode) engine configs of the candidate's unit; a colocated worker is both."""
    unit = unit_experiment(exp, c)
    if c.kind == "pd":
        return engine_config(unit, "prefill"), engine_config(unit, "decode")
    worker = engine_config(unit, "worker")
    return worker, worker


def measured_count(exp: Experiment) -> int:
    """Judged requests per probe: 200, more for tail statistics (≥ 3 beyond the percentile)."""
    slo = exp.slo
    if slo.statistic.startswith("p"):
        q = int(slo.statistic[1:]) / 100
    elif slo.statistic == "attainment":
        q = slo.attainment
    else:
        return 200
    return min(1000, max(200, math.ceil(3 / max(1 - q, 1e-9))))


def requests(exp: Experiment, rate: float, warm: int, measured: int, tail_s: float) -> list[SimRequest]:
    """Seeded arrivals at `rate` (unit-rate gaps scaled by 1/rate) with seeded prompt/output lengths."""
    w, ds = exp.workload, exp.workload.dataset
    times = list(send_times(w.arrival, 1.0, burstiness=w.burstiness, seed=w.seed, count=warm + measured))
    times = [t / rate for t in times]
    more = send_times(w.arrival, 1.0, burstiness=w.burstiness, seed=w.seed + 1, duration_s=tail_s * rate)
    times += [times[-1] + t / rate for t in list(more)[1:]]
    rng = random.Random(w.seed)
    return [SimRequest(t, sample_length(rng, ds.input_len, ds.range_ratio),
                       sample_length(rng, ds.output_len, ds.range_ratio)) for t in times]


def queue_floor(exp: Experiment, c: Candidate, prefill: EngineConfig, rate: float) -> tuple[float, float]:
    """(utilisation, mean TTFT floor in s) of one prefill instance in steady state: its prefill time plus the
    Kingman G/G/1 wait, t·ρ/(1−ρ)·(ca² + cs²)/2, with round-robin over P instances (ca² = 1/P) and prompt lengths
    uniform in len·(1 ± r) (cs² = r²/3). A finite window starts empty and cannot show this wait near saturation."""
    ds = exp.workload.dataset
    t = prefill_seconds_per_request(prefill, ds.input_len)
    instances = c.prefill if c.kind == "pd" else 1
    rho = rate / c.replicas / instances * t
    if rho >= 1:
        return rho, math.inf
    wait = t * rho / (1 - rho) * (1 / instances + ds.range_ratio ** 2 / 3) / 2
    return rho, t + wait


def judge(exp: Experiment, ttft_s: np.ndarray, tpot_s: np.ndarray) -> tuple[bool, float, str]:
    """(meets, miss ratio, why) of judged requests under slo.statistic; miss ≤ 1 means it meets."""
    slo = exp.slo
    if slo.statistic == "attainment":
        share = float(np.mean(meets_slo(ttft_s, tpot_s, slo.ttft_ms, slo.tpot_ms)))
        miss = slo.attainment / share if share > 0 else math.inf
        return share >= slo.attainment, miss, f"{share:.0%} of requests meet both targets (need {slo.attainment:.0%})"
    tt, tp = ttft_s * 1e3, tpot_s[~np.isnan(tpot_s)] * 1e3
    if slo.statistic == "mean":
        a, b = float(np.mean(tt)), float(np.mean(tp)) if tp.size else 0.0
    else:
        q = int(slo.statistic[1:])
        a, b = percentile(tt, q), percentile(tp, q) if tp.size else 0.0
    miss = max(a / slo.ttft_ms, b / slo.tpot_ms)
    name = slo.statistic
    why = (f"TTFT {name} {a:.0f} ms > {slo.ttft_ms:g}" if a > slo.ttft_ms else
           f"TPOT {name} {b:.1f} ms > {slo.tpot_ms:g}")
    return miss <= 1.0, miss, why


def _stopper(exp: Experiment, reqs: list[SimRequest], judged: range, state: dict, early: bool):
    slo = exp.slo
    tt, tp = slo.ttft_ms / 1e3, slo.tpot_ms / 1e3
    n = len(judged)
    if slo.statistic == "attainment":
        allowed = (1 - slo.attainment) * n
    elif slo.statistic.startswith("p"):
        allowed = 2 * (1 - int(slo.statistic[1:]) / 100) * n  # either metric may hold the late ones
    else:
        allowed = math.inf
    if not early:
        allowed = math.inf

    def stop(now: float, done: dict[int, RequestTiming]) -> bool:
        late, ttft_sum, tpot_sum, finished = 0, 0.0, 0.0, 0
        for i in judged:
            r = done.get(i)
            if r is None:
                sr = reqs[i]
                if sr.arrival > now:
                    break
                budget = tt + (sr.output_tokens - 1) * tp
                if now - sr.arrival > budget:
                    late += 1
                    if now - sr.arrival > UNBOUNDED * budget:
                        state["why"] = "queue grows without bound"
                        return True
                continue
            finished += 1
            ttft_sum += r.ttft
            tpot_sum += r.tpot
            late += r.ttft > tt or r.tpot > tp
        if finished == n:
            return True
        if late > allowed:
            state["why"] = f"over {allowed / n:.0%} of requests miss a target"
            return True
        if early and slo.statistic == "mean" and (ttft_sum / n > tt or tpot_sum / n > tp):
            state["why"] = "the mean already exceeds a target"
            return True
        return False

    return stop


def probe(exp: Experiment, c: Candidate, configs: tuple[EngineConfig, EngineConfig], rate: float, *,
          early: bool = True) -> Probe:
    """Simulate the candidate's unit at rate / replicas and judge its steady-state window against the SLO
    (`early=False`: run the window out even once the verdict is a certain miss, for full figures)."""
    slo, ds = exp.slo, exp.workload.dataset
    rho, floor = queue_floor(exp, c, configs[0], rate)
    queued = None
    if floor * 1e3 > slo.ttft_ms and (slo.statistic != "p50" and
                                      (slo.statistic != "attainment" or slo.attainment >= 0.5)):
        queued = Probe(rate, False, f"steady-state prefill queue: {rho:.0%} busy, mean TTFT ≥ {floor * 1e3:.0f} ms",
                       floor * 1e3 / slo.ttft_ms)
        if early:
            return queued
    unit_rate = rate / c.replicas
    fill_s = ds.output_len * slo.tpot_ms / 1e3
    warm = max(exp.workload.warmup, math.ceil(unit_rate * fill_s))
    measured = measured_count(exp)
    reqs = requests(exp, unit_rate, warm, measured, fill_s)
    judged = range(warm, warm + measured)
    state: dict[str, str] = {}
    stop = _stopper(exp, reqs, judged, state, early)
    if c.kind == "pd":
        done = simulate(reqs, configs[0], prefill_workers=c.prefill, decode_workers=c.decode,
                        decode_config=configs[1], stop=stop, **policies(exp))
    else:
        done = simulate(reqs, configs[0], workers=1, stop=stop, **policies(exp))
    got = [r for r in done if warm <= r.index < warm + measured]
    if state.get("why") or len(got) < measured:
        return Probe(rate, False, state.get("why", "requests unfinished"), math.inf, len(got))
    ttft = np.array([r.ttft for r in got])
    tpot = np.array([r.tpot if r.output_tokens > 1 else np.nan for r in got])
    ok, miss, why = judge(exp, ttft, tpot)
    mean_out = float(np.mean([r.output_tokens for r in got]))
    decode_s = float(np.mean([r.e2e - r.ttft for r in got]))
    tpot_mean = float(np.nanmean(tpot)) if (~np.isnan(tpot)).any() else math.nan
    figures = {
        "ttft_mean_ms": float(np.mean(ttft)) * 1e3, "tpot_mean_ms": tpot_mean * 1e3,
        **{f"{name}_p{q}_ms": percentile(v, q) * 1e3 for name, v in (("ttft", ttft), ("tpot", tpot))
           for q in (50, 90, 99)},
        "attainment": float(np.mean(meets_slo(ttft, tpot, slo.ttft_ms, slo.tpot_ms))),
        "output_tok_s_per_gpu": rate * mean_out / c.gpus,
        "tok_s_per_user": 1.0 / tpot_mean if tpot_mean > 0 else math.nan,
        "decode_batch": unit_rate * decode_s / max(c.decode, 1),
        "prefill_busy": rho, "ttft_steady_floor_ms": floor * 1e3,
    }
    if queued is not None:
        return Probe(rate, False, queued.why, max(queued.miss, miss), len(got), figures)
    return Probe(rate, ok, "" if ok else why, miss, len(got), figures)
