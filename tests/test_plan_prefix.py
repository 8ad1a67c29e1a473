"""The planner on chat-shaped workloads: real prompts' token ids, the radix cache and the router policy."""

from __future__ import annotations

from pathlib import Path

from pdlab.experiment.loader import load_experiment
from pdlab.plan.planner import simulate_arm
from pdlab.plan.requests import level_requests
from pdlab.plan.routing import policies

GSP = ["workload.dataset={kind: generated-shared-prefix, num_groups: 4, prompts_per_group: 8, prefix_len: 1500, "
       "input_len: 100, output_len: 32}", "workload.rates=[2]", "workload.duration_s=10"]


def test_shared_prefix_plan_hits_the_cache_and_cuts_ttft(params_dir: Path) -> None:
    on = load_experiment(params_dir / "demo-local.yaml", GSP)
    off = load_experiment(params_dir / "demo-local.yaml", GSP + ["engine_args={disable-radix-cache: true}"])
    a, b = simulate_arm(on, 2.0, duration_s=10), simulate_arm(off, 2.0, duration_s=10)
    assert a["cache_hit_prefill"] > 0.4 and b["cache_hit_prefill"] == 0
    assert a["cache_hit_decode"] == 0  # decode caches only with --disaggregation-decode-enable-radix-cache
    assert a["ttft_p50_ms"] < 0.7 * b["ttft_p50_ms"]


def test_multi_turn_sessions_follow_each_other(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "demo-local.yaml", [
        "workload.dataset={kind: multi-turn, num_turns: 3, prefix_len: 200, input_len: 50, output_len: 20}",
        "workload.rates=[1]", "workload.duration_s=5"])
    reqs = level_requests(exp, 1.0, 5.0, 0)
    firsts = [r for r in reqs if r.after is None]
    assert len(reqs) == 3 * len(firsts)
    for i, r in enumerate(reqs):
        if r.after is not None:
            prev = reqs[r.after]
            assert r.after == i - 1 and r.tokens[: len(prev.tokens)] == prev.tokens
    row = simulate_arm(exp, 1.0, duration_s=5)
    assert row["requests"] == len(reqs) and row["cache_hit_prefill"] > 0.3


def test_router_params_become_policies(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "demo-local.yaml", ["topology.router={decode_policy: round_robin, "
                                                           "cache_threshold: 0.5}"])
    p = policies(exp)
    assert p["policy"].name == "random"  # sglang-router 0.3.2 routes PD cache_aware at random (measured)
    assert p["policy"].cache_threshold == 0.5
    assert p["decode_policy"].name == "round_robin" and "prefill_policy" not in p
    colo = load_experiment(params_dir / "demo-local.yaml", ["topology={kind: colocated, worker: {replicas: 2, tp: 1}}"])
    assert policies(colo)["policy"].name == "cache_aware"


def test_jsonl_workloads_are_planned_with_the_files_own_lengths(params_dir: Path, tmp_path: Path) -> None:
    import json

    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(json.dumps({"prompt": "hello there " * n, "output_len": o})
                           for n, o in ((50, 7), (200, 300))) + "\n")
    exp = load_experiment(params_dir / "demo-local.yaml", [f"workload.dataset={{kind: jsonl, path: {f}}}",
                                                           "workload.ignore_eos=false"])
    reqs = level_requests(exp, 4.0, 5.0, 0)
    assert {r.output_tokens for r in reqs} == {7, 300} and min(r.prompt_tokens for r in reqs) >= 100
    assert exp.workload.ignore_eos is False
