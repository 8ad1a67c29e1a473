"""End to end through the real sglang-router: what a user sees when emulated workers fail (local backend)."""

import pytest

from pdlab.analysis.results import load_run
from pdlab.analysis.summary_table import format_summary
from pdlab.experiment.loader import experiment_from_dict
from pdlab.measure.run import run_experiment


def _run(tmp_path, monkeypatch, name: str, router_args: dict, faults: dict):
    monkeypatch.setenv("PDLAB_STATE_DIR", str(tmp_path / "state"))
    exp = experiment_from_dict({
        "name": name, "model": {"name": "Qwen3-8B", "path": "/models/Qwen3-8B/"}, "gpu": {"type": "L20"},
        "topology": {"kind": "colocated", "worker": {"replicas": 2, "tp": 1, "faults": faults},
                     "router": {"policy": "round_robin", "args": router_args}},
        "emulator": {"time_scale": 0.05},
        "workload": {"dataset": {"input_len": 64, "output_len": 4}, "rates": [20], "duration_s": None,
                     "num_prompts": 40, "warmup": 0, "timeout_s": 30},
    })
    return load_run(run_experiment(exp, results=tmp_path / "results", run_name="r", progress=False))


@pytest.mark.slow
def test_error_rate_is_hidden_by_router_retries_and_seen_without_them(tmp_path, monkeypatch):
    faults = {"error_rate": 0.5, "error_status": 503}
    retried = _run(tmp_path, monkeypatch, "retry", {}, faults)
    assert retried.requests["ok"].mean() > 0.9  # sglang-router retries a 503 on another attempt
    bare = _run(tmp_path, monkeypatch, "noretry", {"disable-retries": True}, faults)
    failed = bare.requests[~bare.requests["ok"]]
    assert 0.2 < len(failed) / len(bare.requests) < 0.8
    assert failed["error"].str.contains("503").all()
    level = bare.summary.iloc[0]  # more than workload.max_failed_share failed: the level is marked failed
    assert bool(level["level_failed"]) and "503" in level["top_errors"][0]["error"]
    assert not bool(retried.summary.iloc[0]["level_failed"])
    assert level["failed_by_role"] == {"unattributed": len(failed)}  # colocated: no role in the message


@pytest.mark.slow
def test_a_crashed_worker_turns_into_failed_requests(tmp_path, monkeypatch):
    run = _run(tmp_path, monkeypatch, "crash", {"disable-retries": True}, {"crash_after": 5})
    req = run.requests
    assert req["ok"].sum() >= 4 and (~req["ok"]).sum() >= 1
    assert (req.loc[~req["ok"], "error"].str.len() > 0).all()
    lost = run.meta["workers_lost"]  # both workers got their 5th request and died
    assert {w["name"] for w in lost} == {"crash-worker-0", "crash-worker-1"}
    assert all(w["lost_at_s"] > w["last_seen_s"] for w in lost)
    assert "✗ lost worker crash-worker-0 (worker)" in format_summary(run.path)


@pytest.mark.slow
def test_kv_transfer_failures_are_counted_against_the_prefill_role(tmp_path, monkeypatch):
    monkeypatch.setenv("PDLAB_STATE_DIR", str(tmp_path / "state"))
    exp = experiment_from_dict({
        "name": "kvfail", "model": {"name": "Qwen3-8B", "path": "/models/Qwen3-8B/"}, "gpu": {"type": "L20"},
        "topology": {"kind": "pd", "prefill": {"replicas": 1, "tp": 1, "faults": {"kv_fail_rate": 0.5}},
                     "decode": {"replicas": 1, "tp": 1}, "router": {"args": {"disable-retries": True}}},
        "emulator": {"time_scale": 0.05},
        "workload": {"dataset": {"input_len": 64, "output_len": 4}, "rates": [20], "duration_s": None,
                     "num_prompts": 20, "warmup": 0, "timeout_s": 30},
    })
    run = load_run(run_experiment(exp, results=tmp_path / "results", run_name="r", progress=False))
    level = run.summary.iloc[0]
    n_failed = int((~run.requests["ok"]).sum())
    assert 0 < n_failed < 20 and level["failed_by_role"] == {"prefill": n_failed}
    assert "KV transfer" in level["top_errors"][0]["error"]
