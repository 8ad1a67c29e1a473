"""Server-side metrics: poll every endpoint's Prometheus `/metrics` during a run, keep a long-format table.

`Scraper(endpoints, interval_s=5)` runs in a daemon thread (its own `httpx.Client`, so it never shares the
load generator's event loop) and parses each response with `prometheus_client`'s text parser. Each sample
becomes a row: time (unix s), t (s since the run's t0), name (process/pod), role, metric (sample name, e.g.
`sglang:num_running_reqs` or `..._bucket`), labels (JSON object string, sorted keys), value. A synthetic
`pdlab:scrape_up` sample (1 or 0) per endpoint and poll records whether the scrape worked.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from typing import Any

import httpx
import pandas as pd
from prometheus_client.parser import text_string_to_metric_families

from pdlab.core.schema import SERVER_METRIC_COLUMNS


def parse_metrics(text: str) -> list[tuple[str, str, float]]:
    """Prometheus text → [(sample name, labels JSON, value)] (raises ValueError on malformed text)."""
    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = {k: v for k, v in s.labels.items() if v != ""}  # Prometheus: an empty label is no label
            out.append((s.name, json.dumps(labels, sort_keys=True), float(s.value)))
    return out


class Scraper:
    """Polls `/metrics` of endpoints (objects with name, role, metrics_url) in a background thread."""

    def __init__(self, endpoints: Iterable[Any], *, interval_s: float = 5.0, timeout_s: float = 3.0,
                 t0: float | None = None, max_rows: int = 2_000_000):
        self.targets = [(e.name, e.role, e.metrics_url) for e in endpoints if getattr(e, "metrics_url", None)]
        self.interval_s, self.timeout_s, self.max_rows = interval_s, timeout_s, max_rows
        self.t0 = time.perf_counter() if t0 is None else t0
        self._rows: list[tuple] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: dict[str, str] = {}

    def start(self) -> Scraper:
        if self._thread is None and self.targets:
            self._thread = threading.Thread(target=self._loop, name="pdlab-scrape", daemon=True)
            self._thread.start()
        return self

    def stop(self, final: bool = True) -> None:
        """Stop polling (after one last scrape if `final`)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.timeout_s * max(1, len(self.targets)) + 5)
            self._thread = None
            if final:
                with httpx.Client(timeout=self.timeout_s, trust_env=False) as c:
                    self.scrape_once(c)

    def __enter__(self) -> Scraper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        with httpx.Client(timeout=self.timeout_s, trust_env=False) as c:
            while not self._stop.is_set():
                started = time.monotonic()
                self.scrape_once(c)
                self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def scrape_once(self, client: httpx.Client) -> int:
        """Scrape every target once; returns the number of rows added."""
        added = 0
        for name, role, url in self.targets:
            now, t = time.time(), time.perf_counter() - self.t0
            up = 1.0
            try:
                r = client.get(url)
                r.raise_for_status()
                samples = parse_metrics(r.text)
                self.errors.pop(name, None)
            except Exception as e:  # noqa: BLE001 - a failed scrape is a data point (scrape_up 0)
                samples, up = [], 0.0
                self.errors[name] = f"{type(e).__name__}: {e}"
            rows = [(now, t, name, role, m, lab, v) for m, lab, v in samples]
            rows.append((now, t, name, role, "pdlab:scrape_up", "{}", up))
            with self._lock:
                if len(self._rows) + len(rows) <= self.max_rows:
                    self._rows.extend(rows)
                    added += len(rows)
        return added

    def frame(self) -> pd.DataFrame:
        """Everything scraped so far as a long-format DataFrame (SERVER_METRIC_COLUMNS)."""
        with self._lock:
            rows = list(self._rows)
        df = pd.DataFrame(rows, columns=SERVER_METRIC_COLUMNS)
        return df.astype({"time": float, "t": float, "value": float}) if len(df) else df
