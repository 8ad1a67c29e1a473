"""Verdict logic on synthetic sweeps with known answers: A/A band, winner, crossover, Pareto, SLO table,
fairness warnings."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from _report_helpers import synthetic_requests, synthetic_summary

from pdlab.analysis import compare

PD, CO = "2P2D (TP1)", "colocated 4×TP1"
RATES = [2.0, 4.0, 8.0]


def test_aa_band_is_the_spread_of_repeats():
    s = synthetic_summary({PD: lambda r: 1.0, CO: lambda r: 1.0}, RATES, repeats=3, spread=0.10)
    band = compare.aa_band(s, "goodput_per_gpu")
    assert band["band"].tolist() == pytest.approx([0.10] * 3)
    assert compare.has_repeats(s)
    assert not compare.has_repeats(synthetic_summary({PD: lambda r: 1.0}, RATES))


def test_no_difference_inside_the_aa_band():
    # PD is 6 % better, repeats spread 10 %: no difference at any level
    s = synthetic_summary({PD: lambda r: 1.06, CO: lambda r: 1.0}, RATES, repeats=3, spread=0.10)
    c = compare.compare_arms(s, PD, CO, "goodput_per_gpu")
    assert (c["winner"] == "").all()
    assert "A/A band ±10 %" in compare.sentence(s, PD, CO, "goodput_per_gpu", c.iloc[0].to_dict())


def test_winner_named_outside_the_aa_band():
    s = synthetic_summary({PD: lambda r: 1.30, CO: lambda r: 1.0}, RATES, repeats=3, spread=0.05)
    c = compare.compare_arms(s, PD, CO, "goodput_per_gpu")
    assert (c["winner"] == PD).all()
    text = compare.sentence(s, PD, CO, "goodput_per_gpu", c.iloc[0].to_dict())
    assert f"{PD} beats {CO} by 30 % at 2 req/s on goodput per GPU" in text
    assert compare.crossover(s, PD, CO, "goodput_per_gpu") is None


def test_lower_is_better_metric_verdict():
    s = synthetic_summary({PD: lambda r: 80.0, CO: lambda r: 100.0}, RATES, column="ttft_p99_ms")
    cmp = compare.compare_arms(s, PD, CO, "ttft_p99_ms")
    assert (cmp["winner"] == PD).all()
    assert cmp["diff"].tolist() == pytest.approx([0.2] * 3)


def test_without_repeats_the_sentence_says_noise_was_not_measured():
    s = synthetic_summary({PD: lambda r: 1.03, CO: lambda r: 1.0}, RATES)
    c = compare.compare_arms(s, PD, CO, "goodput_per_gpu")
    assert (c["winner"] == "").all() and not c["band_measured"].any()
    assert "single run: noise not measured" in compare.sentence(s, PD, CO, "goodput_per_gpu", c.iloc[0].to_dict())


def test_crossover_interpolates_between_levels():
    # colocated wins at low rate, PD at high; relative diff (PD − CO)/CO: −0.2 at 2, +0.2 at 6 → crossover 4
    s = synthetic_summary({PD: lambda r: 0.8 if r < 4 else 1.2, CO: lambda r: 1.0}, [2.0, 6.0], repeats=2,
                          spread=0.02)
    assert compare.crossover(s, PD, CO, "goodput_per_gpu") == pytest.approx(4.0)


def test_no_crossover_when_one_arm_wins_everywhere():
    s = synthetic_summary({PD: lambda r: 2.0, CO: lambda r: 1.0}, RATES)
    assert compare.crossover(s, PD, CO, "goodput_per_gpu") is None


def test_best_pd_arm_and_baseline_are_picked():
    s = synthetic_summary({"1P3D (TP1)": lambda r: 0.5, PD: lambda r: 1.5, "3P1D (TP1)": lambda r: 1.0,
                           CO: lambda r: 1.0}, RATES)
    assert compare.pd_and_baseline(s) == (PD, CO)
    assert compare.arms(s) == ["1P3D (TP1)", PD, "3P1D (TP1)", CO]


def test_pareto_frontier_keeps_non_dominated_points():
    df = pd.DataFrame({"x": [1, 2, 3, 2, 1.5], "y": [10, 8, 3, 5, 9], "id": list("abcde")})
    front = compare.pareto_frontier(df, "x", "y")
    assert front["id"].tolist() == ["a", "e", "b", "c"]


def test_best_per_slo_table():
    s = synthetic_summary({PD: lambda r: r * 0.3, CO: lambda r: r * 0.2}, RATES)
    t = compare.best_per_slo(s)
    assert t.iloc[0]["best arm"] == PD and t.iloc[0]["at"] == "8 req/s"
    assert t.iloc[0]["runner-up"] == CO and t.iloc[0]["margin"] == "50 % (single run: noise not measured)"
    # other SLOs are recomputed from the requests
    req = synthetic_requests(s)
    t2 = compare.best_per_slo(s, compare.slo_variants(1000, 50), requests=req)
    assert len(t2) == 3 and t2["SLO"].iloc[0] == "TTFT ≤ 500 ms, TPOT ≤ 25 ms"
    strict = compare.best_per_slo(s, [(0.001, 0.001)], requests=req)
    assert strict.iloc[0]["best arm"].startswith("no arm meets it")


def _params(kind: str, **engine: object) -> dict:
    topo = ({"kind": "pd", "prefill": {"replicas": 2, "tp": 1, "args": {}}, "decode": {"replicas": 2, "tp": 1,
             "args": {"disaggregation-decode-polling-interval": 5}}} if kind == "pd"
            else {"kind": "colocated", "worker": {"replicas": 4, "tp": 1, "args": {}}})
    return {"name": "x", "model": {"name": "Qwen3-8B"}, "gpu": {"type": "L20"}, "topology": topo,
            "engine_args": dict(engine), "workload": {"rates": [1]}, "labels": {"arm": kind}}


def test_fairness_accepts_arms_differing_only_in_disaggregation():
    assert compare.fairness_warnings({PD: _params("pd"), CO: _params("colocated")}) == []


def test_fairness_flags_engine_args_gpus_and_client_bound():
    co = _params("colocated", **{"mem-fraction-static": 0.8})
    co["topology"]["worker"]["replicas"] = 3
    s = synthetic_summary({PD: lambda r: 1.0, CO: lambda r: 1.0}, [2.0])
    s.loc[0, "client_bound"] = True
    s.loc[0, "client_bound_reason"] = "p99 dispatch lag 40 ms > 10 ms"
    w = compare.fairness_warnings({PD: _params("pd"), CO: co}, s)
    text = "\n".join(w)
    assert "`--mem-fraction-static` differs" in text
    assert "different GPU counts" in text and "colocated 4×TP1: 3" in text
    assert "client-bound: p99 dispatch lag 40 ms" in text
    assert "disaggregation" not in text
    assert any("client-bound levels (2P2D (TP1) at 2 req/s)" in c for c in compare.client_bound_caveats(s))


def test_arms_table_lists_replicas_tp_and_args():
    t = compare.arms_table({PD: _params("pd", **{"disable-cuda-graph": True}), CO: _params("colocated")})
    assert t.set_index("arm").loc[PD, "GPUs"] == 4
    assert "--disable-cuda-graph=True" in t.set_index("arm").loc[PD, "engine args"]
    assert t.set_index("arm").loc[CO, "replicas"] == "worker 4 × TP1"


def test_rel_diff_edge_cases():
    assert compare.rel_diff(0.0, 0.0, True) == 0.0
    assert compare.rel_diff(1.0, 0.0, True) == math.inf
    assert math.isnan(compare.rel_diff(math.nan, 1.0, True))
