"""Prefix caching and PD on chat-shaped traffic: 2P1D vs 3 colocated workers (equal GPUs), cache on and off,
on a shared-prefix and a multi-turn workload — the planner's virtual-time prediction next to an emulated
real-time run (emulated workers, the real sglang-router, HTTP) of the same params.

    python benchmarks/bench_prefix.py [--duration 20] [--workloads shared-prefix multi-turn] [--plan-only]

Prints per arm: cache-hit rate per role, TTFT/TPOT p50 and p99 as plan / real-time, and the ratio. Target: the
planner within 15% of the measurement on TTFT p50 and TPOT p50 with the cache on (reported, not asserted).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pdlab.analysis.results import load_run
from pdlab.experiment.loader import load_experiment
from pdlab.measure.cachehit import cache_hit_by_role
from pdlab.measure.run import run_experiment
from pdlab.plan.planner import simulate_arm

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "shared-prefix": ("{kind: generated-shared-prefix, num_groups: 16, prompts_per_group: 8, prefix_len: 2000, "
                      "input_len: 128, output_len: 64}", 4.0),
    "multi-turn": ("{kind: multi-turn, num_turns: 4, prefix_len: 500, input_len: 200, output_len: 64, "
                   "think_time_s: 1.0}", 1.0),
}
ARMS = {"2P1D": "{kind: pd, prefill: {replicas: 2, tp: 1}, decode: {replicas: 1, tp: 1}}",
        "colocated-3x": "{kind: colocated, worker: {replicas: 3, tp: 1}}"}
FIGS = ["ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params" / "demo-local.yaml"))
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--plan-only", action="store_true", help="skip the real-time runs")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for wl in args.workloads:
            dataset, rate = WORKLOADS[wl]
            for arm, topo in ARMS.items():
                for cache in ("on", "off"):
                    sets = [f"workload.dataset={dataset}", f"workload.rates=[{rate}]",
                            f"workload.duration_s={args.duration}", "workload.warmup=0", f"topology={topo}",
                            f"name=bench-{wl}-{arm.lower()}-{cache}"]
                    if cache == "off":
                        sets.append("engine_args={disable-radix-cache: true}")
                    exp = load_experiment(args.params, sets)
                    t = time.monotonic()
                    planned = simulate_arm(exp, rate, duration_s=args.duration, seed=exp.workload.seed)
                    plan_s = time.monotonic() - t
                    p_hit = {k.removeprefix("cache_hit_"): v for k, v in planned.items() if k.startswith("cache_hit_")}
                    real, r_hit, wall = None, {}, 0.0
                    if not args.plan_only:
                        t = time.monotonic()
                        run = load_run(run_experiment(exp, results=tmp, run_name="r", progress=False))
                        wall = time.monotonic() - t
                        real = run.summary.iloc[0]
                        r_hit = cache_hit_by_role(run.server_metrics)
                    rows.append((wl, arm, cache, planned, real, p_hit, r_hit, plan_s, wall))
                    print(f"  done {wl} {arm} cache {cache} (plan {plan_s:.1f} s, real-time {wall:.0f} s)", flush=True)
    print(f"\n{'workload':<14} {'arm':<13} {'cache':<5} {'hit plan':>18} {'hit real':>18}  "
          + "  ".join(f"{f:>24}" for f in FIGS))
    print(f"{'':<34} {'(per role)':>18} {'(per role)':>18}  " + "  ".join(f"{'plan / real = ratio':>24}" for _ in FIGS))
    within = []
    for wl, arm, cache, planned, real, p_hit, r_hit, _, _ in rows:
        cells = []
        for f in FIGS:
            p = float(planned[f])
            r = float(real[f]) if real is not None else float("nan")
            ratio = p / r if r else float("nan")
            cells.append(f"{p:>8.1f} / {r:>7.1f} = {ratio:>4.2f}")
            if cache == "on" and f in ("ttft_p50_ms", "tpot_p50_ms") and real is not None:
                within.append(abs(ratio - 1) <= 0.15)
        print(f"{wl:<14} {arm:<13} {cache:<5} {_hits(p_hit):>18} {_hits(r_hit):>18}  " + "  ".join(cells))
    if within:
        print(f"\nplanner within 15% of real-time on TTFT p50 / TPOT p50 with the cache on: {sum(within)}/{len(within)}")
    print("hit = cached prompt tokens ÷ prompt tokens (P prefill, D decode, W colocated worker); emulated figures")


def _hits(h: dict[str, float]) -> str:
    short = {"prefill": "P", "decode": "D", "worker": "W"}
    return " ".join(f"{short.get(k, k)}{v:.0%}" for k, v in sorted(h.items())) or "-"


if __name__ == "__main__":
    main()
