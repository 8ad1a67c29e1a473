"""Synthetic tidy DataFrames shaped like `pdlab.analysis.results.load_sweep` / `load_run` output, for plots and verdicts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd


def synthetic_summary(curves: dict[str, Callable[[float], float]], rates: list[float], *, repeats: int = 1,
                      spread: float = 0.0, column: str = "goodput_per_gpu", gpus: int = 4,
                      seed: int = 0) -> pd.DataFrame:
    """One row per arm × rate × repeat; `column` = curve(rate) × (1 ± spread/2) across repeats (evenly
    spaced, so the A/A band is exactly `spread`), other figures plausible and derived from the rate."""
    rng = np.random.default_rng(seed)
    rows = []
    for arm, f in curves.items():
        kind = "colocated" if "colocated" in arm else "pd"
        for i, rate in enumerate(rates):
            for r in range(repeats):
                k = (r / (repeats - 1) - 0.5) if repeats > 1 else 0.0
                v = f(rate) * (1 + spread * k)
                ttft = 100 + 30 * rate * (1.5 if kind == "colocated" else 1.0) + rng.uniform(0, 1)
                tpot = 20 + 2 * rate * (1.3 if kind == "colocated" else 1.0)
                row = {
                    "sweep": "syn", "run": f"{arm.split()[0].lower()}-{r}", "arm": arm, "topology_kind": kind,
                    "ratio": arm.split()[0], "gpus": gpus, "repeat": r, "level": i, "level_kind": "rate",
                    "rate": float(rate), "concurrency": np.nan, "level_value": float(rate),
                    "requests": 100, "completed": 100, "failed": 0,
                    "ttft_p50_ms": ttft, "ttft_p99_ms": ttft * 2, "ttft_mean_ms": ttft * 1.1,
                    "tpot_p50_ms": tpot, "tpot_p99_ms": tpot * 1.5, "tpot_mean_ms": tpot * 1.05,
                    "output_throughput": rate * 128, "output_throughput_per_gpu": rate * 128 / gpus,
                    "goodput": rate * 0.9, "goodput_per_gpu": rate * 0.9 / gpus,
                    "slo_ttft_ms": 1000.0, "slo_tpot_ms": 50.0, "client_bound": False,
                    "client_bound_reason": "", "top_error": "",
                }
                row[column] = v
                rows.append(row)
    return pd.DataFrame(rows)


def synthetic_requests(summary: pd.DataFrame, n: int = 50, seed: int = 0) -> pd.DataFrame:
    """Request rows (run, arm, level, rate, ttft_ms, tpot_ms, ok, warmup, t_send, t_end) per summary row."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in summary.itertuples():
        for k in range(n):
            t_send = k / max(s.rate, 0.1)
            ttft = float(rng.gamma(4, s.ttft_p50_ms / 4))
            rows.append({"run": s.run, "arm": s.arm, "repeat": s.repeat, "level": s.level, "rate": s.rate,
                         "level_kind": "rate", "level_value": s.rate,
                         "ttft_ms": ttft, "tpot_ms": float(rng.gamma(8, s.tpot_p50_ms / 8)), "ok": True,
                         "warmup": k < 2, "t_send": t_send, "t_end": t_send + ttft / 1000 + 1.0})
    return pd.DataFrame(rows)


def synthetic_server(summary: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Long-format server metrics (run, arm, t, name, role, metric, labels, value) per run."""
    rng = np.random.default_rng(seed)
    rows = []
    for run, g in summary.groupby("run"):
        arm = g["arm"].iloc[0]
        roles = ["worker"] if "colocated" in arm else ["prefill", "decode"]
        for role in roles:
            for inst in range(2):
                for t in np.arange(0, 30, 2.0):
                    for metric, scale in (("sglang:num_queue_reqs", 5), ("sglang:num_running_reqs", 20),
                                          ("sglang:token_usage", 0.8)):
                        rows.append({"time": 1.7e9 + t, "t": float(t), "name": f"{role}-{inst}", "role": role,
                                     "metric": metric, "labels": "{}", "value": float(rng.uniform(0, scale)),
                                     "run": run, "arm": arm, "repeat": 0})
    return pd.DataFrame(rows)
