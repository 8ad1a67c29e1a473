"""Property-based fuzzing of params and sweep files (issue 16): whatever a careless user writes, `validate`,
`manifests`, `plan` and `sweep --dry-run` exit 0 or 2 with one message, never a traceback, never a half-written file.

Mutations start from the shipped params/sweep files: a field removed, its type swapped, a number pushed to an
extreme (NaN, ±inf, 1e308, 2**70, 0, -1), a key duplicated, bytes corrupted. Examples are derandomized, so CI
runs the same cases every time: FUZZ_EXAMPLES (default 60) per test, 4 tests; raise PDLAB_FUZZ_EXAMPLES to dig deeper.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pdlab.cli import main

PARAMS = Path(__file__).resolve().parents[1] / "params"
FUZZ_EXAMPLES = int(os.environ.get("PDLAB_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None,
                derandomize=not os.environ.get("PDLAB_FUZZ_RANDOM"),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

EXTREMES: list[Any] = [None, "", "x", "1P1D", True, 0, -1, 1, 2**70, -(2**70), 0.5, 1e308, -1e308, math.nan,
                       math.inf, -math.inf, [], [1], [math.nan], [1e9], {}, {"kind": "pd"}, "\x00", "ü" * 3]


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path to a mapping key or list item in a parsed YAML document."""
    out: list[tuple] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((*prefix, i))
            out += _paths(v, (*prefix, i))
    return out


def _get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def _mutate(doc: dict, data: st.DataObject) -> str:
    """A mutated copy of `doc` as YAML text (some mutations act on the text itself)."""
    doc = copy.deepcopy(doc)
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = _paths(doc)
        op = data.draw(st.sampled_from(["remove", "extreme", "swap", "add"]), label="op")
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = _get(doc, path[:-1])
        key = path[-1]
        if op == "remove":
            del parent[key]
        elif op == "extreme":
            parent[key] = copy.deepcopy(data.draw(st.sampled_from(EXTREMES), label="value"))
        elif op == "swap":
            v = parent[key]
            parent[key] = copy.deepcopy(data.draw(st.sampled_from([str(v), [v], {"value": v}, None]), label="swapped"))
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(["extra", "rate", "kind", "tp"]), label="new key")] = 1
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    lines = text.splitlines(keepends=True)
    if data.draw(st.booleans(), label="duplicate a line") and lines:
        i = data.draw(st.integers(0, len(lines) - 1), label="line")
        lines.insert(i, lines[i])
    raw = "".join(lines).encode()
    if data.draw(st.booleans(), label="corrupt bytes") and raw:
        i = data.draw(st.integers(0, len(raw) - 1), label="at")
        raw = raw[:i] + data.draw(st.binary(min_size=1, max_size=4), label="bytes") + raw[i + 1:]
    return raw.decode("utf-8", errors="surrogateescape")


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    return path


def _check(rc: int, err: str) -> None:
    assert rc in (0, 2), err
    assert "Traceback" not in err
    if rc == 2:  # one message, last: "pdlab COMMAND: error: FILE: field 'F': what is wrong; the fix"
        assert "pdlab " in err and ": error: " in err, err


@pytest.fixture(scope="module")
def demo() -> dict:
    return yaml.safe_load((PARAMS / "demo-local.yaml").read_text())


@pytest.fixture(scope="module")
def seed() -> dict:
    return yaml.safe_load((PARAMS / "seed-2p1d.yaml").read_text())


@FUZZ
@given(data=st.data())
def test_validate_and_manifests_never_crash(seed: dict, data: st.DataObject, tmp_path_factory, capsys) -> None:
    d = tmp_path_factory.mktemp("fuzz")
    f = _write(d / "params.yaml", _mutate(seed, data))
    for cmd in (["validate", str(f)], ["manifests", str(f)]):
        rc = main(cmd)
        _check(rc, capsys.readouterr().err)
    assert sorted(p.name for p in d.iterdir()) == ["params.yaml"]  # nothing written beside it


@FUZZ
@given(data=st.data())
def test_plan_never_crashes_nor_half_writes(demo: dict, data: st.DataObject, tmp_path_factory, capsys) -> None:
    d = tmp_path_factory.mktemp("fuzz")
    f = _write(d / "params.yaml", _mutate(demo, data))
    csv = d / "out" / "plan.csv"
    # short levels keep each case cheap; the fuzzed fields still reach the planner through the file
    rc = main(["plan", str(f), "--rate-curve", "--csv", str(csv), "--set", "workload.duration_s=2"])
    _check(rc, capsys.readouterr().err)
    written = sorted(p.name for p in (d / "out").iterdir()) if (d / "out").exists() else []
    assert written == (["plan.csv"] if rc == 0 else [])
    if rc == 0:
        assert csv.read_text().startswith("arm,")


@FUZZ
@given(data=st.data(), budget=st.sampled_from([None, "-1", "0", "1", "3", "10**9", "x"]),
       tp=st.sampled_from([None, "-2", "0", "1", "3", "64"]))
def test_plan_options_never_crash(demo: dict, data: st.DataObject, budget: str | None, tp: str | None,
                                  tmp_path_factory, capsys) -> None:
    d = tmp_path_factory.mktemp("fuzz")
    f = _write(d / "params.yaml", yaml.safe_dump(demo))
    argv = ["plan", str(f), "--rate-curve", "--set", "workload.duration_s=2", "--set", "workload.rates=[1]"]
    argv += ["--budget", budget] if budget else []
    argv += ["--tp", tp] if tp else []
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse refuses a non-integer option with its usage line and code 2
        rc = int(e.code or 0)
    _check(rc, capsys.readouterr().err)


@FUZZ
@given(data=st.data())
def test_sweep_files_never_crash(data: st.DataObject, tmp_path_factory, capsys) -> None:
    d = tmp_path_factory.mktemp("fuzz")
    (d / "demo-local.yaml").write_text((PARAMS / "demo-local.yaml").read_text())
    sweep = yaml.safe_load((PARAMS / "demo-sweep.yaml").read_text())
    f = _write(d / "sweep.yaml", _mutate(sweep, data))
    before = sorted(p.name for p in d.iterdir())
    rc = main(["validate", str(f)])
    _check(rc, capsys.readouterr().err)
    rc = main(["sweep", str(f), "--dry-run", "--results", str(d / "results")])
    _check(rc, capsys.readouterr().err)
    assert sorted(p.name for p in d.iterdir()) == before
