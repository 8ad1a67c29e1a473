"""Params files → validated spec: defaults, overrides, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from pdlab.cli import main
from pdlab.core.errors import SpecError
from pdlab.experiment.loader import experiment_from_dict, load_experiment
from pdlab.experiment.spec import redact, resolved
from pdlab.experiment.sweepspec import load_sweep


def test_seed_params_resolve(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "seed-2p1d.yaml")
    assert exp.name == "sglang-pd"
    assert exp.topology.kind == "pd"
    assert (exp.topology.prefill.replicas, exp.topology.decode.replicas) == (2, 1)
    assert exp.topology.prefill.tp == exp.topology.decode.tp == 2
    assert exp.model.architecture().name == "Qwen3-32B"
    assert exp.gpu.type == "L20" and exp.gpu.erdma
    assert exp.storage.pvc == "llm-model"
    assert exp.workload.levels == [("rate", 1.0), ("rate", 2.0), ("rate", 4.0)]


def test_every_params_file_loads(params_dir: Path) -> None:
    for f in sorted(params_dir.glob("*.yaml")):
        if "sweep" in f.name:
            assert load_sweep(f).points
        else:
            load_experiment(f)


def test_overrides_are_validated_and_recorded(params_dir: Path) -> None:
    exp = load_experiment(params_dir / "seed-2p1d.yaml",
                          ["topology.ratio=3P1D", "workload.rates=[5, 10]", "engine_args.--mem-fraction-static=0.8"])
    assert exp.topology.prefill.replicas == 3 and exp.topology.decode.replicas == 1
    doc = resolved(exp)
    assert doc["workload"]["rates"] == [5.0, 10.0]
    assert doc["engine_args"] == {"mem-fraction-static": 0.8}


def test_concurrency_levels_replace_rates() -> None:
    exp = experiment_from_dict({"workload": {"concurrencies": [1, 8]}})
    with pytest.raises(SpecError, match="both 'rates' and 'concurrencies'"):
        experiment_from_dict({"workload": {"concurrencies": [1, 8], "rates": [2]}})
    assert exp.workload.levels == [("concurrency", 1.0), ("concurrency", 8.0)]


def test_model_profile_from_config_json(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text('{"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, '
                   '"num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 1000}')
    exp = experiment_from_dict({"model": {"name": "tiny", "path": "/models/tiny/", "config": str(cfg)}})
    arch = exp.model.architecture()
    assert arch.head_dim == 16 and arch.kv_bytes_per_token == 2 * 2 * 2 * 16 * 2


def test_redaction_keeps_env_names_drops_values() -> None:
    doc = redact({"storage": {"oss": {"access_key_id_env": "OSS_ACCESS_KEY_ID", "secret_name": "oss-secret"}},
                  "k8s": {"token": "abc", "password": "p"}})
    assert doc["storage"]["oss"]["access_key_id_env"] == "OSS_ACCESS_KEY_ID"
    assert doc["storage"]["oss"]["secret_name"] == "oss-secret"
    assert doc["k8s"] == {"token": "<redacted>", "password": "<redacted>"}


BAD_INPUTS = [
    # (params document, field named in the message, words the message must contain)
    ({"topolgy": {}}, "topolgy", "did you mean 'topology'"),
    ({"topology": {"kind": "pd", "prefil": {}}}, "topology.prefil", "did you mean 'prefill'"),
    ({"topology": {"kind": "pd", "prefill": {"replicas": 1, "tp": 3}}}, "topology.prefill.tp", "does not divide"),
    ({"topology": {"kind": "pd", "prefill": {"replicas": 3, "tp": 4}}}, "topology", "needs 14 GPUs"),
    ({"topology": {"kind": "pd", "decode": {"replicas": 0}}}, "topology.pd.decode.replicas", "greater than or equal"),
    ({"topology": {"kind": "colocated", "worker": {"replicas": 1, "tp": 16}}}, "topology.worker.tp", "per_node"),
    ({"topology": {"kind": "ring"}}, "topology", "use 'pd' or 'colocated'"),
    ({"topology": {"kind": "pd", "ratio": "two-to-one"}}, "topology", "must look like '2P1D'"),
    ({"gpu": {"type": "L40S"}}, "gpu.type", "known: L20"),
    ({"gpu": {"per_node": "eight"}}, "gpu.per_node", "valid integer"),
    ({"model": {"profile": "Qwen3-33B"}}, "model.profile", "did you mean 'Qwen3-32B'"),
    ({"workload": {"rates": [0, 2]}}, "workload.rates", "must be > 0"),
    ({"workload": {"rates": []}}, "workload.rates", "at least one"),
    ({"workload": {"dataset": {"kind": "jsonl"}}}, "workload.dataset", "needs 'path'"),
    ({"name": "My_Experiment"}, "name", "not a valid experiment name"),
    ({"namespace": "Prod"}, "namespace", "not a valid namespace"),
    ({"engine_args": {"--mem-fraction-static": {"a": 1}}}, "engine_args", "scalar or a list"),
    ({"backend": {"kind": "k8s", "k8s": {"access": "url"}}}, "backend.k8s", "needs 'url'"),
]


@pytest.mark.parametrize(("doc", "field", "words"), BAD_INPUTS)
def test_bad_input_names_file_field_and_fix(doc: dict, field: str, words: str) -> None:
    with pytest.raises(SpecError) as info:
        experiment_from_dict(doc, source="exp.yaml")
    msg = str(info.value)
    assert msg.startswith("exp.yaml"), msg
    assert field.replace(".pd.", ".") in msg.replace(".pd.", "."), msg
    assert words in msg, msg


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="file not found"):
        load_experiment(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntopology: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml: invalid YAML at line \d+"):
        load_experiment(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(SpecError, match="expected a mapping"):
        load_experiment(scalar)


def test_bad_override_syntax(params_dir: Path) -> None:
    with pytest.raises(SpecError, match="field.path=value"):
        load_experiment(params_dir / "seed-2p1d.yaml", ["workload.rates"])
    with pytest.raises(SpecError, match="with --set topology.prefil.tp=1"):
        load_experiment(params_dir / "seed-2p1d.yaml", ["topology.prefil.tp=1"])


def test_cli_exits_2_without_traceback(params_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["manifests", str(params_dir / "seed-2p1d.yaml"), "--set", "gpu.type=L2O"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "Traceback" not in err
    assert "gpu.type" in err and "did you mean 'L20'" in err


def test_sweep_expansion(params_dir: Path) -> None:
    sw = load_sweep(params_dir / "ratio-sweep.yaml")
    assert [p.run for p in sw.points] == ["1p3d", "2p2d", "3p1d", "colocated-4x-tp2"]
    assert {p.gpus for p in sw.points} == {8}
    assert sw.points[-1].experiment.topology.kind == "colocated"
    assert sw.points[0].experiment.workload.rates == [1, 2, 4, 6, 8]


def test_sweep_repeats_and_cli_axis_override(params_dir: Path) -> None:
    sw = load_sweep(params_dir / "demo-sweep.yaml", ["topology.ratio=2P2D", "repeats=2"])
    assert [p.run for p in sw.points] == ["2p2d-r1", "2p2d-r2", "colocated-4x-r1", "colocated-4x-r2"]


def test_bad_sweeps(tmp_path: Path, params_dir: Path) -> None:
    base = (params_dir / "demo-local.yaml").resolve()
    cases = {
        "unknown field": (f"sweep: s\nbase: {base}\ngrdi: {{}}\n", "did you mean 'grid'"),
        "empty axis": (f"sweep: s\nbase: {base}\ngrid: {{topology.ratio: []}}\n", "non-empty list"),
        "bad point": (f"sweep: s\nbase: {base}\ngrid: {{topology.ratio: [1P1D, 9P1D]}}\n", "point 9p1d"),
        "unequal gpus": (f"sweep: s\nbase: {base}\ngrid: {{topology.ratio: [1P1D, 2P1D]}}\n", "different GPU counts"),
    }
    for name, (text, words) in cases.items():
        f = tmp_path / f"{name.replace(' ', '-')}.yaml"
        f.write_text(text)
        with pytest.raises(SpecError) as info:
            load_sweep(f)
        assert words in str(info.value), (name, str(info.value))
        assert str(f) in str(info.value)
