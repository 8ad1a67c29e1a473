"""GPU accounting, equal-GPU baselines and xPyD enumeration."""

from __future__ import annotations

import pytest

from pdlab.core.errors import SpecError
from pdlab.experiment.loader import experiment_from_dict
from pdlab.experiment.topology import build, colocated_baseline, enumerate_ratios


def test_seed_topology_accounting() -> None:
    topo = build(experiment_from_dict({}))
    assert [r.name for r in topo.roles] == ["scheduler", "prefill", "decode"]
    assert topo.gpus == 6
    assert topo.role("prefill").gpus == 4 and topo.role("scheduler").gpus == 0
    assert topo.label == "2P1D (TP2)"


def test_equal_gpu_colocated_baseline() -> None:
    pd = experiment_from_dict({}).topology
    assert colocated_baseline(pd) == (3, 2)
    assert colocated_baseline(pd, tp=1) == (6, 1)
    assert colocated_baseline(build(experiment_from_dict({"topology": {"kind": "pd", "ratio": "3P1D"}}))) == (4, 2)
    with pytest.raises(SpecError, match="cannot be split"):
        colocated_baseline(pd, tp=4)


def test_enumerate_ratios_under_budget() -> None:
    assert enumerate_ratios(8, 2) == [(1, 3), (2, 2), (3, 1)]
    assert enumerate_ratios(4, 1) == [(1, 3), (2, 2), (3, 1)]
    assert (1, 1) in enumerate_ratios(8, 2, exact=False) and (3, 1) in enumerate_ratios(8, 2, exact=False)
    assert enumerate_ratios(8, 4, decode_tp=2) == [(1, 2)]


def test_engine_args_merge_per_role() -> None:
    exp = experiment_from_dict({"engine_args": {"mem-fraction-static": 0.8},
                                "topology": {"kind": "pd", "prefill": {"args": {"chunked-prefill-size": 4096}}}})
    topo = build(exp)
    assert topo.role("prefill").args == {"mem-fraction-static": 0.8, "chunked-prefill-size": 4096}
    assert topo.role("decode").args == {"mem-fraction-static": 0.8}


def test_instances_must_pack_into_nodes() -> None:
    # 2 nodes × 8 GPUs = 16, but three TP8 instances cannot fit
    with pytest.raises(SpecError, match="needs 24 GPUs"):
        experiment_from_dict({"gpu": {"nodes": 2}, "topology": {"kind": "colocated", "worker": {"replicas": 3, "tp": 8}}})
    # 3 × TP4 + 1 × TP2 = 14 GPUs fit 2 nodes
    exp = experiment_from_dict({"gpu": {"nodes": 2}, "topology": {"kind": "pd", "prefill": {"replicas": 3, "tp": 4},
                                                                  "decode": {"replicas": 1, "tp": 2}}})
    assert build(exp).gpus == 14
