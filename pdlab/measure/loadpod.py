"""`python -m pdlab.measure.loadpod`: the load generator of one in-cluster load pod (`backend.k8s.load: job`).

Reads its spec from the `PDLAB_LOAD_SPEC` environment variable (JSON: router URL, API, model, timeout,
dataset, the run's level plans, the number of pods) and its index from `JOB_COMPLETION_INDEX` (an Indexed
Job sets it) or `--pod`, runs its share of every level (`pdlab.measure.load.shares.share_plan`) against the
router, and writes its records to stdout, where pdlab reads them back through the Kubernetes API (pod
logs): no kubectl, no shared volume. Protocol, one item per line:
  PDLAB-LOAD {"pod": i, "pods": n, "t0_unix": …}          once, at start
  PDLAB-REC <batch> <part>/<parts> <base64>               record batches: zlib-compressed Arrow IPC streams
  PDLAB-DONE {"levels": k}  |  PDLAB-ABORT {"reason": …}  at the end
Records are flushed every `FLUSH_EVERY` requests and after each level, so a pod that is evicted or killed
mid-run leaves what it measured (SIGTERM flushes too).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, TextIO

import pyarrow as pa

from pdlab.experiment.spec import DatasetSpec
from pdlab.measure.load.kinds import make_dataset
from pdlab.measure.load.runner import LevelPlan, RecordSink, run_level_sync
from pdlab.measure.load.shares import share_plan

ENV_SPEC = "PDLAB_LOAD_SPEC"
ENV_INDEX = "JOB_COMPLETION_INDEX"
MARK_START, MARK_REC, MARK_DONE, MARK_ABORT = "PDLAB-LOAD", "PDLAB-REC", "PDLAB-DONE", "PDLAB-ABORT"
LINE_CHARS = 8000  # well under the kubelet's 16 KiB log line
FLUSH_EVERY = 500


def load_spec(exp: Any, router_url: str, plans: list[LevelPlan], pods: int,
              start_unix: float | None = None) -> dict[str, Any]:
    """The JSON spec every load pod of a run gets (same for all; each picks its share by index). Pods wait
    for `start_unix` (wall clock) before the first level, so their shares overlap from the start."""
    w = exp.workload
    return {"router_url": router_url, "api": w.api, "model": exp.model.name, "timeout_s": w.timeout_s,
            "dataset": w.dataset.model_dump(mode="json"), "seed": w.seed, "pods": pods,
            "plans": [asdict(p) for p in plans], "start_unix": start_unix,
            "ignore_eos": bool(getattr(w, "ignore_eos", True))}


def encode(table: pa.Table, batch: int) -> Iterator[str]:
    """One record batch as PDLAB-REC lines."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    data = base64.b64encode(zlib.compress(sink.getvalue().to_pybytes(), 6)).decode()
    parts = [data[i:i + LINE_CHARS] for i in range(0, len(data), LINE_CHARS)] or [""]
    for k, chunk in enumerate(parts, 1):
        yield f"{MARK_REC} {batch} {k}/{len(parts)} {chunk}"


def decode(log: str) -> tuple[dict[str, Any], list[pa.Table], dict[str, Any] | None]:
    """A load pod's log → (start info, complete record batches, end marker or None if it never ended)."""
    start: dict[str, Any] = {}
    end: dict[str, Any] | None = None
    chunks: dict[int, dict[int, str]] = {}
    totals: dict[int, int] = {}
    for line in log.splitlines():
        if line.startswith(MARK_START + " "):
            start = json.loads(line[len(MARK_START) + 1:])
        elif line.startswith(MARK_REC + " "):
            try:
                _, batch, part, data = line.split(" ", 3)
                k, n = (int(x) for x in part.split("/"))
            except ValueError:
                continue  # a line cut short by the pod's death
            chunks.setdefault(int(batch), {})[k] = data
            totals[int(batch)] = n
        elif line.startswith(MARK_DONE + " "):
            end = {"done": True, **json.loads(line[len(MARK_DONE) + 1:])}
        elif line.startswith(MARK_ABORT + " "):
            end = {"done": False, **json.loads(line[len(MARK_ABORT) + 1:])}
    tables = []
    for batch in sorted(chunks):
        parts = chunks[batch]
        if len(parts) != totals[batch]:
            continue  # the pod died while writing this batch
        raw = zlib.decompress(base64.b64decode("".join(parts[k] for k in sorted(parts))))
        tables.append(pa.ipc.open_stream(raw).read_all())
    return start, tables, end


class StreamingSink(RecordSink):
    """A RecordSink that writes its records to `out` as PDLAB-REC batches every `every` records."""

    def __init__(self, out: TextIO, every: int = FLUSH_EVERY):
        super().__init__(None)
        self.out, self.every, self.batch = out, every, 0

    def add(self, rec: Any) -> None:
        super().add(rec)
        if len(self._buf) >= self.every:
            self.emit()

    def emit(self) -> None:
        """Write what is buffered as one batch."""
        if not self._buf:
            return
        buf, self._buf = self._buf, []
        for line in encode(self.to_table(buf), self.batch):
            print(line, file=self.out)
        self.out.flush()
        self.batch += 1


def run_pod(spec: dict[str, Any], pod: int, out: TextIO = sys.stdout) -> int:
    """Run pod `pod`'s share of every level; returns the exit code (0 done, 1 failed, 143 terminated)."""
    pods = int(spec["pods"])
    sink = StreamingSink(out)
    dataset = make_dataset(DatasetSpec(**spec["dataset"]), seed=int(spec["seed"]))
    plans = [share_plan(LevelPlan(**p), pod, pods) for p in spec["plans"]]
    for plan in plans:
        if plan is not None:
            dataset.prepare(plan.first_prompt + (plan.expected_requests() or 1000))
    late = time.time() - float(spec.get("start_unix") or 0)
    if late < 0:
        time.sleep(-late)
    t0, t0_unix = time.perf_counter(), time.time()
    info = {"pod": pod, "pods": pods, "t0_unix": t0_unix, "late_s": round(max(late, 0.0), 3)
            if spec.get("start_unix") else None}
    print(f"{MARK_START} {json.dumps(info)}", file=out, flush=True)
    done = 0
    try:
        for plan in plans:
            if plan is not None:
                run_level_sync(spec["router_url"], dataset, plan, sink, t0=t0, api=spec["api"], model=spec["model"],
                               timeout_s=float(spec["timeout_s"]),
                               client_kwargs={"ignore_eos": bool(spec.get("ignore_eos", True))})
                sink.emit()
            done += 1
    except BaseException as e:  # noqa: BLE001 - whatever stops the pod, what it measured goes out first
        sink.emit()
        reason = "terminated (SIGTERM)" if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
        print(f"{MARK_ABORT} {json.dumps({'reason': reason, 'levels': done})}", file=out, flush=True)
        print(f"load pod {pod}: {reason}", file=sys.stderr, flush=True)
        return 143 if isinstance(e, SystemExit | KeyboardInterrupt) else 1
    print(f"{MARK_DONE} {json.dumps({'levels': done})}", file=out, flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: the spec from $PDLAB_LOAD_SPEC, the pod index from $JOB_COMPLETION_INDEX or --pod."""
    ap = argparse.ArgumentParser(prog="python -m pdlab.measure.loadpod", description=__doc__.splitlines()[0])
    ap.add_argument("--pod", type=int, default=None, help="this pod's index (default: $JOB_COMPLETION_INDEX)")
    a = ap.parse_args(argv)
    raw = os.environ.get(ENV_SPEC)
    if not raw:
        print(f"loadpod: ${ENV_SPEC} is not set (pdlab sets it in the load Job)", file=sys.stderr)
        return 2
    pod = a.pod if a.pod is not None else int(os.environ.get(ENV_INDEX, "0"))

    def terminated(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminated)  # eviction: flush what was measured, then exit
    return run_pod(json.loads(raw), pod)


if __name__ == "__main__":
    sys.exit(main())
