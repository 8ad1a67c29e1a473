"""Load split over several pods: independent Poisson shares keep the total rate, records come back through
the log protocol (also from a pod killed mid-run) and merge onto the run's clock with the pod's id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pytest

from pdlab.core.errors import SpecError
from pdlab.core.schema import REQUEST_SCHEMA
from pdlab.measure.load.runner import LevelPlan
from pdlab.measure.load.shares import check_splittable, merge, per_pod_client_bound, share_plan
from pdlab.measure.loadpod import ENV_SPEC, decode, encode


def test_shares_keep_the_total_and_are_independent():
    rate = LevelPlan(index=1, kind="rate", value=9.0, num_prompts=100, warmup=5, seed=3, first_prompt=40)
    shares = [share_plan(rate, i, 3) for i in range(3)]
    assert [s.value for s in shares] == [3.0, 3.0, 3.0]
    assert sum(s.num_prompts for s in shares) == 100 and sum(s.warmup for s in shares) == 5
    assert len({s.seed for s in shares} | {rate.seed}) == 4  # every pod its own stream
    starts = sorted(s.first_prompt for s in shares)
    assert all(b - a >= rate.expected_requests() for a, b in zip(starts, starts[1:], strict=False))  # no shared prompts
    conc = LevelPlan(index=0, kind="concurrency", value=4, duration_s=10)
    assert [share_plan(conc, i, 3).value for i in range(3)] == [2.0, 1.0, 1.0]
    assert share_plan(LevelPlan(index=0, kind="concurrency", value=2, duration_s=10), 2, 3) is None
    check_splittable("poisson", 3)
    with pytest.raises(SpecError, match="load_pods: 3 .* not 'gamma'"):
        check_splittable("gamma", 3)


def _table(n: int, t0: float = 0.0, level: int = 0) -> pa.Table:
    rows = {f.name: [] for f in REQUEST_SCHEMA}
    for k in range(n):
        vals = {"level": level, "level_kind": "rate", "level_value": 1.0, "req_id": k, "warmup": False,
                "t_sched": t0 + k, "t_send": t0 + k, "t_first": t0 + k + 0.1, "t_end": t0 + k + 0.2,
                "chunk_times": [t0 + k + 0.1, t0 + k + 0.2], "input_len": 8, "max_tokens": 2, "prompt_tokens": 8,
                "output_tokens": 2, "tokens_source": "usage", "status": 200, "ok": True, "error": ""}
        for key, v in vals.items():
            rows[key].append(v)
    return pa.table(rows, schema=REQUEST_SCHEMA)


def test_log_protocol_round_trip_and_a_batch_cut_short():
    lines = ["PDLAB-LOAD " + json.dumps({"pod": 1, "pods": 3, "t0_unix": 100.0}), "some log line"]
    lines += list(encode(_table(3), 0))
    cut = list(encode(_table(2000), 1))
    assert len(cut) > 1
    lines += cut[:-1]  # the pod died while writing batch 1
    start, tables, end = decode("\n".join(lines))
    assert start["pod"] == 1 and end is None
    assert [t.num_rows for t in tables] == [3]
    _, _, end = decode("\n".join([*lines, 'PDLAB-ABORT {"reason": "terminated (SIGTERM)", "levels": 0}']))
    assert end == {"done": False, "reason": "terminated (SIGTERM)", "levels": 0}


def test_merge_moves_times_to_the_run_clock_and_tags_pods():
    merged = merge([(0, 1000.0, _table(2)), (1, 1002.5, _table(2))], t0_unix=1000.0).to_pandas()
    assert merged["load_pod"].tolist() == [0, 0, 1, 1]
    assert merged["t_send"].tolist() == [0.0, 1.0, 2.5, 3.5]
    assert merged["chunk_times"].iloc[2].tolist() == [2.6, 2.7]


def test_client_bound_is_judged_per_pod():
    import pandas as pd

    good, bad = _table(50).to_pandas(), _table(50, t0=0.5).to_pandas()
    bad["t_send"] = bad["t_sched"] + 0.05  # this pod dispatched 50 ms late
    recs = pd.concat([good.assign(load_pod=0), bad.assign(load_pod=1)], ignore_index=True)
    summary = pd.DataFrame([{"level": 0, "level_kind": "rate", "client_bound": False, "client_bound_reason": ""}])
    out = per_pod_client_bound(recs, summary)
    assert bool(out["client_bound"].iloc[0]) and out["client_bound_reason"].iloc[0].startswith("load pod 1:")


@pytest.mark.slow
def test_three_load_processes_drive_one_poisson_rate(tmp_path):
    from pdlab.deploy.local import LocalBackend
    from pdlab.experiment.loader import experiment_from_dict
    from pdlab.measure.loadpod import load_spec
    from pdlab.measure.run import level_plans

    exp = experiment_from_dict({"name": "lp", "model": {"name": "Qwen3-8B", "path": "/models/Qwen3-8B/"},
                                "topology": {"kind": "pd", "prefill": {"replicas": 1, "tp": 1},
                                             "decode": {"replicas": 1, "tp": 1}},
                                "emulator": {"time_scale": 0.02},
                                "workload": {"dataset": {"input_len": 64, "output_len": 4}, "rates": [60],
                                             "duration_s": 4, "warmup": 0}})
    with LocalBackend().deploy(exp, run_dir=tmp_path / "run") as dep:
        t0_unix = time.time()
        spec = load_spec(exp, dep.router_url, level_plans(exp), pods=3, start_unix=t0_unix + 8.0)
        env = {**os.environ, ENV_SPEC: json.dumps(spec)}
        procs = [subprocess.Popen([sys.executable, "-m", "pdlab.measure.loadpod", "--pod", str(i)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for i in range(3)]
        logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0]
    parts = []
    for log in logs:
        start, tables, end = decode(log)
        assert end == {"done": True, "levels": 1}
        assert start["late_s"] is not None  # it waited for (or was late to) the common start
        parts.append((start["pod"], start["t0_unix"], pa.concat_tables(tables)))
    recs = merge(parts, t0_unix).to_pandas()
    assert sorted(recs["load_pod"].unique()) == [0, 1, 2]
    assert recs["ok"].all() and recs["req_id"].is_unique
    n = recs.groupby("load_pod").size()
    assert 0.5 * n.mean() < n.min() and n.max() < 1.5 * n.mean()  # each pod ~ a third
    assert 60 * 4 * 0.75 < len(recs) < 60 * 4 * 1.25  # the total rate is kept
    spans = recs.groupby("load_pod")["t_sched"].agg(["min", "max"])
    both = recs[recs["t_sched"].between(spans["min"].max(), spans["max"].min())]  # every pod sending
    gaps = np.diff(np.sort(both["t_sched"].to_numpy()))
    assert len(gaps) > 100
    assert 0.8 < gaps.std() / gaps.mean() < 1.2  # merged arrivals look Poisson (CV ≈ 1)
