"""pdlab.core.stats on synthetic records with hand-computed answers."""

import math

import numpy as np
import pandas as pd
import pytest

from pdlab.core.stats import client_health, itl_values, summarize, summarize_level


def rec(req_id, t_send, chunks, t_end, out, *, prompt=100, ok=True, warmup=False, t_sched=None, level=0,
        kind="rate", value=2.0, error=""):
    return {"level": level, "level_kind": kind, "level_value": value, "req_id": req_id, "warmup": warmup,
            "t_sched": t_send if t_sched is None else t_sched, "t_send": t_send,
            "t_first": chunks[0] if chunks else math.nan, "t_end": t_end, "chunk_times": list(chunks),
            "input_len": prompt, "max_tokens": out, "prompt_tokens": prompt, "output_tokens": out,
            "tokens_source": "usage", "status": 200 if ok else 500, "ok": ok, "error": error}


@pytest.fixture
def records():
    return pd.DataFrame([
        # warm-up: excluded from statistics (but counted in dispatch lag)
        rec(0, 0.0, [0.5, 0.6], 0.7, 2, warmup=True),
        # A: send 1.0, TTFT 0.1, chunks 1.1 1.2 1.4, end 1.5 → E2E 0.5, TPOT (0.5-0.1)/2 = 0.2, ITL 0.1 0.2
        rec(1, 1.0, [1.1, 1.2, 1.4], 1.5, 3, prompt=100, t_sched=0.999),
        # B: send 2.0, TTFT 0.3, chunks 2.3 2.4, end 3.0 → E2E 1.0, TPOT (1.0-0.3)/1 = 0.7, ITL 0.1
        rec(2, 2.0, [2.3, 2.4], 3.0, 2, prompt=200, t_sched=1.99),
        # C: single token: TTFT 0.2, E2E 0.25, no TPOT, no ITL
        rec(3, 2.5, [2.7], 2.75, 1, prompt=50, t_sched=2.5),
        # D: failed
        rec(4, 2.6, [], 2.9, 0, ok=False, error="HTTP 500: boom", t_sched=2.6),
    ])


def test_summary_figures(records):
    s = summarize_level(records, slo_ttft_ms=250, slo_tpot_ms=500, gpus=4)
    assert s["requests"] == 4 and s["completed"] == 3 and s["failed"] == 1 and s["warmup_requests"] == 1
    # duration: first measured send 1.0 → last end 3.0 (the failed request ends at 2.9)
    assert s["duration_s"] == pytest.approx(2.0)
    assert s["request_rate"] == pytest.approx(1.5)
    assert s["total_input_tokens"] == 350 and s["total_output_tokens"] == 6
    assert s["input_throughput"] == pytest.approx(175.0)
    assert s["output_throughput"] == pytest.approx(3.0)
    assert s["total_throughput"] == pytest.approx(178.0)
    # mean concurrency = Σ E2E / duration = (0.5 + 1.0 + 0.25) / 2
    assert s["mean_concurrency"] == pytest.approx(0.875)
    # TTFT: 0.1, 0.3, 0.2 → mean 200 ms, median 200, p99 = linear interpolation 0.2 + 0.98*0.1
    assert s["ttft_mean_ms"] == pytest.approx(200.0)
    assert s["ttft_p50_ms"] == pytest.approx(200.0)
    assert s["ttft_p99_ms"] == pytest.approx(298.0)
    assert s["ttft_p90_ms"] == pytest.approx(280.0)
    # TPOT: 0.2, 0.7 (single-token C has none) → mean 450, p50 450, p95 = 0.2 + 0.95*0.5 = 0.675
    assert s["tpot_mean_ms"] == pytest.approx(450.0)
    assert s["tpot_p95_ms"] == pytest.approx(675.0)
    # ITL pooled: 0.1, 0.2, 0.1 → mean 133.33, p50 100
    assert s["itl_mean_ms"] == pytest.approx(400 / 3)
    assert s["itl_p50_ms"] == pytest.approx(100.0)
    # E2E: 0.5, 1.0, 0.25 → mean 583.33, p50 500
    assert s["e2e_mean_ms"] == pytest.approx(1750 / 3)
    assert s["e2e_p50_ms"] == pytest.approx(500.0)
    # goodput: TTFT ≤ 250 ms and TPOT ≤ 500 ms → A (100, 200) ok, B (300) no, C (200, tpot 0) ok → 2 / 2 s
    assert s["good_requests"] == 2
    assert s["goodput"] == pytest.approx(1.0)
    assert s["good_fraction"] == pytest.approx(0.5)
    # per GPU
    assert s["request_rate_per_gpu"] == pytest.approx(1.5 / 4)
    assert s["output_throughput_per_gpu"] == pytest.approx(0.75)
    assert s["goodput_per_gpu"] == pytest.approx(0.25)
    assert s["top_error"] == "HTTP 500: boom"
    # lag over all 5 requests: 0, 1, 10, 0, 0 ms → p50 0 ms, max 10 ms
    assert s["dispatch_lag_p50_ms"] == pytest.approx(0.0, abs=1e-9)
    assert s["dispatch_lag_max_ms"] == pytest.approx(10.0)
    assert s["dispatch_lag_p99_ms"] == pytest.approx(1 + 0.96 * 9)  # linear: rank 3.96 of [0,0,0,1,10]
    assert s["client_bound"] is False


def test_itl_does_not_bridge_requests():
    assert np.allclose(itl_values([[0.0, 1.0], [5.0, 5.5, 7.0], [9.0]]), [1.0, 0.5, 1.5])
    assert itl_values([[1.0], []]).size == 0


def test_client_bound_by_lag_and_by_rate():
    n = 100
    sched = np.arange(n) * 0.01  # 100 req/s scheduled
    d = pd.DataFrame({"t_sched": sched, "t_send": sched + 0.02})  # 20 ms late each
    h = client_health(d, "rate")
    assert h["client_bound"] and "lag" in h["client_bound_reason"]
    d = pd.DataFrame({"t_sched": sched, "t_send": sched * 1.2})  # sent at 83 req/s, lag p99 < 10 ms? no: grows
    h = client_health(d, "rate")
    assert h["achieved_send_rate"] == pytest.approx(100 / 1.2)
    assert h["client_bound"] and "scheduled" in h["client_bound_reason"]
    d = pd.DataFrame({"t_sched": sched, "t_send": sched + 0.001})
    assert client_health(d, "rate")["client_bound"] is False


def test_summarize_groups_levels_and_empty_levels(records):
    other = records.copy()
    other["level"], other["level_value"] = 1, 4.0
    other["ok"] = False
    df = summarize(pd.concat([records, other]), gpus=2)
    assert list(df["level"]) == [0, 1]
    assert list(df["target_rate"]) == [2.0, 4.0]
    assert df.loc[1, "completed"] == 0 and math.isnan(df.loc[1, "ttft_p50_ms"])
    assert df.loc[1, "request_rate"] == 0.0
    assert math.isnan(df.loc[0, "goodput"]) is False  # no SLO → every completed request is good
    assert df.loc[0, "goodput"] == pytest.approx(1.5)


def test_closed_loop_level_has_no_target_rate(records):
    d = records.assign(level_kind="concurrency", level_value=4.0)
    s = summarize_level(d)
    assert math.isnan(s["target_rate"]) and s["target_concurrency"] == 4.0
    assert math.isnan(s["achieved_send_rate"])
