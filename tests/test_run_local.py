"""End-to-end: `run_experiment` with the local backend (emulated workers + the real sglang-router)."""

import json

import pytest

from pdlab.analysis.results import load_run, load_sweep
from pdlab.analysis.summary_table import format_summary
from pdlab.experiment.loader import experiment_from_dict
from pdlab.measure.run import run_experiment


@pytest.mark.slow
def test_run_experiment_local_pd_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("PDLAB_STATE_DIR", str(tmp_path / "state"))
    exp = experiment_from_dict({
        "name": "e2e", "model": {"name": "Qwen3-8B", "path": "/models/Qwen3-8B/"},
        "gpu": {"type": "L20"}, "topology": {"kind": "pd", "prefill": {"replicas": 1, "tp": 1},
                                             "decode": {"replicas": 1, "tp": 1}},
        "emulator": {"time_scale": 0.05},
        "workload": {"dataset": {"input_len": 256, "output_len": 8}, "rates": [5, 10], "duration_s": None,
                     "num_prompts": 8, "warmup": 1, "timeout_s": 30},
    })
    rd = run_experiment(exp, results=tmp_path / "results", run_name="local", progress=False)
    run = load_run(rd)
    assert run.complete, run.incomplete
    assert run.summary["completed"].tolist() == [8, 8] and run.summary["failed"].tolist() == [0, 0]
    ok = run.requests[run.requests.ok]
    assert (ok["output_tokens"] == 8).all() and (ok["tokens_source"] == "usage").all()
    assert (ok["ttft_ms"] > 0).all()
    roles = set(run.server_metrics["role"])
    assert {"prefill", "decode"} <= roles
    assert run.server_metrics["metric"].str.startswith("sglang:").any()
    assert "processes" in (rd / "manifests.yaml").read_text()
    prov = json.loads((rd / "provenance.json").read_text())
    assert prov["backend"]["kind"] == "local" and prov["router_url"].startswith("http://127.0.0.1:")
    assert len(load_sweep(tmp_path / "results")) == 2
    assert "1P1D" in format_summary(rd)
