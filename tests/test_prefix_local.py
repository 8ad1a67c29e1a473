"""End to end (local backend): a shared-prefix run records the cache-hit rate per role in summary.json."""

import json

import pytest

from pdlab.analysis.results import load_sweep
from pdlab.analysis.summary_table import format_summary
from pdlab.experiment.loader import experiment_from_dict
from pdlab.measure.run import run_experiment


@pytest.mark.slow
def test_shared_prefix_run_reports_cache_hits_per_role(tmp_path, monkeypatch):
    monkeypatch.setenv("PDLAB_STATE_DIR", str(tmp_path / "state"))
    exp = experiment_from_dict({
        "name": "gsp", "model": {"name": "Qwen3-8B", "path": "/models/Qwen3-8B/"}, "gpu": {"type": "L20"},
        "topology": {"kind": "pd", "prefill": {"replicas": 1, "tp": 1}, "decode": {"replicas": 1, "tp": 1}},
        "emulator": {"time_scale": 0.05},
        "workload": {"dataset": {"kind": "generated-shared-prefix", "num_groups": 2, "prompts_per_group": 6,
                                 "prefix_len": 1000, "input_len": 32, "output_len": 4},
                     "rates": [10], "duration_s": None, "num_prompts": 12, "warmup": 0, "timeout_s": 30},
    })
    rd = run_experiment(exp, results=tmp_path / "results", run_name="r", progress=False)
    hits = json.loads((rd / "summary.json").read_text())["cache_hit_rate"]
    assert hits["prefill"] > 0.5 and hits["decode"] == 0
    assert "prefix cache hit (cached ÷ prompt tokens): decode 0%, prefill" in format_summary(rd)
    sweep = load_sweep(tmp_path / "results")
    assert sweep["cache_hit_prefill"].iloc[0] == hits["prefill"] and sweep["cache_hit_decode"].iloc[0] == 0
