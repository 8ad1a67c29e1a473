"""End to end: a pdlab run exported as llm-d Benchmark Reports, validated, imported back as another arm, and
compared: the imported arm carries the same figures and the compare report renders with both arms."""

import json

import pytest
import yaml

from pdlab.analysis import compare, sweepdata
from pdlab.analysis.llmd_export import validate
from pdlab.cli import main
from pdlab.experiment.loader import experiment_from_dict
from pdlab.measure.run import run_experiment


@pytest.mark.slow
def test_export_validates_and_reimports_into_a_compare_report(tmp_path, capsys):
    exp = experiment_from_dict({
        "name": "rt", "model": {"name": "Qwen3-8B", "path": "/models/Qwen3-8B/"}, "gpu": {"type": "L20"},
        "topology": {"kind": "pd", "prefill": {"replicas": 1, "tp": 1}, "decode": {"replicas": 1, "tp": 1}},
        "emulator": {"time_scale": 0.05},
        "workload": {"dataset": {"input_len": 256, "output_len": 8}, "rates": [5, 10], "duration_s": None,
                     "num_prompts": 8, "warmup": 1, "timeout_s": 30}})
    sweep = tmp_path / "results" / "rt"
    run_experiment(exp, results=tmp_path / "results", run_name="local", progress=False)
    assert main(["export", str(sweep), "--format", "llm-d"]) == 0
    files = capsys.readouterr().out.split()
    assert [f.rsplit("/", 1)[1] for f in files] == ["local-level0.yaml", "local-level1.yaml"]
    docs = [yaml.safe_load(open(f)) for f in files]
    for d in docs:
        validate(json.loads(json.dumps(d)))
        assert d["version"] == "0.2"
        assert [c["standardized"].get("role") for c in d["scenario"]["stack"]] == ["prefill", "decode", None]
    assert [d["scenario"]["load"]["standardized"]["rate_qps"] for d in docs] == [5.0, 10.0]
    assert docs[0]["run"]["eid"] == docs[1]["run"]["eid"] and docs[0]["run"]["uid"] != docs[1]["run"]["uid"]

    assert main(["import", *files, "--into", str(sweep), "--arm", "llm-d copy"]) == 0
    data = sweepdata.load(sweep)
    s = data.summary.set_index(["arm", "rate"]).sort_index()
    assert sorted(s.index.get_level_values("arm").unique()) == ["1P1D (TP1)", "llm-d copy"]
    for col in ("completed", "ttft_p50_ms", "ttft_p99_ms", "tpot_p99_ms", "itl_p95_ms", "e2e_mean_ms",
                "output_throughput", "request_rate", "gpus"):
        mine, theirs = s.loc["1P1D (TP1)", col], s.loc["llm-d copy", col]
        assert (abs(mine - theirs) <= 1e-9 * abs(mine).max()).all(), col
    assert len(compare.key_table(data.summary)) >= 2

    from pdlab.orchestrate.report import render_report

    html = render_report(sweep).read_text()
    assert "llm-d copy" in html and "Traceback" not in html
    assert "Cold start" in html and "router answers" in html  # the local run's cold start, per role
