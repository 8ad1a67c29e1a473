"""Mooncake trace replay: the FAST'25 trace format as a dataset with its own arrival times.

Each line of the JSONL file is ``{"timestamp": ms, "input_length": N, "output_length": M, "hash_ids": [...]}``:
the request arrives `timestamp` ms after the first, has N prompt tokens and asks for M output tokens; each hash
id names one block of ``block_size`` (512) prompt tokens, and requests sharing leading hash ids share that
prefix. pdlab builds each block as `block_size` seeded single-token words (the same id, the same words, so the
emulator's radix cache sees the sharing), cut to N tokens and padded with words unique to the line when the
blocks are fewer than N needs. Replay at a load level of rate r stretches or compresses the trace's times so its
mean rate is r (the trace's own rate: `natural_rate`). Errors name the file and line.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pdlab.measure.load.datasets import Dataset, DatasetError, Prompt, json_lines, word_tokens

BLOCK_SIZE = 512
FIELDS = ("timestamp", "input_length", "output_length", "hash_ids")


@dataclass(frozen=True)
class TraceRow:
    """One trace line: arrival (s from the first), prompt and output tokens, prefix block ids."""

    t: float
    input_len: int
    output_len: int
    hash_ids: tuple[int, ...]


def load_trace(path: Path, *, context_len: int | None = None) -> list[TraceRow]:
    """Parse and check a Mooncake trace file; every problem raises DatasetError naming file:line and the fix."""
    rows: list[TraceRow] = []
    first: float | None = None
    example = '{"timestamp": 0, "input_length": 6755, "output_length": 500, "hash_ids": [0, 1]}'
    for where, obj in json_lines(path, what="trace", example=example):
        if not isinstance(obj, dict):
            raise DatasetError(f"{where}: expected a JSON object with {', '.join(FIELDS)}")
        missing = [f for f in FIELDS if f not in obj]
        if missing:
            raise DatasetError(f"{where}: missing {', '.join(missing)} (a Mooncake trace line has "
                               f"{', '.join(FIELDS)})")
        ts = obj["timestamp"]
        if isinstance(ts, bool) or not isinstance(ts, int | float) or ts < 0:
            raise DatasetError(f"{where}: timestamp must be a number of milliseconds ≥ 0, got {ts!r}")
        for key in ("input_length", "output_length"):
            v = obj[key]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DatasetError(f"{where}: {key} must be an integer ≥ 1, got {v!r}")
        ids = obj["hash_ids"]
        if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in ids):
            raise DatasetError(f"{where}: hash_ids must be a list of integers, got {ids!r}")
        if rows and ts / 1e3 - (first or 0.0) < rows[-1].t:
            raise DatasetError(f"{where}: timestamp {ts} is earlier than the previous line's "
                               f"({(rows[-1].t + (first or 0.0)) * 1e3:g}); a trace must be sorted by timestamp")
        n_in, n_out = obj["input_length"], obj["output_length"]
        if context_len and n_in + n_out > context_len:
            raise DatasetError(f"{where}: input_length + output_length = {n_in + n_out} exceeds the model's context "
                               f"length {context_len}; drop the line or use a model with a longer context")
        if first is None:
            first = ts / 1e3
        rows.append(TraceRow(ts / 1e3 - first, n_in, n_out, tuple(ids)))
    if not rows:
        raise DatasetError(f"{path}: no requests in the trace (one JSON object a line expected)")
    return rows


class MooncakeTraceDataset(Dataset):
    """Prompts and arrival times of a Mooncake trace (see module docstring); indexes past the end wrap."""

    kind = "mooncake-trace"

    def __init__(self, spec, seed: int = 0, context_len: int | None = None):
        super().__init__(spec, seed)
        self.context_len = context_len
        self._rows: list[TraceRow] | None = None

    @property
    def rows(self) -> list[TraceRow]:
        """The parsed trace (loaded on first use)."""
        if self._rows is None:
            self._rows = load_trace(Path(self.spec.path or ""), context_len=self.context_len)
        return self._rows

    def prepare(self, n: int) -> None:
        super().prepare(n)
        _ = self.rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def natural_rate(self) -> float:
        """The trace's own mean request rate (requests/s); inf when every request arrives at once."""
        span = self.rows[-1].t
        return (len(self.rows) - 1) / span if span > 0 else float("inf")

    def offsets(self, rate: float | None = None) -> list[float]:
        """Send offsets (s) of every line, scaled so the mean rate is `rate` (None: the trace's own times)."""
        scale = 1.0 if rate is None or self.natural_rate == float("inf") else self.natural_rate / rate
        return [r.t * scale for r in self.rows]

    @lru_cache(maxsize=4096)  # noqa: B019 - one dataset per run
    def _block(self, hash_id: int) -> tuple[str, ...]:
        return tuple(random.Random(f"mooncake:{self.seed}:{hash_id}").choices(word_tokens(), k=BLOCK_SIZE))

    def get(self, i: int) -> Prompt:
        row = self.rows[i % len(self.rows)]
        words: list[str] = []
        for h in row.hash_ids:
            if len(words) >= row.input_len:
                break
            words.extend(self._block(h))
        if len(words) < row.input_len:
            rng = random.Random(f"mooncake:{self.seed}:line:{i % len(self.rows)}")
            words.extend(rng.choices(word_tokens(), k=row.input_len - len(words)))
        return Prompt(i, "".join(words[: row.input_len]), row.input_len, row.output_len)
