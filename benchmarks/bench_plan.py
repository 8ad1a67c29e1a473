"""How well does `pdlab plan` (virtual time, seconds) predict an emulated real-time run (processes, HTTP,
the real router, minutes)? Runs both for the same arms and rates and prints the figures side by side.

    python benchmarks/bench_plan.py [--rates 2 4] [--duration 20] [--arms 3P1D colocated]

Differences come from request routing (plan: the params' router policy, approximated — see pdlab.plan.routing;
the router: its own), the client and HTTP path, and real-time scheduling noise on this machine. Nothing is
asserted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pdlab.analysis.results import load_run
from pdlab.experiment.loader import load_experiment
from pdlab.measure.run import run_experiment
from pdlab.plan.planner import plan

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ["ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms", "output_throughput_per_gpu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(ROOT / "params" / "demo-local.yaml"))
    ap.add_argument("--rates", type=float, nargs="+", default=[2.0, 4.0])
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--arms", nargs="+", default=["3P1D", "colocated"])
    args = ap.parse_args()
    sets = [f"workload.rates={args.rates}", f"workload.duration_s={args.duration}", "workload.warmup=0"]
    exp = load_experiment(args.params, sets)

    t = time.monotonic()
    planned = plan(exp, budget=args.budget)
    plan_s = time.monotonic() - t
    tp = exp.topology.prefill.tp if exp.topology.kind == "pd" else exp.topology.worker.tp
    print(f"plan: {len(planned)} arm×rate points in {plan_s:.2f} s (virtual time)")

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arm in args.arms:
            topo = ([f"topology={{kind: colocated, worker: {{replicas: {args.budget // tp}, tp: {tp}}}}}"]
                    if arm == "colocated" else [f"topology.ratio={arm}"])
            real = load_experiment(args.params, sets + topo)
            t = time.monotonic()
            run_dir = run_experiment(real, results=tmp, run_name=arm.lower(), progress=False)
            wall = time.monotonic() - t
            summary = load_run(run_dir).summary
            label = real.topology.label
            for rate in args.rates:
                got = summary[summary["level_value"] == rate].iloc[0]
                pl = planned[(planned["rate"] == rate) & (planned["arm"].str.startswith(
                    "colocated" if arm == "colocated" else arm))].iloc[0]
                rows.append((label, rate, wall, {f: (float(pl[f]), float(got[f])) for f in FIGURES}))
    print(f"\n{'arm':<14} {'rate':>4}  " + "  ".join(f"{f:>28}" for f in FIGURES))
    print(f"{'':<14} {'':>4}  " + "  ".join(f"{'plan / real-time = ratio':>28}" for _ in FIGURES))
    for label, rate, _wall, figs in rows:
        cells = [f"{p:>9.1f} / {r:>8.1f} = {p / r if r else float('nan'):>5.2f}" for p, r in figs.values()]
        print(f"{label:<14} {rate:>4g}  " + "  ".join(f"{c:>28}" for c in cells))
    walls = {label: wall for label, _, wall, _ in rows}
    print(f"\nreal-time runs took {', '.join(f'{k}: {v:.0f} s' for k, v in walls.items())}; plan took {plan_s:.2f} s "
          f"for all {len(planned)} points ({sum(walls.values()) / max(plan_s, 1e-9):.0f}× faster)")


if __name__ == "__main__":
    main()
