"""Request records → per-level summary, with SGLang `bench_serving`'s definitions (docs/architecture.md, "Metrics").

Per request (successful, non-warm-up): TTFT = first content chunk − actual send; E2E = end of the stream
(last SSE event, as bench_serving's `latency`) − actual send; TPOT = (E2E − TTFT) / (output_tokens − 1) for
output_tokens > 1; ITL = every gap between consecutive content chunks (pooled over requests).
Per level: `duration_s` = last end − first actual send of the level's measured requests (bench_serving:
from the benchmark start to the last completion); request_rate = completed / duration; input/output
throughput = Σ prompt_tokens / duration, Σ output_tokens / duration (server usage, else re-tokenised);
mean_concurrency = Σ E2E / duration; percentiles are numpy's linear `np.percentile` (p50 = median);
goodput = completed requests with TTFT ≤ slo.ttft_ms and TPOT ≤ slo.tpot_ms (TPOT 0 for single-token
outputs, as vLLM's goodput) per second; `*_per_gpu` divide by the topology's GPU count. An empty
population gives NaN (bench_serving prints 0).

Client health: dispatch lag = actual − scheduled send over every request of the level (warm-up included).
`client_bound` is True when p99 lag > LAG_P99_LIMIT_MS (10 ms), or, for open-loop levels, the achieved
send rate is below ACHIEVED_RATE_MIN (95 %) of the scheduled rate (both over the level's own schedule, so
Poisson noise in the sample does not trip it). A client-bound level measured the client, not the server.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

LAG_P99_LIMIT_MS = 10.0
MAX_FAILED_SHARE = 0.1  # default share of failed requests above which a level is marked failed
TOP_ERRORS = 3
ACHIEVED_RATE_MIN = 0.95
PERCENTILES = (50, 90, 95, 99)


def percentile(values: np.ndarray | list[float], q: float) -> float:
    """numpy's linear percentile of the non-NaN values; NaN for an empty population."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    return float(np.percentile(v, q)) if v.size else math.nan


def level_duration(t_send: np.ndarray | list[float], t_end: np.ndarray | list[float]) -> float:
    """A level's duration: last end − first send of its measured requests (bench_serving's window).
    Measured runs and the planner both divide by this."""
    s, e = np.asarray(t_send, dtype=float), np.asarray(t_end, dtype=float)
    if not s.size or np.isnan(s).all() or np.isnan(e).all():
        return math.nan
    return float(np.nanmax(e) - np.nanmin(s))


def meets_slo(ttft_s: np.ndarray, tpot_s: np.ndarray, slo_ttft_ms: float | None,
              slo_tpot_ms: float | None) -> np.ndarray:
    """Per request: TTFT ≤ slo.ttft_ms and TPOT ≤ slo.tpot_ms (TPOT NaN, a single-token output, counts as 0)."""
    ttft, tpot = np.asarray(ttft_s, dtype=float), np.asarray(tpot_s, dtype=float)
    good = np.ones(ttft.size, dtype=bool)
    if slo_ttft_ms is not None:
        good &= ttft * 1000 <= slo_ttft_ms
    if slo_tpot_ms is not None:
        good &= np.nan_to_num(tpot, nan=0.0) * 1000 <= slo_tpot_ms
    return good


def _stats(prefix: str, values: np.ndarray) -> dict[str, float]:
    out: dict[str, float] = {}
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    out[f"{prefix}_mean_ms"] = float(np.mean(v)) * 1000 if v.size else math.nan
    for p in PERCENTILES:
        out[f"{prefix}_p{p}_ms"] = percentile(v, p) * 1000
    return out


def itl_values(chunk_times: pd.Series | list) -> np.ndarray:
    """Every gap (s) between consecutive content chunks of each request, pooled (vectorised)."""
    arrays = [np.asarray(c, dtype=float) for c in chunk_times if c is not None and len(c) > 1]
    if not arrays:
        return np.empty(0)
    flat = np.concatenate(arrays)
    gaps = np.diff(flat)
    # drop the gaps that straddle two requests
    ends = np.cumsum([len(a) for a in arrays])[:-1] - 1
    mask = np.ones(gaps.size, dtype=bool)
    mask[ends] = False
    return gaps[mask]


def request_latencies(df: pd.DataFrame) -> pd.DataFrame:
    """Per-request ttft, e2e, tpot (s) and dispatch lag (s) columns added to a copy of the records."""
    out = df.copy()
    out["ttft"] = out["t_first"] - out["t_send"]
    out["e2e"] = out["t_end"] - out["t_send"]
    n = out["output_tokens"].astype(float)
    out["tpot"] = np.where(n > 1, (out["e2e"] - out["ttft"]) / (n - 1).where(n > 1, 1.0), np.nan)
    out["lag"] = out["t_send"] - out["t_sched"]
    return out


def summarize_level(df: pd.DataFrame, *, slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None,
                    gpus: int | None = None, level_kind: str | None = None, level_value: float | None = None,
                    max_failed_share: float = MAX_FAILED_SHARE) -> dict[str, Any]:
    """The summary figures of one level's records (all rows of one level, warm-up rows included)."""
    level_kind = level_kind or (str(df["level_kind"].iloc[0]) if len(df) else "rate")
    level_value = float(level_value if level_value is not None else (df["level_value"].iloc[0] if len(df) else 0))
    d = request_latencies(df)
    meas = d[~d["warmup"].astype(bool)]
    ok = meas[meas["ok"].astype(bool)]
    s: dict[str, Any] = {"level_kind": level_kind, "level_value": level_value,
                         "target_rate": level_value if level_kind == "rate" else math.nan,
                         "target_concurrency": level_value if level_kind == "concurrency" else math.nan}
    s["requests"] = int(len(meas))
    s["completed"] = int(len(ok))
    s["failed"] = int(len(meas) - len(ok))
    s["warmup_requests"] = int(len(d) - len(meas))
    dur = level_duration(meas["t_send"], meas["t_end"])
    s["duration_s"] = dur
    tin, tout = int(ok["prompt_tokens"].sum()), int(ok["output_tokens"].sum())
    s["total_input_tokens"], s["total_output_tokens"] = tin, tout
    per_s = (lambda x: x / dur) if dur and dur > 0 else (lambda x: math.nan)
    s["request_rate"] = per_s(len(ok))
    s["input_throughput"] = per_s(tin)
    s["output_throughput"] = per_s(tout)
    s["total_throughput"] = per_s(tin + tout)
    s["mean_concurrency"] = per_s(float(ok["e2e"].sum()))
    s.update(_stats("ttft", ok["ttft"].to_numpy()))
    s.update(_stats("tpot", ok["tpot"].to_numpy()))
    s.update(_stats("itl", itl_values(ok["chunk_times"])))
    s.update(_stats("e2e", ok["e2e"].to_numpy()))
    # goodput under the SLOs
    s["slo_ttft_ms"] = slo_ttft_ms if slo_ttft_ms is not None else math.nan
    s["slo_tpot_ms"] = slo_tpot_ms if slo_tpot_ms is not None else math.nan
    good = meets_slo(ok["ttft"].to_numpy(), ok["tpot"].to_numpy(), slo_ttft_ms, slo_tpot_ms)
    s["good_requests"] = int(good.sum())
    s["goodput"] = per_s(int(good.sum()))
    s["good_fraction"] = good.sum() / len(meas) if len(meas) else math.nan
    # per GPU
    s["gpus"] = gpus if gpus else math.nan
    for k in ("request_rate", "input_throughput", "output_throughput", "total_throughput", "goodput"):
        s[f"{k}_per_gpu"] = s[k] / gpus if gpus else math.nan
    s.update(client_health(d, level_kind))
    errs = meas.loc[~meas["ok"].astype(bool), "error"]
    s["top_error"] = str(errs.value_counts().index[0]) if len(errs) else ""
    s.update(failure(len(meas), errs, max_failed_share))
    return s


def top_errors(errors: pd.Series, n: int = TOP_ERRORS) -> list[dict[str, Any]]:
    """The `n` most frequent errors with counts; numbers are masked so 'total of 45954 tokens' groups with its kin."""
    if not len(errors):
        return []
    text = errors.fillna("").astype(str)
    keys = text.str.replace(r"\d+", "N", regex=True).str.slice(0, 200)
    counts = keys.value_counts().head(n)
    first = text.groupby(keys).first()
    return [{"error": str(first[k])[:300], "count": int(c)} for k, c in counts.items()]


def failure(requests: int, errors: pd.Series, max_failed_share: float) -> dict[str, Any]:
    """failed_share, level_failed (share above `max_failed_share`, or nothing measured), top_errors and
    failed_by_role of a level."""
    share = len(errors) / requests if requests else math.nan
    failed = not requests or share > max_failed_share
    return {"failed_share": share, "level_failed": bool(failed), "top_errors": top_errors(errors),
            "failed_by_role": failed_by_role(errors)}


def failed_by_role(errors: pd.Series) -> dict[str, int]:
    """Failed requests per role, where the error text (the router's or worker's message) names the role that
    failed — 'prefill failed for bootstrap room …' — else 'unattributed'."""
    if not len(errors):
        return {}
    text = errors.fillna("").astype(str).str.lower()
    role = pd.Series("unattributed", index=text.index)
    role[text.str.contains(r"\bdecode\b")] = "decode"
    role[text.str.contains(r"\bprefill\b")] = "prefill"  # 'prefill failed' reported by the decode: the prefill's
    return {str(k): int(v) for k, v in role.value_counts().items()}


def client_health(d: pd.DataFrame, level_kind: str) -> dict[str, Any]:
    """Dispatch lag p50/p99/max (ms), scheduled vs achieved send rate, and the client_bound flag."""
    lag = (d["t_send"] - d["t_sched"]).to_numpy(dtype=float)
    lag = lag[~np.isnan(lag)]
    out: dict[str, Any] = {
        "dispatch_lag_p50_ms": float(np.percentile(lag, 50)) * 1000 if lag.size else math.nan,
        "dispatch_lag_p99_ms": float(np.percentile(lag, 99)) * 1000 if lag.size else math.nan,
        "dispatch_lag_max_ms": float(lag.max()) * 1000 if lag.size else math.nan,
        "scheduled_send_rate": math.nan, "achieved_send_rate": math.nan,
    }
    reasons = []
    if lag.size and out["dispatch_lag_p99_ms"] > LAG_P99_LIMIT_MS:
        reasons.append(f"p99 dispatch lag {out['dispatch_lag_p99_ms']:.1f} ms > {LAG_P99_LIMIT_MS:g} ms")
    if level_kind == "rate" and len(d) > 1:
        ts, ta = d["t_sched"].to_numpy(float), d["t_send"].to_numpy(float)
        span_s, span_a = np.nanmax(ts) - np.nanmin(ts), np.nanmax(ta) - np.nanmin(ta)
        if span_s > 0 and span_a > 0:
            out["scheduled_send_rate"] = (len(d) - 1) / span_s
            out["achieved_send_rate"] = (len(d) - 1) / span_a
            if out["achieved_send_rate"] < ACHIEVED_RATE_MIN * out["scheduled_send_rate"]:
                reasons.append(f"sent {out['achieved_send_rate']:.1f} req/s of {out['scheduled_send_rate']:.1f} "
                               f"scheduled (< {ACHIEVED_RATE_MIN:.0%})")
    out["client_bound"] = bool(reasons)
    out["client_bound_reason"] = "; ".join(reasons)
    return out


def summarize(records: pd.DataFrame, *, slo_ttft_ms: float | None = None, slo_tpot_ms: float | None = None,
              gpus: int | None = None, max_failed_share: float = MAX_FAILED_SHARE) -> pd.DataFrame:
    """One summary row per level (ordered by level index) from a run's request records."""
    rows = []
    for level, df in records.groupby("level", sort=True):
        row = {"level": int(level)}
        row.update(summarize_level(df, slo_ttft_ms=slo_ttft_ms, slo_tpot_ms=slo_tpot_ms, gpus=gpus,
                                   max_failed_share=max_failed_share))
        rows.append(row)
    return pd.DataFrame(rows)


