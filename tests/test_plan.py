"""Rate-curve planning: arms at equal GPU count, engine configs from the real argument lists, PD vs colocated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pdlab.cli import main
from pdlab.experiment.loader import load_experiment
from pdlab.experiment.topology import build
from pdlab.plan.planner import arms, best_per_rate, engine_config, format_plan, plan


@pytest.fixture
def demo(params_dir: Path):
    return load_experiment(params_dir / "demo-local.yaml", ["workload.rates=[2,6]", "workload.duration_s=30"])


def test_arms_are_every_ratio_plus_the_equal_gpu_baseline(params_dir: Path) -> None:
    seed = load_experiment(params_dir / "seed-2p1d.yaml")
    labels = [a.topology.label for a in arms(seed)]
    assert labels == ["1P2D", "2P1D", "colocated-3x"]
    assert {build(a).gpus for a in arms(seed)} == {6}
    assert [a.topology.label for a in arms(seed, budget=8)] == ["1P3D", "2P2D", "3P1D", "colocated-4x"]


def test_engine_config_comes_from_the_worker_argument_list(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "seed-2p1d.yaml", ["engine_args={chunked-prefill-size: 2048, "
                                                          "mem-fraction-static: 0.8}"])
    cfg = engine_config(exp, "prefill")
    assert cfg.mode == "prefill" and cfg.tp == 2
    assert cfg.chunked_prefill_size == 2048 and cfg.mem_fraction_static == 0.8
    assert cfg.model.name == "Qwen3-32B" and cfg.gpu.name == "L20"
    assert engine_config(exp, "decode").mode == "decode"


def test_plan_is_deterministic_and_shows_the_pd_effect(demo) -> None:
    table = plan(demo, budget=4)
    assert len(table) == 4 * 2 and set(table["gpus"]) == {4}
    assert table.equals(plan(demo, budget=4))  # seeded, virtual time: the same answer every time
    high = table[table["rate"] == 6].set_index("arm")
    # prefill interference: colocated decodes stall behind prefills, PD decode workers never do
    assert high.loc["colocated 4×TP1", "tpot_p99_ms"] > 1.5 * high.loc["3P1D (TP1)", "tpot_p99_ms"]
    # one prefill instance cannot keep up with 6 req/s of 2k-token prompts: its queue grows
    assert high.loc["1P3D (TP1)", "ttft_p50_ms"] > 10 * high.loc["3P1D (TP1)", "ttft_p50_ms"]
    best = best_per_rate(table).set_index("rate")
    ok = table[table["meets_slo"]]
    for rate in (2.0, 6.0):
        at = ok[ok["rate"] == rate].set_index("arm")
        assert best.loc[rate, "arm"] == (at["goodput_per_gpu"].idxmax() if len(at) else None)
    assert not table[table["collapsed"]]["meets_slo"].any()
    text = format_plan(table)
    assert "emulated, virtual time" in text
    marked = len(re.findall(r"^\s*[\d.]+ \*", text, re.M))
    assert marked == best["arm"].notna().sum()  # a winner only where some arm meets the SLO


def test_rate_curve_never_marks_a_collapsed_or_slo_missing_arm_best(demo) -> None:
    table = plan(demo, budget=4, rates=[40.0])  # far beyond every arm's capacity
    assert table["collapsed"].all() and not table["meets_slo"].any()
    assert best_per_rate(table)["arm"].isna().all()
    text = format_plan(table)
    assert "no arm meets the SLO at this rate" in text and not re.search(r"^\s*[\d.]+ \*", text, re.M)


def test_cli_plan_and_its_errors(params_dir: Path, capsys, tmp_path: Path) -> None:
    out = tmp_path / "plan.csv"
    rc = main(["plan", str(params_dir / "demo-local.yaml"), "--rate-curve", "--budget", "2", "--set",
               "workload.rates=[1]", "--set", "workload.duration_s=10", "--csv", str(out)])
    assert rc == 0
    assert "1P1D (TP1)" in capsys.readouterr().out and out.read_text().startswith("arm,")
    rc = main(["plan", str(params_dir / "demo-local.yaml"), "--rate-curve", "--set", "workload.concurrencies=[4]",
                "--set", "workload.rates=null"])
    assert rc == 2 and "workload.rates" in capsys.readouterr().err
    rc = main(["plan", str(params_dir / "demo-local.yaml"), "--rate-curve", "--budget", "3", "--tp", "2"])
    assert rc == 2 and "--budget" in capsys.readouterr().err
