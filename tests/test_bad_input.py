"""Issue 16: every malformed input is exit code 2 and one message naming the file, the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pdlab.cli import main
from pdlab.experiment.commands import worker_args
from pdlab.experiment.loader import load_experiment
from pdlab.experiment.spec import MAX_RATE, MAX_SECONDS
from pdlab.experiment.topology import build

COMMANDS = ["validate", "manifests", "plan", "run", "deploy"]


def _err(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    return err


@pytest.mark.parametrize("cmd", COMMANDS)
def test_params_file_that_is_not_utf8(cmd: str, tmp_path: Path, capsys) -> None:
    f = tmp_path / "latin1.yaml"
    f.write_bytes("name: démo\n".encode("latin-1"))
    err = _err(capsys, [cmd, str(f)])
    assert str(f) in err and "not UTF-8" in err and "save it as UTF-8" in err


@pytest.mark.parametrize("cmd", COMMANDS)
def test_params_path_that_is_a_directory(cmd: str, tmp_path: Path, capsys) -> None:
    err = _err(capsys, [cmd, str(tmp_path)])
    assert str(tmp_path) in err and "cannot read" in err


def test_key_given_twice_is_refused_not_silently_overwritten(tmp_path: Path, capsys) -> None:
    f = tmp_path / "dup.yaml"
    f.write_text("name: one\nworkload: {rates: [1]}\nname: two\n")
    err = _err(capsys, ["validate", str(f)])
    assert "'name' is given twice" in err and "line 3" in err


@pytest.mark.parametrize("field", ["workload.rates=[.nan]", "workload.rates=[.inf]", "workload.duration_s=.inf",
                                   "workload.duration_s=.nan", "workload.timeout_s=.inf", "slo.ttft_ms=.nan",
                                   "emulator.time_scale=.inf", "workload.burstiness=.nan"])
def test_non_finite_numbers_are_refused(field: str, params_dir: Path, capsys) -> None:
    err = _err(capsys, ["validate", str(params_dir / "demo-local.yaml"), "--set", field])
    assert f"field '{field.split('=')[0]}" in err and "finite number" in err


@pytest.mark.parametrize(("field", "bound"), [("workload.rates=[1e9]", f"{MAX_RATE:g}"),
                                               ("workload.duration_s=1e9", f"{MAX_SECONDS:g}"),
                                               ("workload.concurrencies=[1000000]", "65536"),
                                               ("workload.max_inflight=10000000", "65536"),
                                               ("workload.num_prompts=1000000000", "10000000"),
                                               ("workload.seed=-1", "0")])
def test_absurd_numbers_are_refused_with_the_bound(field: str, bound: str, params_dir: Path, capsys) -> None:
    argv = ["validate", str(params_dir / "demo-local.yaml"), "--set", field]
    if "concurrencies" in field:
        argv += ["--set", "workload.rates=null"]
    err = _err(capsys, argv)
    assert field.split("=")[0] in err and bound in err


def test_rates_and_concurrencies_together_conflict(params_dir: Path, capsys) -> None:
    err = _err(capsys, ["validate", str(params_dir / "demo-local.yaml"), "--set", "workload.concurrencies=[4]"])
    assert "both 'rates' and 'concurrencies' are set" in err and "workload.rates=null" in err
    exp = load_experiment(params_dir / "demo-local.yaml", ["workload.concurrencies=[4]", "workload.rates=null"])
    assert exp.workload.levels == [("concurrency", 4.0)]


@pytest.mark.parametrize(("field", "hint"), [("engine_args.tp-size=4", "topology.<role>.tp"),
                                              ("engine_args.--port=9000", "pdlab chooses it"),
                                              ("topology.prefill.args.model_path=/x", "model.path"),
                                              ("topology.decode.args.disaggregation-mode=prefill", "topology.kind"),
                                              ("topology.router.args.policy=random", "topology.router.policy"),
                                              ("topology.router.args.host=0.0.0.0", "pdlab chooses it")])
def test_engine_args_pdlab_sets_itself_are_refused(field: str, hint: str, params_dir: Path, capsys) -> None:
    err = _err(capsys, ["validate", str(params_dir / "demo-local.yaml"), "--set", field])
    assert "is set by pdlab itself" in err and hint in err


def test_free_engine_args_still_reach_the_launch_command(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "demo-local.yaml", ["engine_args.chunked-prefill-size=4096"])
    role = next(r for r in build(exp).workers if r.name == "prefill")
    args = worker_args(exp, role, host="127.0.0.1", port=1)
    assert args[args.index("--chunked-prefill-size") + 1] == "4096" and args.count("--tp") == 1


@pytest.mark.parametrize(("sets", "field"), [
    (["workload.dataset.output_len=50000"], "workload.dataset.output_len"),
    (["workload.dataset.input_len=40900", "workload.dataset.range_ratio=0"], "workload.dataset.input_len"),
    (["workload.dataset.kind=shared-prefix", "workload.dataset.prefix_len=40000"], "workload.dataset"),
    (["workload.dataset.kind=sharegpt", "workload.dataset.fixed_output_len=50000"],
     "workload.dataset.fixed_output_len"),
])
def test_lengths_beyond_the_model_context_are_refused(sets: list[str], field: str, params_dir: Path, capsys) -> None:
    argv = ["validate", str(params_dir / "demo-local.yaml")] + [a for s in sets for a in ("--set", s)]
    err = _err(capsys, argv)
    assert field in err and "context of 40960 tokens" in err


def test_lengths_at_the_range_ratio_edge_count(params_dir: Path, capsys) -> None:
    # 2048·1.5 + 25000·1.5 = 40572 fits 40960; 2048·1.5 + 26000·1.5 does not
    assert main(["validate", str(params_dir / "demo-local.yaml"), "--set", "workload.dataset.output_len=25000"]) == 0
    capsys.readouterr()
    _err(capsys, ["validate", str(params_dir / "demo-local.yaml"), "--set", "workload.dataset.output_len=26000"])


@pytest.mark.parametrize("cfg", ["missing.json", "list.json", "latin1.json", "."])
def test_unusable_model_config_is_named(cfg: str, params_dir: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "latin1.json").write_bytes(b'{"name": "\xe9"}')
    err = _err(capsys, ["validate", str(params_dir / "demo-local.yaml"), "--set", f"model.config={tmp_path / cfg}"])
    assert "field 'model.config'" in err


def test_sweep_and_params_files_mixed_up(params_dir: Path, capsys) -> None:
    err = _err(capsys, ["sweep", str(params_dir / "demo-local.yaml"), "--dry-run"])
    assert "params file" in err and "use `pdlab run`" in err
    for cmd in ("run", "plan", "manifests", "deploy"):
        err = _err(capsys, [cmd, str(params_dir / "demo-sweep.yaml")])
        assert "sweep file" in err and "use `pdlab sweep`" in err


def test_unwritable_results_directory(params_dir: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = _err(capsys, ["run", str(params_dir / "demo-local.yaml"), "--results", str(blocker)])
    assert "results directory" in err and "--results" in err
    assert blocker.read_text() == "" and sorted(tmp_path.iterdir()) == [blocker]


def test_plan_csv_that_cannot_be_written_leaves_nothing(params_dir: Path, tmp_path: Path, capsys) -> None:
    target = tmp_path / "plan.csv"
    target.mkdir()  # a directory where the file should go
    err = _err(capsys, ["plan", str(params_dir / "demo-local.yaml"), "--csv", str(target),
                        "--set", "workload.duration_s=2"])
    assert "--csv" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.csv"] and not any(target.iterdir())


def test_resolved_params_of_a_closed_loop_validate_again(params_dir: Path, tmp_path: Path, capsys) -> None:
    rc = main(["validate", str(params_dir / "demo-local.yaml"), "--set", "workload.concurrencies=[2]",
               "--set", "workload.rates=null"])
    out = capsys.readouterr().out
    assert rc == 0
    f = tmp_path / "resolved.yaml"
    f.write_text(out)
    assert yaml.safe_load(out)["workload"]["rates"] is None
    assert main(["validate", str(f)]) == 0


@pytest.mark.parametrize(("labels", "match"), [("{pdlab.io/run: mine}", "pdlab's own"), ("{a b: c}", "label key"),
                                               ("{arm: two words}", "label value")])
def test_labels_that_would_break_teardown_or_the_cluster(labels: str, match: str, params_dir: Path, capsys) -> None:
    err = _err(capsys, ["validate", str(params_dir / "demo-local.yaml"), "--set", f"labels={labels}"])
    assert "field 'labels'" in err and match in err


def test_plan_too_large_to_simulate_is_refused(params_dir: Path, capsys) -> None:
    err = _err(capsys, ["plan", str(params_dir / "demo-local.yaml"), "--rate-curve", "--set", "workload.rates=[5000]",
                        "--set", "workload.duration_s=3600"])
    assert "workload.duration_s" in err and "limit 200,000" in err
