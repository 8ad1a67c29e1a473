"""llm-d Benchmark Report v0.2: export validates against the re-declared schema, import brings reports back as arms."""

import json

import pytest
import yaml

from pdlab.analysis.llmd_export import statistics, validate
from pdlab.analysis.llmd_import import import_reports, read_report
from pdlab.analysis.llmd_schema import schema
from pdlab.analysis.results import load_sweep
from pdlab.core.errors import PdlabError


def _report(version: str = "0.2", *, units: str = "s", rate: float = 2.0, eid: str = "e1", stage: int = 0) -> dict:
    """A minimal report as another tool (llm-d-benchmark's converter) writes it: latencies in seconds."""
    engine = lambda role, n, tp: {  # noqa: E731
        "metadata": {"label": f"vllm-{role}", "cfg_id": "x"},
        "standardized": {"kind": "inference_engine", "tool": "llm-d", "tool_version": "ghcr.io/llm-d/llm-d:0.3",
                         "role": role, "replicas": n, "model": {"name": "Qwen/Qwen3-32B"},
                         "accelerator": {"model": "H100", "count": tp, "parallelism": {"tp": tp}}},
        "native": {"args": {"--tensor-parallel-size": tp}}}
    scale = 1.0 if units == "s" else 1000.0
    return {
        "version": version,
        "run": {"uid": f"u{stage}", "eid": eid, "description": "llm-d 1P2D", "time": {"duration": "PT1M30S"}},
        "scenario": {"stack": [engine("prefill", 1, 4), engine("decode", 2, 2)],
                     "load": {"metadata": {}, "standardized": {"tool": "inference-perf", "tool_version": "0.3",
                                                               "source": "random", "stage": stage, "rate_qps": rate,
                                                               "input_seq_len": {"distribution": "fixed", "value": 1000}},
                              "native": {}}},
        "results": {"request_performance": {"aggregate": {
            "requests": {"total": 100, "failures": 4},
            "latency": {"time_to_first_token": {"units": units, "mean": 0.2 * scale, "p50": 0.15 * scale,
                                                "p99": 0.9 * scale},
                        "time_per_output_token": {"units": f"{units}/token", "mean": 0.03 * scale, "p99": 0.05 * scale}},
            "throughput": {"output_token_rate": {"units": "tokens/s", "mean": 800.0},
                           "request_rate": {"units": "queries/s", "mean": rate * 0.96}}}}},
    }


def test_schema_accepts_a_minimal_report_and_names_the_broken_field():
    validate(_report())
    doc = _report()
    del doc["run"]["uid"]
    with pytest.raises(PdlabError, match=r"field run: 'uid' is a required property"):
        validate(doc, "r.yaml")
    doc = _report()
    doc["results"]["request_performance"]["aggregate"]["latency"]["time_to_first_token"]["units"] = "minutes"
    with pytest.raises(PdlabError, match="time_to_first_token.units"):
        validate(doc)
    doc = _report()
    doc["scenario"]["stack"][0]["standardized"]["role"] = "aggregate"
    with pytest.raises(PdlabError, match="scenario.stack.0"):
        validate(doc)


def test_strict_schema_is_closed_and_lenient_one_takes_v021_additions():
    doc = _report("0.2.1")
    doc["results"]["session_performance"] = {"sessions": 3}  # a v0.2.1 addition
    with pytest.raises(PdlabError, match="session_performance"):
        validate(doc)
    validate(doc, strict=False)
    assert schema()["$comment"].startswith("re-declared by pdlab from https://github.com/llm-d/llm-d-benchmark")


def test_statistics_of_values():
    s = statistics([1.0, 2.0, 3.0, float("nan")], "ms", 10)
    assert s["units"] == "ms" and s["mean"] == 20.0 and s["min"] == 10.0 and s["max"] == 30.0 and s["p50"] == 20.0
    assert statistics([], "ms") is None


def test_import_wrong_version_is_refused_naming_the_file(tmp_path):
    f = tmp_path / "old.yaml"
    f.write_text(yaml.safe_dump(_report("0.1")))
    with pytest.raises(PdlabError, match=r"old\.yaml: field version: '0\.1' is not a supported"):
        read_report(f)
    g = tmp_path / "good.yaml"
    g.write_text(yaml.safe_dump(_report()))
    with pytest.raises(PdlabError, match="old.yaml"):
        import_reports([g, f], tmp_path / "sweep")
    assert not (tmp_path / "sweep").exists()  # nothing half-written


def test_import_groups_stages_into_one_arm_and_converts_units(tmp_path):
    files = []
    for i, (rate, units) in enumerate([(4.0, "ms"), (2.0, "s")]):
        f = tmp_path / f"stage{i}.json"
        f.write_text(json.dumps(_report(units=units, rate=rate, stage=i)))
        files.append(f)
    (rd,) = import_reports(files, tmp_path / "sweep", arm="llm-d 1P2D")
    df = load_sweep(tmp_path / "sweep")
    assert df["run"].unique().tolist() == [rd.name]
    assert df["arm"].unique().tolist() == ["llm-d 1P2D"] and df["ratio"].iloc[0] == "1P2D"
    assert df["gpus"].iloc[0] == 1 * 4 + 2 * 2
    assert sorted(df["rate"]) == [2.0, 4.0]
    assert df["ttft_p50_ms"].round(6).tolist() == [150.0, 150.0]  # 0.15 s and 150 ms alike
    assert df["tpot_p99_ms"].round(6).tolist() == [50.0, 50.0]
    assert df["completed"].tolist() == [96, 96] and df["failed"].tolist() == [4, 4]
    assert df["duration_s"].tolist() == [90.0, 90.0]
    assert df["output_throughput_per_gpu"].iloc[0] == 100.0
    prov = json.loads((rd / "provenance.json").read_text())
    assert prov["imported"]["versions"] == ["0.2"] and len(prov["imported"]["files"]) == 2
