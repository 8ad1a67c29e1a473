"""The per-level summary table `pdlab run` prints (latencies in ms; '!' marks a client-bound level, '✗' a failed
one, followed by its top errors)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pdlab.analysis.compare import MIN_SAMPLES
from pdlab.analysis.results import load_run

_TABLE = [  # (header, column, format)
    ("level", "level_value", "{:g}"), ("done", "completed", "{:d}"), ("fail", "failed", "{:d}"),
    ("req/s", "request_rate", "{:.2f}"), ("out tok/s", "output_throughput", "{:.0f}"),
    ("TTFT p50", "ttft_p50_ms", "{:.0f}"), ("TTFT p99", "ttft_p99_ms", "{:.0f}"),
    ("TPOT p50", "tpot_p50_ms", "{:.1f}"), ("TPOT p99", "tpot_p99_ms", "{:.1f}"),
    ("ITL p99", "itl_p99_ms", "{:.1f}"), ("E2E p50", "e2e_p50_ms", "{:.0f}"),
    ("goodput", "goodput", "{:.2f}"), ("lag p99", "dispatch_lag_p99_ms", "{:.1f}"),
]


def _fmt(v: Any, f: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    try:
        return f.format(int(v) if "d" in f else v)
    except (ValueError, TypeError):
        return str(v)


def format_summary(run: Path | str | pd.DataFrame) -> str:
    """The per-level summary table (latencies in ms; '!' marks a client-bound level, '†' a p99 from fewer
    than MIN_SAMPLES requests) as text."""
    hits: dict = {}
    lost: list = []
    if isinstance(run, pd.DataFrame):
        df, head = run, ""
    else:
        r = load_run(run)
        df = r.summary
        state = "" if r.complete else f"  [INCOMPLETE: {(r.incomplete or {}).get('reason', '?')}]"
        topo = (r.meta.get("topology") or {}).get("label") or ""
        head = f"{r.name}  {topo}{state}\n"
        hits = r.meta.get("cache_hit_rate") or {}
        lost = r.meta.get("workers_lost") or []
    if df.empty:
        return head + "(no measured levels)"
    kind = str(df["level_kind"].iloc[0]) if "level_kind" in df else "rate"
    headers = [("rate" if kind == "rate" else "conc") if h == "level" else h for h, _, _ in _TABLE]
    rows = []
    for _, r in df.iterrows():
        cells = [_fmt(r.get(c), f) for _, c, f in _TABLE]
        few = (r.get("completed") or 0) < MIN_SAMPLES
        cells = [c + ("†" if few and "_p99_" in col and c != "-" else "") for c, (_, col, _) in zip(cells, _TABLE,
                                                                                                 strict=True)]
        if bool(r.get("client_bound")):
            cells[-1] += "!"
        if _is_true(r.get("level_failed")):
            cells[2] += "✗"
        rows.append(cells)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    notes = [f"! level {r['level_value']:g}: client-bound ({r.get('client_bound_reason')}); these latencies "
             "measure the load generator" for _, r in df.iterrows() if bool(r.get("client_bound"))]
    if "completed" in df and (pd.to_numeric(df["completed"], errors="coerce") < MIN_SAMPLES).any():
        notes.append(f"† p99 from fewer than {MIN_SAMPLES} completed requests: close to the maximum, noisy")
    for _, r in df.iterrows():
        if _is_true(r.get("level_failed")):
            notes.append(f"✗ level {r['level_value']:g} FAILED: {_fmt(r.get('failed'), '{:d}')} of "
                         f"{_fmt(r.get('requests'), '{:d}')} requests failed ({_fmt(r.get('failed_share'), '{:.0%}')}); "
                         "top errors:")
            notes += [f"    {e.get('count')} × {e.get('error')}" for e in (r.get("top_errors") or [])]
    notes += [f"✗ lost worker {w['name']} ({w['role']}): stopped answering between t={w['last_seen_s']:g} s and "
              f"t={w['lost_at_s']:g} s" for w in lost]
    if hits:
        notes.append(cache_hit_line(hits))
    return head + "\n".join(lines + notes)


def cache_hit_line(hits: dict[str, float]) -> str:
    """One line with the prefix-cache hit rate per role (cached ÷ prompt tokens over the run)."""
    return "prefix cache hit (cached ÷ prompt tokens): " + ", ".join(f"{k} {v:.0%}" for k, v in sorted(hits.items()))


def _is_true(v: Any) -> bool:
    return isinstance(v, bool | np.bool_) and bool(v)


def print_summary(run_dir: Path | str) -> None:
    """Print the summary table and, as the last line, the run's path (what `pdlab run` shows)."""
    print(format_summary(run_dir))
    print(Path(run_dir))
