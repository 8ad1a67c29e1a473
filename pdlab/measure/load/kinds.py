"""Every dataset kind behind one factory: the prompt sources of `datasets` plus multi-turn sessions and Mooncake
trace replay (kept in their own modules, which build on `datasets`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pdlab.measure.load import datasets
from pdlab.measure.load.datasets import Dataset
from pdlab.measure.load.sessions import MultiTurnDataset
from pdlab.measure.load.trace import MooncakeTraceDataset

if TYPE_CHECKING:
    from pdlab.experiment.spec import DatasetSpec


def make_dataset(spec: DatasetSpec, seed: int = 0, context_len: int | None = None) -> Dataset:
    """The dataset a workload asks for (`workload.dataset.kind`), seeded with `workload.seed`; `context_len`
    (the model's) lets a trace reject lines that cannot fit."""
    if spec.kind == "mooncake-trace":
        return MooncakeTraceDataset(spec, seed, context_len)
    if spec.kind == "multi-turn":
        return MultiTurnDataset(spec, seed)
    return datasets.make_dataset(spec, seed)
