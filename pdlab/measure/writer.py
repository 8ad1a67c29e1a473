"""Writes one run directory as the run goes (the only writer of run files; the layout is `pdlab.core.schema`).

params.yaml and provenance.json first, then manifests, server metrics, logs; summary.json last and atomically
(complete), or incomplete.json with the reason when the run stops early.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

import pdlab
from pdlab.core.errors import PdlabError
from pdlab.core.fsutil import dump_json, now_iso, write_atomic
from pdlab.core.schema import (
    INCOMPLETE,
    LOGS,
    MANIFESTS,
    PARAMS,
    PROVENANCE,
    REQUESTS,
    RUN_FILES,
    SCHEMA_VERSION,
    SERVER_METRICS,
    SUMMARY,
)
from pdlab.experiment.spec import dump_yaml, redact
from pdlab.measure.load.runner import RecordSink

PARTS = ".requests.parts"


def git_commit(where: Path | None = None) -> dict[str, Any]:
    """{'commit': sha | None, 'dirty': bool | None} of the repository holding `where` (pdlab's source)."""
    where = where or Path(pdlab.__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def host_info() -> dict[str, Any]:
    """The machine pdlab runs on (the load client's host), for provenance."""
    return {"hostname": platform.node(), "platform": platform.platform(), "python": sys.version.split()[0],
            "cpus": os.cpu_count()}


class RunWriter:
    """Writes one run directory; `finish(summary)` marks it complete, `abort(reason)` incomplete."""

    def __init__(self, run_dir: Path | str):
        self.dir = Path(run_dir)
        self.provenance: dict[str, Any] = {}

    def begin(self, params: dict, *, backend: dict | None = None, extra: dict | None = None) -> None:
        """Create the directory (clearing a crashed run's files), write params.yaml and provenance."""
        if (self.dir / SUMMARY).exists():
            raise PdlabError(f"{self.dir} already holds a complete run (summary.json); choose another run name "
                             "or remove the directory")
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            (self.dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.dir / PARTS, ignore_errors=True)
        write_atomic(self.dir / PARAMS, dump_yaml(redact(params)))
        self.provenance = {
            "pdlab_version": pdlab.__version__, **{f"git_{k}": v for k, v in git_commit().items()},
            "backend": backend or {}, "host": host_info(), "argv": list(sys.argv),
            "started_at": now_iso(), "finished_at": None, **(extra or {}),
        }
        self.write_provenance()

    def write_provenance(self, **updates: Any) -> None:
        self.provenance.update(updates)
        write_atomic(self.dir / PROVENANCE, dump_json(self.provenance))

    def write_manifests(self, manifests: str | list[dict] | dict | None) -> None:
        """manifests.yaml: a YAML string as is, k8s objects as multi-doc YAML, else {processes: rows}."""
        if manifests is None:
            return
        if isinstance(manifests, str):
            text = manifests
        elif isinstance(manifests, dict):
            text = dump_yaml(redact(manifests))
        elif all(isinstance(m, dict) and "apiVersion" in m and "kind" in m for m in manifests) and manifests:
            text = yaml.safe_dump_all([_redact_k8s(m) for m in manifests], sort_keys=False)
        else:
            text = dump_yaml({"processes": redact(list(manifests))})
        write_atomic(self.dir / MANIFESTS, text)

    def record_sink(self) -> RecordSink:
        """Where the load generator spills request records during a level (a hidden folder of the run)."""
        return RecordSink(self.dir / PARTS)

    def write_requests(self, sink: RecordSink) -> int:
        """requests.parquet from everything the sink holds; returns the number of records."""
        return sink.write(self.dir / REQUESTS)

    def write_requests_table(self, table: pa.Table) -> int:
        """requests.parquet from an Arrow table of records (e.g. the load Job's, with `load_pod`), atomically."""
        tmp = self.dir / f".{REQUESTS}.tmp"
        pq.write_table(table, tmp)
        os.replace(tmp, self.dir / REQUESTS)
        return table.num_rows

    def requests_count(self) -> int:
        """Rows of the requests.parquet written so far (0 when there is none)."""
        p = self.dir / REQUESTS
        return pq.read_metadata(p).num_rows if p.exists() else 0

    def write_server_metrics(self, df: pd.DataFrame) -> None:
        tmp = self.dir / ".server_metrics.parquet.tmp"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, self.dir / SERVER_METRICS)

    def write_logs(self, logs: dict[str, str]) -> None:
        if not logs:
            return
        d = self.dir / LOGS
        d.mkdir(exist_ok=True)
        for name, text in logs.items():
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
            if not (d / f"{safe}.log").exists():  # the local backend already writes full logs there
                (d / f"{safe}.log").write_text(text)

    def finish(self, summary: dict[str, Any]) -> Path:
        """Write summary.json last and atomically: the run is complete."""
        self.write_provenance(finished_at=now_iso(), complete=True)
        (self.dir / INCOMPLETE).unlink(missing_ok=True)
        summary = {"schema": SCHEMA_VERSION, "complete": True, **summary}
        write_atomic(self.dir / SUMMARY, dump_json(summary))
        return self.dir / SUMMARY

    def abort(self, reason: str, exc: BaseException | None = None, **info: Any) -> Path:
        """Mark the run incomplete (incomplete.json with the reason); what was measured stays on disk."""
        self.write_provenance(finished_at=now_iso(), complete=False)
        doc = {"schema": SCHEMA_VERSION, "complete": False, "reason": reason, "at": now_iso(), **info}
        if exc is not None:
            doc["error_type"] = type(exc).__name__
            doc["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
        write_atomic(self.dir / INCOMPLETE, dump_json(doc))
        return self.dir / INCOMPLETE


def _redact_k8s(obj: dict) -> dict:
    obj = redact(obj)
    if obj.get("kind") == "Secret":
        obj = dict(obj)
        for k in ("data", "stringData"):
            if k in obj:
                obj[k] = {key: "<redacted>" for key in obj[k] or {}}
    return obj
