"""The load generator: datasets (prompts), arrivals (schedules), client (streaming HTTP), runner (one level)."""

from pdlab.measure.load.arrivals import intervals, send_times
from pdlab.measure.load.client import APIS, LoadClient, RequestRecord
from pdlab.measure.load.datasets import Dataset, DatasetError, Prompt
from pdlab.measure.load.kinds import make_dataset
from pdlab.measure.load.runner import (
    REQUEST_SCHEMA,
    LevelPlan,
    LevelStats,
    RecordSink,
    run_level,
    run_level_sync,
)

__all__ = [
    "APIS", "Dataset", "DatasetError", "LevelPlan", "LevelStats", "LoadClient", "Prompt", "REQUEST_SCHEMA",
    "RecordSink", "RequestRecord", "intervals", "make_dataset", "run_level", "run_level_sync", "send_times",
]
