"""How much open-loop load N load processes drive compared with one (issue 15: in-cluster load pods).

    python benchmarks/bench_loadpods.py                 # pods 1, 2, 4 (as the machine's cores allow)
    python benchmarks/bench_loadpods.py --quick         # fewer rates, shorter levels

Each configuration runs `python -m pdlab.measure.loadpod` N times (what a load Job's pods run), every process
pinned to its own core, with a common start, against bench_client's streaming server (16 SSE tokens per
request, 1 ms apart) on its own core. The records are merged as a load-Job run merges them. Criterion per
rate: completed rate ≥ 99% of the merged schedule's rate, p99 dispatch lag ≤ 5 ms, no pod client-bound.
Prints the highest on-schedule Poisson rate per N and its ratio to N = 1 (the baseline, same invocation).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_client import TOKENS, start_server  # noqa: E402

from pdlab.core.stats import summarize_level  # noqa: E402
from pdlab.experiment.spec import DatasetSpec  # noqa: E402
from pdlab.measure.load.runner import LevelPlan  # noqa: E402
from pdlab.measure.load.shares import merge, per_pod_client_bound  # noqa: E402
from pdlab.measure.loadpod import ENV_SPEC, decode  # noqa: E402


def run_pods(url: str, pods: int, rate: float, duration_s: float, cores: list[int]) -> dict:
    """N load processes at `rate` in total for `duration_s`; merged figures and the pass criterion."""
    plan = LevelPlan(0, "rate", rate, arrival="poisson", duration_s=duration_s, warmup=0, max_inflight=4096, seed=1)
    t0_unix = time.time()
    spec = {"router_url": url, "api": "chat", "model": "bench", "timeout_s": 60.0,
            "dataset": DatasetSpec(input_len=64, output_len=TOKENS).model_dump(mode="json"), "seed": 0,
            "pods": pods, "plans": [dataclasses.asdict(plan)], "start_unix": t0_unix + 4.0}
    env = {**os.environ, ENV_SPEC: json.dumps(spec), "PYTHONPATH": str(ROOT)}
    outs = [tempfile.TemporaryFile("w+") for _ in range(pods)]  # a pipe could block a pod mid-level
    procs = [subprocess.Popen(["taskset", "-c", str(cores[i % len(cores)]), sys.executable, "-m",
                               "pdlab.measure.loadpod", "--pod", str(i)], env=env, stdout=outs[i],
                              stderr=subprocess.DEVNULL, text=True) for i in range(pods)]
    parts = []
    for p, f in zip(procs, outs, strict=True):
        p.wait(timeout=duration_s + 120)
        f.seek(0)
        start, tables, _end = decode(f.read())
        f.close()
        if tables:
            parts.append((int(start["pod"]), float(start["t0_unix"]), pa.concat_tables(tables)))
    df = merge(parts, t0_unix).to_pandas()
    s = summarize_level(df)
    bound = per_pod_client_bound(df, _one_row(s))
    sched = df["t_sched"].sort_values().to_numpy()
    sched_rate = (len(sched) - 1) / (sched[-1] - sched[0]) if len(sched) > 1 else float("nan")
    ratio = s["request_rate"] / sched_rate if sched_rate else 0.0
    lag99 = s["dispatch_lag_p99_ms"]
    ok = s["completed"] / s["requests"] if s["requests"] else 0.0
    return {"requests": s["requests"], "done_rate": s["request_rate"], "sched_rate": sched_rate, "ratio": ratio,
            "lag_p99_ms": lag99, "client_bound": bool(bound["client_bound"].iloc[0]),
            "pass": bool(ratio >= 0.99 and lag99 <= 5.0 and ok >= 0.999 and not bound["client_bound"].iloc[0])}


def _one_row(s: dict):
    import pandas as pd

    return pd.DataFrame([{"level": 0, **s}])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rates, 4 s levels")
    ap.add_argument("--pods", default="1,2,4", help="comma-separated pod counts (default 1,2,4)")
    a = ap.parse_args()
    ncpu = os.cpu_count() or 1
    server_core = ncpu - 1
    client_cores = list(range(max(1, ncpu - 1)))
    pod_counts = [int(x) for x in a.pods.split(",") if int(x) <= len(client_cores) or int(x) == 1]
    skipped = [x for x in a.pods.split(",") if int(x) not in pod_counts]
    if skipped:
        print(f"skipping {', '.join(skipped)} load process(es): this machine has {len(client_cores)} core(s) for them")
    rates = [200, 400, 600, 800, 1200, 1600] if a.quick else [200, 300, 400, 600, 800, 1000, 1200, 1600, 2000]
    dur = 4.0 if a.quick else 6.0
    srv, url = start_server(core=server_core)
    print(f"load pods vs one process: server on core {server_core}, load processes on cores {client_cores[:max(pod_counts)]}"
          f" (one each), {TOKENS} tokens/request, Poisson, {dur:g} s per rate; {ncpu} cores")
    print("criterion: done ≥ 99% of the merged schedule's rate, p99 dispatch lag ≤ 5 ms, no pod client-bound")
    print(f"{'pods':>4} {'target':>7} {'sched':>7} {'done/s':>7} {'ratio':>6} {'lag p99':>8}  pass  client_bound")
    best: dict[int, float] = {}
    try:
        for n in pod_counts:
            misses = 0
            for rate in rates:
                r = run_pods(url, n, rate, dur, client_cores)
                print(f"{n:>4} {rate:>7g} {r['sched_rate']:>7.0f} {r['done_rate']:>7.0f} {r['ratio']:>6.3f} "
                      f"{r['lag_p99_ms']:>7.1f}  {'yes ' if r['pass'] else 'no  '}  {r['client_bound']}", flush=True)
                misses = 0 if r["pass"] else misses + 1
                if r["pass"]:
                    best[n] = max(best.get(n, 0), rate)
                if misses == 2:
                    break  # two rates in a row off schedule: this N is saturated
    finally:
        srv.kill()
        srv.join(5)
    base = best.get(1, 0)
    print()
    for n in pod_counts:
        b = best.get(n, 0)
        print(f"highest on-schedule Poisson rate, {n} load process(es): {b:g} req/s"
              + (f"  ({b / base:.1f}x one process)" if base and n != 1 else "  (baseline)" if n == 1 else ""))


if __name__ == "__main__":
    main()
