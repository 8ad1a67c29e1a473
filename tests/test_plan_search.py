"""`pdlab plan` search: the space, bounds, bisection under slo.statistic, the JSON object, --emit, bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from pdlab.cli import main
from pdlab.core.errors import SpecError
from pdlab.emulator.engine import SimRequest, simulate
from pdlab.experiment.loader import load_experiment
from pdlab.experiment.sweepspec import load_sweep
from pdlab.plan.bounds import prefill_seconds_per_request
from pdlab.plan.emit import PREDICTIONS, emit
from pdlab.plan.pareto import frontier
from pdlab.plan.report import usd_per_million
from pdlab.plan.search import TOL, search
from pdlab.plan.simulate import probe, queue_floor, unit_configs
from pdlab.plan.space import Candidate, enumerate_space, fitting_tps
from pdlab.plan.verify import compare

JSON_CONFIG_KEYS = {"kind", "label", "gpus", "prefill_tp", "decode_tp", "max_rate", "output_tok_s_per_gpu",
                    "tok_s_per_user", "ttft_ms", "tpot_ms", "meets_slo"}


@pytest.fixture(scope="module")
def demo_search():
    exp = load_experiment(Path(__file__).resolve().parents[1] / "params" / "demo-local.yaml")
    return exp, search(exp, 2)


def test_space_covers_every_fitting_tp_per_role_and_replicated_groups(params_dir: Path) -> None:
    seed = load_experiment(params_dir / "seed-2p1d.yaml")
    assert fitting_tps(seed) == [2, 4, 8]  # 32B weights do not fit one 48 GB L20 with KV to spare
    space = enumerate_space(seed, 8)
    labels = {c.label for c in space}
    assert {"colocated 4×TP2", "colocated 2×TP4", "colocated 1×TP8", "2×(1P1D) (TP2)", "1P2D (TP4/2)",
            "2P1D (TP2/4)", "3P1D (TP2)"} <= labels
    assert all(c.gpus <= 8 and c.unit_gpus * (c.replicas + 1) > 8 for c in space)
    assert all(math.gcd(c.prefill, c.decode) == 1 for c in space if c.kind == "pd")  # 2P2D is 2×(1P1D)
    assert len(labels) == len(space)


def test_coalesced_decode_steps_give_the_same_timings(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "demo-local.yaml")
    reqs = [SimRequest(0.3 * i, 500 + 97 * (i % 7), 20 + 13 * (i % 5)) for i in range(60)]
    for c in (Candidate("colocated", 1, 1), Candidate("pd", 2, 1, 1, 1), Candidate("colocated", 1, 1, cap=4)):
        p, d = unit_configs(exp, c)
        kw = {"prefill_workers": c.prefill, "decode_workers": c.decode, "decode_config": d} if c.kind == "pd" else {}
        exact = simulate(reqs, p, coalesce=False, **kw)
        assert simulate(reqs, p, **kw) == exact and len(exact) == 60


def test_simulate_stops_when_asked(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "demo-local.yaml")
    reqs = [SimRequest(0.5 * i, 1000, 10 + 5 * i) for i in range(100)]
    p, _ = unit_configs(exp, Candidate("colocated", 1, 1))
    part = simulate(reqs, p, stop=lambda now, done: len(done) >= 10, check_every=1)
    assert 10 <= len(part) < 100


def test_max_rate_meets_the_slo_and_a_bit_more_does_not(demo_search) -> None:
    exp, s = demo_search
    assert s.considered == len(s.results) + s.pruned + len(s.infeasible)
    ok = [r for r in s.results if r.meets]
    assert {r.candidate.kind for r in ok} == {"pd", "colocated"}
    for r in ok:
        assert r.best.meets and r.max_rate <= r.bound.rate
        above = r.max_rate * (1 + 2 * TOL)
        if above < r.bound.rate:
            assert not probe(exp, r.candidate, unit_configs(exp, r.candidate), above).meets


def test_steady_state_prefill_queue_floor_rejects_near_saturation(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "demo-local.yaml", ["slo.statistic=mean"])
    c = Candidate("pd", 1, 1, 1, 1)
    cfg = unit_configs(exp, c)
    t = prefill_seconds_per_request(cfg[0], exp.workload.dataset.input_len)
    rhos, floors = zip(*(queue_floor(exp, c, cfg[0], r / t) for r in (0.3, 0.6, 0.9, 0.99)), strict=True)
    assert list(floors) == sorted(floors) and floors[0] >= t and rhos[-1] == pytest.approx(0.99)
    assert math.isinf(queue_floor(exp, c, cfg[0], 1.01 / t)[1])
    p = probe(exp, c, cfg, 0.99 / t)
    assert not p.meets and "prefill queue" in p.why


def test_tail_statistic_allows_less_than_the_mean(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "demo-local.yaml", ["slo.statistic=mean"])
    c = Candidate("colocated", 1, 1, replicas=2)
    cfg = unit_configs(exp, c)
    mean = search(exp, 2).results
    best_mean = max(r.max_rate for r in mean if r.candidate == c)
    p99 = load_experiment(params_dir / "demo-local.yaml", ["slo.statistic=p99"])
    assert probe(exp, c, cfg, best_mean).meets
    assert not probe(p99, c, cfg, best_mean).meets  # the tail is worse than the mean at the mean's knee


def test_json_has_the_issue_keys_and_a_consistent_verdict(params_dir: Path, capsys) -> None:
    rc = main(["plan", str(params_dir / "demo-local.yaml"), "--budget", "2", "--json",
               "--set", "cost.gpu_hour_usd=2.5"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert {"configs", "best_pd", "best_colocated", "verdict", "seconds"} <= set(out)
    assert all(JSON_CONFIG_KEYS <= set(c) for c in out["configs"])
    pd_, col = out["best_pd"], out["best_colocated"]
    assert pd_["kind"] == "pd" and col["kind"] == "colocated"
    winner = "PD" if pd_["output_tok_s_per_gpu"] >= col["output_tok_s_per_gpu"] else "colocated"
    assert out["verdict"].startswith(winner)
    tok = [c["output_tok_s_per_gpu"] for c in out["configs"]]
    assert tok == sorted(tok, reverse=True)
    assert col["usd_per_million_tokens"] == pytest.approx(usd_per_million(col["output_tok_s_per_gpu"], 2.5), rel=1e-2)
    assert usd_per_million(100.0, 5.0) == pytest.approx(2 * usd_per_million(100.0, 2.5))


def test_pareto_frontier_keeps_only_undominated_points() -> None:
    pts = [{"tok_s_per_user": u, "output_tok_s_per_gpu": g} for u, g in [(10, 100), (20, 80), (15, 70), (30, 20),
                                                                          (25, 20), (10, 90)]]
    front = frontier(pts)
    for p in pts:
        dominated = any(q["tok_s_per_user"] >= p["tok_s_per_user"] and q["output_tok_s_per_gpu"] >=
                        p["output_tok_s_per_gpu"] and q is not p for q in pts)
        assert (p in front) != dominated


def test_recommendation_text(params_dir: Path, capsys) -> None:
    assert main(["plan", str(params_dir / "demo-local.yaml"), "--budget", "2"]) == 0
    out = capsys.readouterr().out
    assert "Verdict:" in out and "configurations considered" in out and "pruned" in out


def test_unmeetable_slo_is_an_answer_naming_the_closest_miss(params_dir: Path, capsys) -> None:
    rc = main(["plan", str(params_dir / "demo-local.yaml"), "--budget", "2", "--set", "slo.tpot_ms=12"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "No configuration meets the SLO. Closest miss:" in out
    rc = main(["plan", str(params_dir / "demo-local.yaml"), "--budget", "2", "--json", "--set", "slo.ttft_ms=1"])
    got = json.loads(capsys.readouterr().out)
    assert rc == 0 and got["verdict"] == "no configuration meets the SLO" and got["closest_miss"]["label"]


@pytest.mark.parametrize(("args", "field"), [
    (["--budget", "3"], "--budget"),  # no TP that fits Qwen3-32B on L20 (2, 4, 8) divides 3
    (["--set", "gpu.per_node=1", "--set", "gpu.nodes=3", "--set", "topology.prefill.tp=1",
      "--set", "topology.decode.tp=1"], "gpu.type"),
    (["--set", "slo.statistic=p95"], "slo.statistic"),
    (["--set", "slo.attainment=0"], "slo.attainment"),
    (["--set", "slo.attainment=1.2"], "slo.attainment"),
])
def test_bad_input_names_the_field_and_the_fix(params_dir: Path, capsys, args: list[str], field: str) -> None:
    rc = main(["plan", str(params_dir / "seed-2p1d.yaml"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and field in err and "Traceback" not in err
    assert any(w in err for w in ("use", "give", "drop", "add"))


@pytest.mark.parametrize("budget", ["-1", "0", "1", "3"])
def test_search_budgets_answer_or_refuse_cleanly(params_dir: Path, tmp_path: Path, capsys, budget: str) -> None:
    csv = tmp_path / "out" / "plan.csv"
    rc = main(["plan", str(params_dir / "demo-local.yaml"), "--budget", budget, "--csv", str(csv)])
    err = capsys.readouterr().err
    assert rc in (0, 2) and "Traceback" not in err
    assert csv.exists() == (rc == 0)
    if rc == 2:
        assert "--budget" in err
    else:
        assert csv.read_text().startswith("kind,")


def test_emit_writes_a_sweep_that_loads_with_predictions_per_run(demo_search, tmp_path: Path) -> None:
    exp, s = demo_search
    paths = emit(exp, s, tmp_path / "plan")
    assert [p.name for p in paths] == ["params.yaml", "sweep.yaml", PREDICTIONS]
    sw = load_sweep(tmp_path / "plan" / "sweep.yaml")
    pred = json.loads((tmp_path / "plan" / PREDICTIONS).read_text())
    assert {p.run for p in sw.points} == set(pred["runs"])
    best = max((r for r in s.results if r.meets), key=lambda r: r.tok_s_per_gpu)
    base = next(p for p in sw.points if p.run == "base")
    assert base.arm.split(" ")[0] in best.candidate.label or best.candidate.label.startswith(base.arm.split(" ")[0])
    for p in sw.points:
        rates = p.experiment.workload.rates
        knee = pred["runs"][p.run]["max_rate"]
        assert min(rates) < knee <= max(rates) * 1.0001
        assert [lv["rate"] for lv in pred["runs"][p.run]["levels"]] == rates
    assert {"colocated", "pd"} <= {p.experiment.topology.kind for p in sw.points}


def test_emit_refuses_when_nothing_meets_the_slo(params_dir: Path, tmp_path: Path) -> None:
    exp = load_experiment(params_dir / "demo-local.yaml", ["slo.ttft_ms=1"])
    with pytest.raises(SpecError, match="nothing to emit"):
        emit(exp, search(exp, 2), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_predicted_vs_measured_joins_runs_and_rates() -> None:
    pred = {"runs": {"base": {"arm": "colocated 1×TP2", "levels": [
        {"rate": 1.0, "ttft_mean_ms": 110.0, "output_tok_s_per_gpu": 60.0},
        {"rate": 2.0, "ttft_mean_ms": 150.0, "output_tok_s_per_gpu": 120.0}]}}}
    summary = pd.DataFrame({"run": ["base", "base", "other"], "level_value": [1.0, 3.0, 1.0],
                            "ttft_mean_ms": [100.0, 300.0, 1.0], "output_throughput_per_gpu": [50.0, 1.0, 1.0]})
    t = compare(pred, summary).set_index(["rate", "figure"])
    assert t.loc[(1.0, "ttft_mean_ms"), "error"] == pytest.approx(110 / 100 - 1)
    assert t.loc[(1.0, "output_tok_s_per_gpu"), "measured"] == 50.0
    assert math.isnan(t.loc[(2.0, "ttft_mean_ms"), "measured"])  # not measured at that rate


@pytest.mark.slow
def test_emit_then_sweep_gives_predicted_vs_measured(params_dir: Path, tmp_path: Path, monkeypatch) -> None:
    from pdlab.orchestrate.sweep import run_sweep
    from pdlab.plan.verify import plan_for_sweep, predicted_vs_measured

    monkeypatch.chdir(tmp_path)
    rc = main(["plan", str(params_dir / "demo-local.yaml"), "--budget", "2", "--emit", "plan",
               "--set", "workload.duration_s=8"])
    assert rc == 0
    assert run_sweep("plan/sweep.yaml", results="res") == 0
    sweep_dir = tmp_path / "res" / "plan-demo"
    table = predicted_vs_measured(sweep_dir)
    runs = set(json.loads((tmp_path / "plan" / PREDICTIONS).read_text())["runs"])
    assert set(table["run"]) == runs and table["measured"].notna().all() and table["predicted"].notna().all()
    ttft = table[table["figure"] == "ttft_mean_ms"]
    assert (ttft["error"].abs() < 1.0).all()  # the same engine and perf model: within 2× at every level
    assert plan_for_sweep(sweep_dir)["best_pd"]["kind"] == "pd"
