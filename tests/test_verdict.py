"""The verdict on capacity at the SLO: interpolation, bounds, noise in the sentence, never a margin between
two overloaded arms, attainment and offered rate in the numbers table, the bottleneck explanation."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from _report_helpers import synthetic_summary

from pdlab.analysis import bottleneck, capacity, compare, verdict

PD, CO = "3P1D (TP1)", "colocated 4×TP1"
RATES = [2.0, 4.0, 6.0]


def with_attainment(s: pd.DataFrame, curves: dict, offered: float = 1.0) -> pd.DataFrame:
    """Set good_fraction per arm from attainment(rate, repeat) and offered_rate = offered × rate."""
    s = s.copy()
    s["good_fraction"] = [curves[a](r, rep) for a, r, rep in zip(s["arm"], s["rate"], s["repeat"], strict=True)]
    s["offered_rate"] = s["rate"] * offered
    return s


def test_capacity_interpolates_between_the_last_level_meeting_the_threshold_and_the_first_missing():
    assert capacity.capacity_of([2, 4, 6], [1.0, 0.8, 0.3], 0.9) == (pytest.approx(3.0), "interpolated")
    assert capacity.capacity_of([2, 4, 6], [0.95, 0.92, 0.91], 0.9) == (6, "at least")
    assert capacity.capacity_of([2, 4, 6], [0.5, 0.2, 0.1], 0.9) == (2, "below")
    # the first crossing counts: meeting the threshold again at a higher level does not
    assert capacity.capacity_of([2, 4, 6], [1.0, 0.8, 0.95], 0.9)[0] == pytest.approx(3.0)


def test_capacity_is_measured_on_the_offered_rate_not_the_nominal_one():
    s = with_attainment(synthetic_summary({PD: lambda r: 1.0}, RATES), {PD: lambda r, k: 1.0 if r < 4 else 0.8},
                        offered=1.25)
    c = capacity.capacities(s, 0.9)[PD]
    # between offered 2.5 (100 %) and 5.0 (80 %): 2.5 + 2.5 × 0.1 / 0.2
    assert c.value == pytest.approx(3.75) and c.bound == "interpolated"


def test_threshold_comes_from_the_runs_params_unless_given():
    s = synthetic_summary({PD: lambda r: 1.0}, RATES)
    assert capacity.threshold_of(s) == 0.9
    s["slo_attainment"] = 0.95
    assert capacity.threshold_of(s) == 0.95
    assert capacity.threshold_of(s, 0.5) == 0.5


def test_no_margin_is_headlined_between_two_arms_that_both_miss_the_threshold():
    # PD's goodput is 2.26× colocated's at every level, but both miss 90 % attainment everywhere
    s = synthetic_summary({PD: lambda r: 0.34, CO: lambda r: 0.15}, RATES)
    s = with_attainment(s, {PD: lambda r, k: 0.30, CO: lambda r, k: 0.12})
    c = verdict.conclude(s)
    assert "overloaded" in c.headline and "no margin is claimed" in c.headline
    assert "%" not in c.headline.replace("90 %", "")  # no percentage but the threshold
    assert "beats" not in c.markdown() and "more capacity" not in c.markdown()
    assert all("both" in d and "overloaded" in d for d in c.details)


def test_per_level_margin_only_where_an_arm_meets_the_threshold():
    s = synthetic_summary({PD: lambda r: 2.0, CO: lambda r: 1.0}, RATES)
    s = with_attainment(s, {PD: lambda r, k: 1.0 if r < 6 else 0.5, CO: lambda r, k: 1.0 if r < 4 else 0.2})
    c = verdict.conclude(s)
    assert "beats" in c.details[0] and "beats" in c.details[1]  # at 2 and 4 someone meets the SLO
    assert "both" in c.details[2] and "overloaded" in c.details[2] and "beats" not in c.details[2]


def test_single_run_verdict_says_noise_not_measured():
    s = synthetic_summary({PD: lambda r: 1.0, CO: lambda r: 1.0}, RATES)
    s = with_attainment(s, {PD: lambda r, k: 1.0 if r < 4 else 0.5, CO: lambda r, k: 1.0 if r < 4 else 0.7})
    c = verdict.conclude(s)
    assert "single run: noise not measured" in c.headline
    # PD 2 + 2×0.1/0.5 = 2.4, CO 2 + 2×0.1/0.3 = 2.67 → colocated has 11 % more
    assert f"**{CO} sustains 2.67 req/s" in c.headline and "11 % more capacity" in c.headline


def test_repeats_measure_the_noise_and_a_difference_inside_it_is_no_difference():
    s = synthetic_summary({PD: lambda r: 1.0, CO: lambda r: 1.0}, RATES, repeats=2)
    # PD's capacity 3.0 or 3.4 over its two repeats (band 12.5 %), colocated 3.1: no difference
    s = with_attainment(s, {PD: lambda r, k: 1.0 if r < 4 else (0.8 if k == 0 else 0.88),
                            CO: lambda r, k: 1.0 if r < 4 else 0.82})
    c = verdict.conclude(s)
    assert "No difference in capacity" in c.headline
    assert "A/A band ±" in c.headline and "from 2 repeats" in c.headline


def test_lower_bound_when_an_arm_meets_the_slo_everywhere():
    s = synthetic_summary({PD: lambda r: 1.0, CO: lambda r: 1.0}, RATES)
    s = with_attainment(s, {PD: lambda r, k: 0.99, CO: lambda r, k: 1.0 if r < 4 else 0.5})
    c = verdict.conclude(s)
    assert f"**{PD} sustains ≥ 6.00 req/s" in c.headline and "at least 150 % more capacity" in c.headline


def test_key_table_shows_offered_rate_attainment_small_samples_and_client_bound_no():
    s = with_attainment(synthetic_summary({PD: lambda r: 1.0}, RATES), {PD: lambda r, k: 0.5}, offered=1.1)
    s["completed"] = [40, 150, 150]
    t = compare.key_table(s)
    assert t["offered (req/s)"].tolist() == ["2.2", "4.4", "6.6"]
    assert t["SLO attainment %"].tolist() == ["50", "50", "50"]
    assert t["TTFT p99 (ms)"].iloc[0].endswith(compare.FEW) and not t["TTFT p99 (ms)"].iloc[1].endswith(compare.FEW)
    assert not t["output tok/s/GPU"].iloc[0].endswith(compare.FEW)  # not a percentile
    assert t["client-bound"].tolist() == ["no", "no", "no"]
    assert "fewer than 100" in compare.few_samples_note(s)


def _bottleneck_fixture(queue_role: str, miss: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    s = with_attainment(synthetic_summary({PD: lambda r: 1.0}, [2.0, 4.0]), {PD: lambda r, k: 1.0 if r < 4 else 0.5})
    reqs, server = [], []
    for lv, (t0, t1) in ((2.0, (0, 10)), (4.0, (10, 20))):
        for k in range(20):
            over = lv == 4.0 and k % 2 == 0
            reqs.append({"run": s["run"].iloc[0], "level_value": lv, "warmup": False, "ok": True,
                         "t_send": t0 + k * 0.4, "t_end": t0 + k * 0.4 + 1,
                         "ttft_ms": 5000.0 if over and miss == "ttft" else 100.0,
                         "tpot_ms": 500.0 if over and miss == "tpot" else 10.0})
        for t in range(t0, t1):
            for role in ("prefill", "decode"):
                q = 6.0 if (role == queue_role and lv == 4.0) else 0.0
                server += [{"run": s["run"].iloc[0], "t": float(t), "name": f"{role}-0", "role": role,
                            "metric": "sglang:num_queue_reqs", "value": q},
                           {"run": s["run"].iloc[0], "t": float(t), "name": f"{role}-0", "role": role,
                            "metric": "sglang:token_usage", "value": 0.3}]
    return s, pd.DataFrame(reqs), pd.DataFrame(server)


def test_bottleneck_names_prefill_when_prompts_queue_there_and_ttft_is_missed():
    row = bottleneck.explain(*_bottleneck_fixture("prefill", "ttft")).iloc[0]
    assert row["level"] == 4.0 and row["bottleneck"] == "prefill"
    assert "50 % of requests over the TTFT SLO" in row["why"] and "prefill: 6.0 queued per instance" in row["why"]


def test_bottleneck_names_decode_when_tpot_is_missed():
    row = bottleneck.explain(*_bottleneck_fixture("decode", "tpot")).iloc[0]
    assert row["bottleneck"] == "decode" and math.isclose(row["over TPOT SLO"], 0.5)


def test_provenance_table_names_version_commit_command_backend_profile_and_seed(tmp_path):
    from pdlab.analysis import provenance

    (tmp_path / "params").mkdir()
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "pyproject.toml").write_text("")
    meta = {"command": "pdlab sweep params/demo-sweep.yaml", "file": str(tmp_path / "params" / "demo-sweep.yaml"),
            "repeats": 2}
    prov = {"r1": {"pdlab_version": "0.1.0", "git_commit": "abcdef0123456789", "git_dirty": True,
                   "started_at": "2026-01-01T00:00:00+00:00", "finished_at": "2026-01-01T00:01:00+00:00",
                   "host": {"hostname": "h", "cpus": 2, "python": "3.11"}}}
    params = {"r1": {"backend": {"kind": "local", "engine": "emulator"}, "gpu": {"type": "L20"},
                     "workload": {"seed": 7}}}
    t = dict(provenance.table(meta, prov, params).itertuples(index=False))
    assert t["git commit (runs)"] == "abcdef012345 (uncommitted changes)"
    assert t["command"] == "pdlab sweep params/demo-sweep.yaml" and t["sweep file"] == "params/demo-sweep.yaml"
    assert "emulated SGLang workers" in t["cluster or emulator"] and "L20" in t["performance profile"]
    assert t["workload seed"].startswith("7 (repeats replay")
    assert t["pdlab version (runs)"] == "0.1.0" and t["measured"].startswith("2026-01-01T00:00:00")
