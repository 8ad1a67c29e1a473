"""`pdlab calibrate --from-run`: emulated workers run with a GPU profile perturbed by factors the test hides;
fitting from the default profile recovers them within 5%, and reports its residuals."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest

from pdlab.calibrate.fromrun import Deployment, Observed, fit, replay, scale_profile
from pdlab.calibrate.profile import write_profile
from pdlab.cli import main
from pdlab.core.schema import INCOMPLETE, SERVER_METRICS, SUMMARY
from pdlab.emulator.engine import EngineConfig
from pdlab.experiment.loader import experiment_from_dict
from pdlab.experiment.profiles import gpu, load_gpu_profile, model
from pdlab.measure.run import run_experiment


def _hidden(seed: int) -> tuple[float, float]:
    rng = random.Random(seed)
    return rng.uniform(0.75, 1.25), rng.uniform(0.75, 1.25)


def test_fit_recovers_hidden_factors_from_emulated_workers_in_virtual_time() -> None:
    prefill, decode = _hidden(7)
    cfg = EngineConfig(model=model("Qwen3-32B"), gpu=gpu("H100"), tp=2)
    deployment = Deployment(cfg, workers=1)
    rng = random.Random(3)
    t, reqs = 0.0, []
    for rate, n in ((0.5, 15), (4.0, 40)):  # light and heavy load: batch sizes from 1 to tens
        for _ in range(n):
            t += rng.expovariate(rate)
            reqs.append(Observed(t, rng.randint(500, 4000), rng.randint(16, 128), 0.0, None))
    truth = replay(reqs, deployment, scale_profile(gpu("H100"), prefill=prefill, decode=decode))
    observed = [Observed(x.arrival, x.prompt_tokens, x.output_tokens, x.ttft, x.tpot) for x in truth]
    result = fit(observed, deployment, fit_overhead=False)
    assert result.prefill == pytest.approx(prefill, rel=0.05)
    assert result.decode == pytest.approx(decode, rel=0.05)
    assert abs(result.residuals["tpot_median"]) < 0.05 and result.residuals["tpot_requests"] == len(observed)


def _exp(tmp_path: Path, profile: Path, **workload) -> dict:
    return {"name": "fromrun", "model": {"name": "Qwen3-8B", "path": "/models/Qwen3-8B/"},
            "gpu": {"type": "H100", "profile": str(profile)},
            "topology": {"kind": "colocated", "worker": {"replicas": 1, "tp": 1}},
            "emulator": {"time_scale": 4.0},  # modelled time × 4: the emulator's own ms per request weigh a quarter
            "workload": {"dataset": {"input_len": 3000, "output_len": 32, "range_ratio": 0.5},
                         "rates": [1, 4], "duration_s": None, "num_prompts": 14, "warmup": 1, "timeout_s": 60,
                         **workload}}


@pytest.mark.slow
def test_from_run_recovers_hidden_factors_of_emulated_workers(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PDLAB_STATE_DIR", str(tmp_path / "state"))
    prefill, decode = _hidden(11)
    perturbed = tmp_path / "perturbed.yaml"
    write_profile(perturbed, scale_profile(gpu("H100"), prefill=prefill, decode=decode))
    rd = run_experiment(experiment_from_dict(_exp(tmp_path, perturbed)), results=tmp_path / "results",
                        run_name="r", progress=False)
    named = json.loads((rd / SUMMARY).read_text())["gpu_profile"]  # the run names the profile it used
    assert named["file"] == str(perturbed) and named["provenance"]["kind"] == "calibrated"
    assert "NVIDIA H100" in named["describe"]
    assert json.loads((rd / "provenance.json").read_text())["backend"]["gpu_profile"] == named
    out = tmp_path / "fitted.yaml"
    assert main(["calibrate", "--from-run", str(rd), "--base", "H100", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    fitted = load_gpu_profile(out, "Qwen3-8B")
    h100 = gpu("H100").at_tp(1)
    got_prefill = fitted.at_tp(1).prefill[1024] / h100.prefill[1024]
    got_decode = fitted.at_tp(1).decode_weights[1] / h100.decode_weights[1]
    assert got_prefill == pytest.approx(prefill, rel=0.05), (got_prefill, got_decode, fitted.provenance.residuals)
    assert got_decode == pytest.approx(decode, rel=0.05)
    res = fitted.provenance.residuals
    assert fitted.provenance.kind == "fitted" and {"ttft_median", "tpot_median", "running_batch_scraped_mean"} <= set(res)
    assert "residuals" in printed and "tpot_median" in printed


def _fake_run(tmp_path: Path, complete: bool, metrics: bool) -> Path:
    """A run directory as `pdlab run` leaves it, from a params file and hand-made records."""
    from pdlab.core.schema import REQUEST_SCHEMA
    from pdlab.experiment.spec import resolved
    from pdlab.measure.writer import RunWriter

    exp = experiment_from_dict(_exp(tmp_path, tmp_path / "p.yaml"))
    rd = tmp_path / "results" / "run"
    w = RunWriter(rd)
    w.begin(resolved(exp))
    rows = REQUEST_SCHEMA.empty_table().to_pandas()
    pd.DataFrame(rows).to_parquet(rd / "requests.parquet")
    if metrics:
        pd.DataFrame({"time": [1.0], "t": [1.0], "name": ["w0"], "role": ["worker"],
                      "metric": ["sglang:num_running_reqs"], "labels": ["{}"], "value": [1.0]}
                     ).to_parquet(rd / SERVER_METRICS)
    if complete:
        (rd / SUMMARY).write_text('{"levels": [], "complete": true}')
    else:
        (rd / INCOMPLETE).write_text('{"reason": "interrupted (Ctrl-C)"}')
    return rd


@pytest.mark.parametrize("complete, metrics, needle", [
    (False, True, "the run is incomplete (interrupted (Ctrl-C))"),
    (True, False, "no server metrics"),
])
def test_from_run_refuses_incomplete_runs_and_runs_without_metrics(tmp_path: Path, capsys, complete, metrics,
                                                                    needle) -> None:
    write_profile(tmp_path / "p.yaml", gpu("H100"))
    rd = _fake_run(tmp_path, complete, metrics)
    out = tmp_path / "fitted.yaml"
    assert main(["calibrate", "--from-run", str(rd), "--out", str(out)]) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_fit_recovers_hidden_factors_of_a_pd_deployment() -> None:
    from dataclasses import replace

    prefill, decode = _hidden(23)
    cfg = EngineConfig(model=model("Qwen3-32B"), gpu=gpu("H100"), tp=2)
    deployment = Deployment(replace(cfg, mode="prefill"), workers=0, prefill_workers=1, decode_workers=1,
                            decode_config=replace(cfg, mode="decode"))
    rng = random.Random(4)
    t, reqs = 0.0, []
    for rate, n in ((0.5, 12), (4.0, 30)):
        for _ in range(n):
            t += rng.expovariate(rate)
            reqs.append(Observed(t, rng.randint(500, 4000), rng.randint(16, 128), 0.0, None))
    truth = replay(reqs, deployment, scale_profile(gpu("H100"), prefill=prefill, decode=decode))
    result = fit([Observed(x.arrival, x.prompt_tokens, x.output_tokens, x.ttft, x.tpot) for x in truth], deployment)
    assert result.prefill == pytest.approx(prefill, rel=0.05)
    assert result.decode == pytest.approx(decode, rel=0.05)
