"""`pdlab calibrate`: profile files (provenance, bad input), the CLI without CUDA, --from-raw, and plans that
change with a calibrated profile; the torch measuring code on CPU with a tiny model where torch is installed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pdlab.calibrate.fromrun import scale_profile
from pdlab.calibrate.profile import calibrated_profile, write_profile
from pdlab.cli import main
from pdlab.core.errors import SpecError
from pdlab.experiment.loader import load_experiment
from pdlab.experiment.profiles import gpu, load_gpu_profile
from pdlab.plan.planner import engine_config, plan

ROOT = Path(__file__).resolve().parents[1]
RAW_H200 = ROOT / "benchmarks/data/calibration/h200-qwen3-32b.json"
TINY = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 16, "intermediate_size": 128, "vocab_size": 256}


def test_calibrated_profile_round_trips_with_provenance(tmp_path: Path) -> None:
    prof = calibrated_profile(json.loads(RAW_H200.read_text()), raw_path=str(RAW_H200), command="pdlab calibrate x")
    path = tmp_path / "h200.yaml"
    write_profile(path, prof)
    back = load_gpu_profile(path, "Qwen3-32B")
    assert back == prof
    p = back.provenance
    assert p.kind == "calibrated" and p.gpu_name == "NVIDIA H200" and p.driver and p.torch and p.date
    assert p.command == "pdlab calibrate x" and p.model == "Qwen3-32B"
    assert back.interconnect.kind.endswith("(one-shot + NCCL, measured)")  # two GPUs: both all-reduces timed
    assert back.memory_bytes == pytest.approx(150109880320, rel=1e-3)  # from torch, not the datasheet
    assert set(back.efficiency) == {1, 2} and back.efficiency[2].prefill[8192] < 1
    assert "NVIDIA H200" in back.describe() and "calibrated" in back.describe()


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read GPU profile"),
    ("gpu: [unclosed", "not valid YAML"),
    ("name: x\n", "not a GPU profile"),
    ("gpu: {name: x, memory_gb: -1}\n", "gpu."),
])
def test_bad_profile_files_name_file_and_field(tmp_path: Path, content: str | None, needle: str) -> None:
    path = tmp_path / "p.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SpecError) as err:
        load_gpu_profile(path)
    assert needle in err.value.message and err.value.file == str(path)


def test_profile_for_another_model_is_refused_in_the_params_file(tmp_path: Path, params_dir: Path) -> None:
    path = tmp_path / "h200.yaml"
    write_profile(path, calibrated_profile(json.loads(RAW_H200.read_text())))
    with pytest.raises(SpecError, match="calibrated for Qwen3-32B, not Qwen3-8B") as err:
        load_experiment(params_dir / "demo-local.yaml", [f"gpu.profile={path}"])
    assert err.value.field == "gpu"
    with pytest.raises(SpecError, match="cannot read GPU profile") as err:
        load_experiment(params_dir / "demo-local.yaml", [f"gpu.profile={tmp_path / 'missing.yaml'}"])
    assert err.value.field == "gpu.profile"


def test_calibrate_without_cuda_says_what_is_needed_and_writes_nothing(tmp_path: Path, capsys) -> None:
    try:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a CUDA GPU")
    except ImportError:
        pass
    out = tmp_path / "gpu.yaml"
    assert main(["calibrate", "--model", "Qwen3-8B", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "PyTorch on a CUDA GPU" in err and "--backend k8s" in err and "--from-run" in err
    assert list(tmp_path.iterdir()) == []


def test_from_raw_writes_a_profile_that_predicts_the_raw_rows(tmp_path: Path, capsys) -> None:
    out = tmp_path / "h200.yaml"
    assert main(["calibrate", "--from-raw", str(RAW_H200), "--out", str(out), "--name", "H200-mine"]) == 0
    assert "wrote" in capsys.readouterr().out
    prof = load_gpu_profile(out)
    assert prof.name == "H200-mine" and prof.provenance.raw == str(RAW_H200)
    assert prof.provenance.residuals["tp2_decode_max"] < 0.05  # the fit, without the all-reduce rows


def test_from_raw_on_garbage_is_a_clear_error(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "raw.json"
    bad.write_text("{not json")
    assert main(["calibrate", "--from-raw", str(bad), "--out", str(tmp_path / "o.yaml")]) == 2
    assert "cannot read raw measurements" in capsys.readouterr().err
    assert not (tmp_path / "o.yaml").exists()


def test_a_calibrated_profile_changes_the_plan(tmp_path: Path, params_dir: Path) -> None:
    overrides = ["workload.rates=[2]", "workload.duration_s=20", "gpu.type=H100", "model.name=Qwen3-32B",
                 "model.path=/models/Qwen3-32B/", "topology.prefill.tp=2", "topology.decode.tp=2",
                 "slo.tpot_ms=1000", "slo.ttft_ms=100000"]
    base = load_experiment(params_dir / "demo-local.yaml", overrides)
    slow = scale_profile(gpu("H100"), prefill=0.5, decode=0.5)
    path = tmp_path / "slow-h100.yaml"
    write_profile(path, slow.model_copy(update={"name": "H100-slow"}))
    calibrated = load_experiment(params_dir / "demo-local.yaml", overrides + [f"gpu.profile={path}"])
    assert engine_config(calibrated, "decode").gpu.name == "H100-slow"
    a, b = plan(base, budget=4), plan(calibrated, budget=4)
    assert list(a["arm"]) == list(b["arm"])
    ratio = (b["tpot_p50_ms"] / a["tpot_p50_ms"]).to_numpy()
    # decode at half the efficiency: about twice as slow (colocated a little more: its prefills slow down too)
    assert ((ratio > 1.6) & (ratio < 2.5)).all(), ratio
    assert (b["ttft_p50_ms"] > 1.5 * a["ttft_p50_ms"]).all()


def test_measuring_code_on_cpu_with_a_tiny_model() -> None:
    pytest.importorskip("torch", reason="torch is not installed here (it is not a pdlab dependency)")
    from pdlab.calibrate.measure import measure

    doc = measure(TINY, 2, layers=1, reps=2, prefill_tokens=[8, 32], batches=[1, 4], contexts=[16, 64],
                  device="cpu", model="tiny")
    assert doc["tp"] == 2 and doc["allreduce_measured"] is False and doc["environment"]["gpu_name"] == "cpu"
    phases = {(r["phase"], r["tokens"], r["context"]) for r in doc["rows"]}
    assert phases == {("prefill", 8, 0), ("prefill", 32, 0), ("decode", 1, 16), ("decode", 4, 16),
                      ("decode", 1, 64), ("decode", 4, 64)}
    assert all(r["seconds"] > 0 for r in doc["rows"])
    json.dumps(doc)  # the raw document is plain JSON


def test_gpus_yaml_profiles_all_carry_provenance() -> None:
    doc = yaml.safe_load((ROOT / "pdlab/experiment/profiles/gpus.yaml").read_text())
    for name, entry in doc.items():
        assert entry["provenance"]["kind"] in ("datasheet", "calibrated"), name


def test_sweep_tables_and_the_index_name_each_runs_gpu_profile(tmp_path: Path) -> None:
    from pdlab.analysis.results import run_columns
    from pdlab.orchestrate.report import _gpu_profile

    described = gpu("H200").describe()
    assert run_columns({"gpu": {"type": "H200"}}, {"gpu_profile": {"describe": described}})["gpu_profile"] == described
    assert run_columns({"gpu": {"type": "L20", "profile": "l20.yaml"}})["gpu_profile"] == "l20.yaml"
    (tmp_path / "summary.json").write_text(json.dumps({"gpu_profile": {"describe": described}}))
    assert _gpu_profile(tmp_path) == described


def test_fit_recovers_the_efficiencies_that_generated_the_times() -> None:
    from pdlab.calibrate.fit import fit_tp
    from pdlab.emulator import perfmodel as pm
    from pdlab.experiment.profiles import model

    m, truth = model("Qwen3-8B"), gpu("H200")
    rows = []
    for t in (256, 1024, 4096):
        rows.append({"phase": "prefill", "tokens": t, "context": 0, "batch": 1, "allreduce": False,
                     "seconds": pm.step_time(m, truth, 1, prefill=[(t, 0)], overhead_s=0.0).total_s})
    for b in (1, 8, 64):
        for c in (1024, 4096, 8192):
            rows.append({"phase": "decode", "tokens": b, "context": c, "batch": b, "allreduce": False,
                         "seconds": pm.step_time(m, truth, 1, decode=[c] * b, overhead_s=0.0).total_s})
    raw = {"model": "Qwen3-8B", "tp": 1, "shape": m.model_dump(include=set(TINY)), "rows": rows}
    eff, res = fit_tp(raw, truth)
    want = truth.at_tp(1)
    for b in (1, 8, 64):
        assert eff.decode_weights[b] == pytest.approx(pm.decode_weight_efficiency(truth, b), rel=2e-3)
        assert eff.decode_kv[b] == pytest.approx(pm.decode_kv_efficiency(truth, b), rel=2e-3)
    assert eff.prefill[1024] == pytest.approx(want.prefill[1024], rel=1e-3)
    assert res["tp1_decode_max"] < 1e-3


def test_fit_holds_kv_efficiency_at_the_hbm_peak_when_context_costs_nothing() -> None:
    """Decode times flat in context (latency-bound attention at batch 1) must not fit as KV read faster than HBM."""
    from pdlab.calibrate.fit import fit_tp
    from pdlab.emulator import perfmodel as pm
    from pdlab.experiment.profiles import model

    m, g = model("Qwen3-8B"), gpu("H200")
    rows = [{"phase": "prefill", "tokens": 1024, "context": 0, "batch": 1, "allreduce": False, "seconds": 0.02}]
    flat = {1024: 5.00e-3, 2048: 5.01e-3, 4096: 4.99e-3, 8192: 5.02e-3}  # within noise of each other
    rows += [{"phase": "decode", "tokens": 1, "context": c, "batch": 1, "allreduce": False, "seconds": s}
             for c, s in flat.items()]
    raw = {"model": "Qwen3-8B", "tp": 1, "shape": m.model_dump(include=set(TINY)), "rows": rows}
    eff, res = fit_tp(raw, g)
    assert eff.decode_kv[1] == 1.0
    assert 0 < eff.decode_weights[1] < 1
    assert res["tp1_decode_max"] < 0.05  # the held fit still predicts the flat rows
    weights = pm.weight_bytes_per_gpu(m, 1) / (g.mem_bw_gbps * 1e9 * eff.decode_weights[1])
    assert weights == pytest.approx(5.0e-3, rel=0.05)  # the flat time is weight reads (and fixed costs)


def test_profile_says_how_its_raw_measurements_were_taken() -> None:
    raws = json.loads(RAW_H200.read_text())
    prof = calibrated_profile(raws)
    assert "fused by torch.compile" in prof.provenance.summary and "from idle" in prof.provenance.summary
    assert prof.interconnect.kind.endswith("(one-shot + NCCL, measured)")
    first_method = [{k: v for k, v in r.items() if k not in ("kernels", "allreduce_impl")} for r in raws]
    for r in first_method:
        r["rows"] = [{k: v for k, v in row.items() if k != "seconds_boost"} for row in r["rows"]]
    prof = calibrated_profile(first_method)  # raw/1 documents: eager ops, NCCL only, back-to-back prefill only
    assert "eager kernels" in prof.provenance.summary and prof.interconnect.kind.endswith("(NCCL, measured)")
    assert "from idle" not in prof.provenance.summary


def test_fit_keeps_prefill_from_idle_and_the_decode_steps_allreduce_apart() -> None:
    """seconds_boost rows give prefill_boost; all-reduces inside decode steps get their own per-call table."""
    from pdlab.calibrate.fit import fit_allreduce, fit_tp
    from pdlab.emulator import perfmodel as pm
    from pdlab.experiment.profiles import model

    m, g = model("Qwen3-8B"), gpu("H200")
    calls = 2 * m.num_hidden_layers

    def per_call(tokens: int) -> float:  # 8 µs + the message at 200 GB/s
        return 8e-6 + tokens * m.hidden_size * m.dtype_bytes / 200e9

    rows = []
    for t in (128, 256, 1024):
        s = pm.step_time(m, g, 2, prefill=[(t, 0)], overhead_s=0.0, allreduce=False).total_s
        rows.append({"phase": "prefill", "tokens": t, "context": 0, "batch": 1, "allreduce": False, "seconds": s,
                     "seconds_boost": s / 1.15})
        rows.append({"phase": "prefill", "tokens": t, "context": 0, "batch": 1, "allreduce": True,
                     "seconds": s + calls * per_call(t)})
    for b in (16, 64, 128, 256):
        for c in (1024, 4096):
            s = pm.step_time(m, g, 2, decode=[c] * b, overhead_s=0.0, allreduce=False).total_s
            rows.append({"phase": "decode", "tokens": b, "context": c, "batch": b, "allreduce": False, "seconds": s})
            rows.append({"phase": "decode", "tokens": b, "context": c, "batch": b, "allreduce": True,
                         "seconds": s + calls * (per_call(b) + 10e-6)})  # + waiting for the other rank
    raw = {"model": "Qwen3-8B", "tp": 2, "shape": m.model_dump(include=set(TINY)), "rows": rows,
           "allreduce_impl": "one-shot (symmetric memory) up to 5242880 bytes, NCCL above"}
    eff, _ = fit_tp(raw, g)
    for t in (256, 1024):
        assert eff.prefill_boost[t] == pytest.approx(eff.prefill[t] * 1.15, rel=1e-3)
    ic = fit_allreduce(raw, "nvlink")
    size = 128 * m.hidden_size * m.dtype_bytes  # both phases measured at 128 tokens
    assert ic.allreduce_us[size] == pytest.approx(per_call(128) * 1e6, abs=0.01)
    assert ic.allreduce_decode_us[size] == pytest.approx(per_call(128) * 1e6 + 10, abs=0.01)
    del raw["rows"][0]["seconds_boost"], raw["rows"][2]["seconds_boost"], raw["rows"][4]["seconds_boost"]
    assert fit_tp(raw, g)[0].prefill_boost is None  # raw documents from before: no boost table
