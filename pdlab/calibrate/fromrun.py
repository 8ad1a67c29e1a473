"""Fit a GPU profile's factors to a finished measured run (`pdlab calibrate --from-run RUN_DIR`).

The run's requests (arrival, prompt and output tokens) are replayed in virtual time through the same
emulated SGLang scheduler the emulator and planner use (`pdlab.emulator.engine.simulate`), with the
profile's prefill efficiencies × `prefill`, decode efficiencies (weight and KV reads) × `decode` and a
per-step overhead; they are fitted by alternating golden-section / Nelder–Mead searches to minimise the squared log-error of every
request's TTFT and TPOT. The scraped running batch (`sglang:num_running_reqs`) is compared with the
replay's as a check on the fit. Once fitted, the emulator and planner reproduce that cluster.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pdlab.emulator.engine import EngineConfig, RequestTiming, SimRequest, simulate
from pdlab.experiment.profiles import GPUProfile, TPEfficiency


@dataclass(frozen=True)
class Observed:
    """One measured request: arrival (s), sizes, and its TTFT and TPOT (s; TPOT None for one output token)."""

    arrival: float
    prompt_tokens: int
    output_tokens: int
    ttft: float
    tpot: float | None


@dataclass(frozen=True)
class Deployment:
    """What the run deployed, for the replay: worker engine config(s) and replica counts."""

    config: EngineConfig
    workers: int = 1
    prefill_workers: int = 0
    decode_workers: int = 0
    decode_config: EngineConfig | None = None


@dataclass
class FitResult:
    """Fitted factors, the fitted profile and the fit's residuals (relative errors of the replay)."""

    prefill: float
    decode: float
    step_overhead_ms: float
    request_overhead_ms: float
    profile: GPUProfile
    residuals: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0


def scale_profile(gpu: GPUProfile, *, prefill: float = 1.0, decode: float = 1.0,
                  step_overhead_ms: float | None = None) -> GPUProfile:
    """`gpu` with prefill efficiencies × prefill, decode weight and KV efficiencies × decode, and an overhead."""
    eff = {tp: TPEfficiency(prefill={k: v * prefill for k, v in e.prefill.items()},
                            decode_weights={k: v * decode for k, v in e.decode_weights.items()},
                            decode_kv={k: v * decode for k, v in e.decode_kv.items()},
                            prefill_boost={k: v * prefill for k, v in e.prefill_boost.items()}
                            if e.prefill_boost else None)
           for tp, e in gpu.efficiency.items()}
    upd: dict = {"efficiency": eff}
    if step_overhead_ms is not None:
        upd["step_overhead_ms"] = step_overhead_ms
    return gpu.model_copy(update=upd)


def replay(observed: Sequence[Observed], deployment: Deployment, gpu: GPUProfile) -> list[RequestTiming]:
    """The observed requests run through the deployment's emulated workers with profile `gpu` (virtual time)."""
    cfg = replace(deployment.config, gpu=gpu, step_overhead_s=None)
    dcfg = deployment.decode_config
    if dcfg is not None:
        dcfg = replace(dcfg, gpu=gpu, step_overhead_s=None)
    reqs = [SimRequest(o.arrival, o.prompt_tokens, o.output_tokens) for o in observed]
    return simulate(reqs, cfg, workers=deployment.workers, prefill_workers=deployment.prefill_workers,
                    decode_workers=deployment.decode_workers, decode_config=dcfg)


def _log_errors(observed: Sequence[Observed], timings: list[RequestTiming],
                request_overhead_s: float = 0.0) -> tuple[list[float], list[float]]:
    ttft, tpot = [], []
    for o, t in zip(observed, timings, strict=True):
        if o.ttft > 0 and t.ttft + request_overhead_s > 0:
            ttft.append(math.log((t.ttft + request_overhead_s) / o.ttft))
        if o.tpot and o.tpot > 0 and t.tpot > 0:
            tpot.append(math.log(t.tpot / o.tpot))
    return ttft, tpot


def nelder_mead(f: Callable[[list[float]], float], x0: list[float], step: list[float], *, iters: int = 120,
                tol: float = 1e-7) -> list[float]:
    """Minimise f from x0 with the Nelder–Mead simplex (no derivatives; the replay is piecewise smooth)."""
    n = len(x0)
    pts = [list(x0)] + [[x0[j] + (step[i] if j == i else 0.0) for j in range(n)] for i in range(n)]
    vals = [f(p) for p in pts]
    for _ in range(iters):
        order = sorted(range(n + 1), key=vals.__getitem__)
        pts, vals = [pts[i] for i in order], [vals[i] for i in order]
        if vals[-1] - vals[0] < tol:
            break
        centroid = [sum(p[j] for p in pts[:-1]) / n for j in range(n)]

        def toward(t: float, centroid: list[float] = centroid, worst: list[float] = pts[-1]) -> list[float]:
            return [c + t * (w - c) for c, w in zip(centroid, worst, strict=True)]

        refl = toward(-1.0)
        fr = f(refl)
        if fr < vals[0]:
            exp = toward(-2.0)
            fe = f(exp)
            pts[-1], vals[-1] = (exp, fe) if fe < fr else (refl, fr)
        elif fr < vals[-2]:
            pts[-1], vals[-1] = refl, fr
        else:
            con = toward(0.5)
            fc = f(con)
            if fc < vals[-1]:
                pts[-1], vals[-1] = con, fc
            else:  # shrink toward the best point
                pts = [pts[0]] + [[b + 0.5 * (x - b) for b, x in zip(pts[0], p, strict=True)] for p in pts[1:]]
                vals = [vals[0]] + [f(p) for p in pts[1:]]
    return pts[min(range(n + 1), key=vals.__getitem__)]


def golden(f: Callable[[float], float], lo: float, hi: float, iters: int = 18) -> float:
    """Minimise a one-dimensional f on [lo, hi] by golden-section search."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


def fit(observed: Sequence[Observed], deployment: Deployment, *, fit_overhead: bool = False,
        rounds: int = 4, max_overhead_ms: float = 50.0) -> FitResult:
    """Fit prefill and decode factors so the replay matches the observed requests' TTFT and TPOT.

    Alternating searches: the decode factor (and with `fit_overhead` the per-step overhead) against the
    TPOTs, then the prefill factor and a constant per-request TTFT overhead (HTTP, tokenisation, routing:
    time no GPU step model covers; reported, not part of the profile) against the TTFTs.
    """
    if not observed:
        raise ValueError("no completed requests to fit")
    base = deployment.config.gpu
    count = {"n": 0}
    x = {"lp": 0.0, "ld": 0.0, "req": 0.0, "o": base.step_overhead_ms}

    def errors(lp: float, ld: float, req_s: float, o: float) -> tuple[list[float], list[float]]:
        count["n"] += 1
        prof = scale_profile(base, prefill=math.exp(lp), decode=math.exp(ld),
                             step_overhead_ms=o if fit_overhead else None)
        return _log_errors(observed, replay(observed, deployment, prof), req_s)

    def mse(errs: list[float]) -> float:  # Huber: queueing amplifies a few requests' errors; keep them from ruling
        return sum(e * e if abs(e) < 0.1 else 0.2 * abs(e) - 0.01 for e in errs) / max(len(errs), 1)

    width = math.log(2.0)
    for r in range(rounds):
        w = width / (2.5**r)
        x["ld"] = golden(lambda v: mse(errors(x["lp"], v, x["req"], x["o"])[1]), x["ld"] - w, x["ld"] + w)
        if fit_overhead:
            hw = max_overhead_ms / (2**r)
            x["o"] = golden(lambda v: mse(errors(x["lp"], x["ld"], x["req"], v)[1]),
                            max(0.0, x["o"] - hw), x["o"] + hw)
        lp, req = nelder_mead(lambda v: mse(errors(v[0], x["ld"], max(v[1], 0.0) * 0.01, x["o"])[0]),
                              [x["lp"], x["req"] / 0.01], [w / 2, 0.5], iters=40)
        x["lp"], x["req"] = lp, max(req, 0.0) * 0.01
    w = width / (2.5**rounds)  # the decode factor once more, at the final prefill factor
    x["ld"] = golden(lambda v: mse(errors(x["lp"], v, x["req"], x["o"])[1]), x["ld"] - w, x["ld"] + w)
    prof = scale_profile(base, prefill=math.exp(x["lp"]), decode=math.exp(x["ld"]),
                         step_overhead_ms=x["o"] if fit_overhead else None)
    ttft, tpot = _log_errors(observed, replay(observed, deployment, prof), x["req"])
    res = _summary("ttft", ttft) | _summary("tpot", tpot)
    return FitResult(prefill=math.exp(x["lp"]), decode=math.exp(x["ld"]), step_overhead_ms=prof.step_overhead_ms,
                     request_overhead_ms=x["req"] * 1e3, profile=prof, residuals=res, evaluations=count["n"])


def _summary(name: str, log_errors: list[float]) -> dict[str, float]:
    if not log_errors:
        return {}
    rel = sorted(math.exp(e) - 1 for e in log_errors)
    return {f"{name}_median": rel[len(rel) // 2], f"{name}_p90_abs": sorted(abs(x) for x in rel)[int(0.9 * (len(rel) - 1))],
            f"{name}_mean": sum(rel) / len(rel), f"{name}_requests": float(len(rel))}


def running_batch(timings: list[RequestTiming], times: Sequence[float]) -> list[float]:
    """The replay's number of decoding requests at each time (to compare with scraped num_running_reqs)."""
    spans = [(t.arrival + t.ttft, t.arrival + t.e2e) for t in timings]
    return [float(sum(1 for a, b in spans if a <= x < b)) for x in times]


# --------------------------------------------------------------------------- a run directory


RUNNING = "sglang:num_running_reqs"


def observed_requests(requests: Any, time_scale: float = 1.0) -> list[Observed]:
    """The run's completed, non-warmup requests as replay inputs; wall times ÷ the emulator's time scale."""
    ok = requests[requests["ok"].astype(bool) & ~requests["warmup"].astype(bool)]
    out = []
    for r in ok.itertuples(index=False):
        ttft = (r.t_first - r.t_send) / time_scale
        n = int(r.output_tokens)
        tpot = (r.t_end - r.t_first) / (n - 1) / time_scale if n > 1 else None
        out.append(Observed(float(r.t_send) / time_scale, int(r.prompt_tokens or r.input_len), n, ttft, tpot))
    return sorted(out, key=lambda o: o.arrival)


def deployment_of(exp: Any, gpu: GPUProfile | None = None) -> Deployment:
    """The emulated workers a run's experiment deploys (the configs its local backend would start)."""
    from pdlab.emulator.cli import parse as parse_emulator_args
    from pdlab.experiment.commands import emulator_args, worker_args
    from pdlab.experiment.topology import build

    topo = build(exp)

    def cfg(role: str) -> EngineConfig:
        c = parse_emulator_args(worker_args(exp, topo.role(role), host="127.0.0.1", port=1) + emulator_args(exp)).engine
        return replace(c, gpu=gpu) if gpu is not None else c

    if exp.topology.kind == "pd":
        return Deployment(cfg("prefill"), workers=0, prefill_workers=topo.role("prefill").replicas,
                          decode_workers=topo.role("decode").replicas, decode_config=cfg("decode"))
    return Deployment(cfg("worker"), workers=topo.role("worker").replicas)


def scraped_running(server_metrics: Any) -> Any:
    """Total decoding batch over the decode (or colocated) workers at each scrape: a Series indexed by t (s)."""
    sm = server_metrics[server_metrics["metric"] == RUNNING]
    roles = {"decode", "worker"} & set(sm["role"])
    if roles:
        sm = sm[sm["role"].isin(roles)]
    return sm.groupby("t")["value"].sum()
