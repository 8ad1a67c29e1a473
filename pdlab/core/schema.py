"""The results contract in one place: the files of a run directory, the request-record and server-metric
columns, and what makes a run complete. Writers (measure) and readers (analysis) both import it from here.

See docs/architecture.md ("The path of the data") for who writes which file when.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import pyarrow as pa

SCHEMA_VERSION = 2  # 2: summary.json carries the run's `arm`

PARAMS = "params.yaml"
MANIFESTS = "manifests.yaml"
PROVENANCE = "provenance.json"
REQUESTS = "requests.parquet"
SERVER_METRICS = "server_metrics.parquet"
SUMMARY = "summary.json"          # written last and atomically: its presence means "complete"
INCOMPLETE = "incomplete.json"    # instead of summary.json when a run crashed or was interrupted
LOGS = "logs"
RUN_FILES = (MANIFESTS, PROVENANCE, REQUESTS, SERVER_METRICS, SUMMARY, INCOMPLETE, PARAMS)

# One row per request (send, first token, every chunk, end, tokens, errors); times in s from the run's t0.
REQUEST_SCHEMA = pa.schema([
    ("level", pa.int32()), ("level_kind", pa.string()), ("level_value", pa.float64()),
    ("req_id", pa.int64()), ("warmup", pa.bool_()),
    ("t_sched", pa.float64()), ("t_send", pa.float64()), ("t_first", pa.float64()), ("t_end", pa.float64()),
    ("chunk_times", pa.list_(pa.float64())),
    ("input_len", pa.int32()), ("max_tokens", pa.int32()), ("prompt_tokens", pa.int32()),
    ("output_tokens", pa.int32()), ("tokens_source", pa.string()),
    ("status", pa.int32()), ("ok", pa.bool_()), ("error", pa.string()),
])

# Scraped Prometheus samples, long format: wall time, s since t0, endpoint name, role, metric, labels JSON, value.
SERVER_METRIC_COLUMNS = ["time", "t", "name", "role", "metric", "labels", "value"]


def timestamped(prefix: str) -> str:
    """'<prefix>-<UTC yyyymmdd-hhmmss>': the one way pdlab names a run or a deployment it was not given a name for."""
    return f"{prefix}-{_dt.datetime.now(_dt.UTC):%Y%m%d-%H%M%S}"


def is_run_dir(path: Path | str) -> bool:
    """Whether `path` holds a pdlab run (its params.yaml is written first, before anything is deployed)."""
    return (Path(path) / PARAMS).exists()


def is_complete(path: Path | str) -> bool:
    """Whether the run at `path` finished every level (summary.json exists)."""
    return (Path(path) / SUMMARY).exists()


def run_status(path: Path | str) -> str:
    """'complete', 'incomplete' (started, crashed or interrupted) or 'missing'."""
    p = Path(path)
    if is_complete(p):
        return "complete"
    return "incomplete" if is_run_dir(p) or (p / INCOMPLETE).exists() else "missing"
