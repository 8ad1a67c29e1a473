"""Server metrics from a Prometheus server's HTTP API instead of scraping each pod.

`PrometheusSource(url, targets)` reads, over the run's window, every series whose `pod` label (and
`namespace`, on a cluster) names one of the deployment's pods, with range queries (`/api/v1/query_range`),
and returns them in the scraper's long format (`pdlab.measure.scrape.COLUMNS`), so `server_metrics.parquet`
is the same file whichever way the metrics came. Prometheus' target labels (job, instance, pod, namespace,
container, ...) are dropped from `labels`; `up` becomes `pdlab:scrape_up`, as the direct scraper writes it.
`check()` fails fast when the URL does not answer; `wait_for_targets()` when the pods' series never appear.
`write_file_sd(path, endpoints)` writes a Prometheus file_sd target list for local runs.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from pdlab.core.errors import PdlabError
from pdlab.core.fsutil import write_atomic
from pdlab.core.schema import SERVER_METRIC_COLUMNS as COLUMNS
from pdlab.experiment.spec import Experiment

# labels a Prometheus server adds to every series of a target (scrape config, kubernetes SD, the operator)
TARGET_LABELS = frozenset({"job", "instance", "pod", "namespace", "container", "endpoint", "service", "role",
                           "node", "pdlab_role", "prometheus", "prometheus_replica", "cluster"})
SELF_SERIES = frozenset({"scrape_duration_seconds", "scrape_samples_scraped", "scrape_samples_post_metric_relabeling",
                         "scrape_series_added"})
MAX_POINTS = 10_000  # Prometheus refuses range queries of more than 11,000 points per series


class PrometheusError(PdlabError):
    """The Prometheus server does not answer, refuses the query, or has no series for the deployment."""


class PrometheusSource:
    """Range queries against one Prometheus server for the series of a set of pods (name → role)."""

    def __init__(self, url: str, targets: Mapping[str, str], *, namespace: str | None = None,
                 step_s: float = 5.0, timeout_s: float = 30.0, token_env: str | None = None,
                 field: str = "metrics.prometheus", pod_label: str = "pod"):
        self.url = url.rstrip("/")
        self.targets = dict(targets)
        self.namespace = namespace
        self.step_s = step_s
        self.timeout_s = timeout_s
        self.field = field
        self.pod_label = pod_label
        token = os.environ.get(token_env) if token_env else None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def use(self, endpoints: Iterable[Any], file_sd: str | None = None) -> None:
        """Select the endpoints' pods (those with a metrics URL); also list them in `file_sd` when given."""
        eps = [e for e in endpoints if getattr(e, "metrics_url", None)]
        self.targets = {e.name: e.role for e in eps}
        if file_sd:
            write_file_sd(file_sd, eps)

    def describe(self) -> dict[str, Any]:
        """What provenance.json records about the source (the URL without credentials)."""
        u = httpx.URL(self.url)
        return {"kind": "prometheus", "url": str(u.copy_with(userinfo=b"")), "field": self.field,
                "step_s": self.step_s, "namespace": self.namespace}

    # -- HTTP -------------------------------------------------------------------------------------------
    def _api(self, path: str, data: dict[str, Any]) -> Any:
        try:
            with httpx.Client(timeout=self.timeout_s, trust_env=False, headers=self._headers) as c:
                r = c.post(self.url + path, data=data)
        except httpx.HTTPError as e:
            raise PrometheusError(f"{self.field}: {self.url} does not answer ({type(e).__name__}: {e}); check "
                                  f"the URL (and that it is reachable from here), or remove {self.field} to "
                                  "scrape the pods directly") from None
        try:
            doc = r.json()
        except ValueError:
            doc = {}
        if r.status_code != 200 or doc.get("status") != "success":
            why = doc.get("error") or r.text[:200]
            raise PrometheusError(f"{self.field}: {self.url}{path} answered HTTP {r.status_code}: {why}; is "
                                  f"{self.url} a Prometheus server (its base URL, without /api/v1)?")
        return doc["data"]

    def check(self) -> dict[str, Any]:
        """Fail with a clear message unless the server answers a query; returns its build info when given."""
        self._api("/api/v1/query", {"query": "vector(1)"})
        try:
            return self._api("/api/v1/status/buildinfo", {}) or {}
        except PrometheusError:
            return {}

    def selector(self, metric: str | None = None) -> str:
        """The series selector of the deployment's pods (optionally of one metric name)."""
        pods = "|".join(_re_escape(p) for p in sorted(self.targets))
        matchers = [f'{self.pod_label}=~"{pods}"'] + ([f'namespace="{self.namespace}"'] if self.namespace else [])
        return f"{metric or ''}{{{','.join(matchers)}}}"

    def present(self) -> set[str]:
        """Pods that Prometheus currently has an `up` series for."""
        res = self._api("/api/v1/query", {"query": self.selector("up")})
        return {s["metric"].get(self.pod_label, "") for s in res.get("result", [])} & set(self.targets)

    def wait_for_targets(self, timeout_s: float, poll_s: float = 1.0) -> None:
        """Wait until Prometheus scrapes every pod; raise naming the missing ones and the fix."""
        deadline = time.monotonic() + timeout_s
        seen: set[str] = set()
        while True:
            seen = self.present()
            if seen >= set(self.targets):
                return
            if time.monotonic() >= deadline:
                missing = sorted(set(self.targets) - seen)
                raise PrometheusError(
                    f"{self.field}: {self.url} has no series for pod(s) {', '.join(missing)} after "
                    f"{timeout_s:.0f} s: it is not scraping them. On a cluster with the Prometheus operator apply "
                    "`pdlab manifests --monitoring PARAMS` (a PodMonitor); on ACK enable Managed Prometheus for "
                    f"the namespace{'; locally point file_sd_configs at metrics.file_sd' if not self.namespace else ''}"
                    f"; or remove {self.field} to scrape the pods directly")
            time.sleep(poll_s)

    def settle(self, after_unix: float, timeout_s: float | None = None, poll_s: float = 0.25) -> float:
        """Wait until Prometheus has scraped every pod after `after_unix` (so the run's last state is in);
        returns the latest scrape time seen (`after_unix` when that did not happen within `timeout_s`,
        default three steps)."""
        deadline = time.monotonic() + (timeout_s if timeout_s is not None else 3 * self.step_s)
        while True:
            res = self._api("/api/v1/query", {"query": f"timestamp({self.selector('up')})"}).get("result", [])
            last = {r["metric"].get(self.pod_label): float(r["value"][1]) for r in res}
            if set(self.targets) <= set(last) and min(last[p] for p in self.targets) >= after_unix:
                return max(last[p] for p in self.targets)
            if time.monotonic() >= deadline:
                return after_unix
            time.sleep(poll_s)

    def frame(self, start_unix: float, end_unix: float, *, t0_unix: float | None = None) -> pd.DataFrame:
        """Every series of the pods over [start, end] as the scraper's long-format DataFrame."""
        step = max(self.step_s, (end_unix - start_unix) / MAX_POINTS)
        t0 = start_unix if t0_unix is None else t0_unix
        end = start_unix + math.ceil((end_unix - start_unix) / step) * step  # the last step sees the last scrape
        data = self._api("/api/v1/query_range", {"query": self.selector(), "start": f"{start_unix:.3f}",
                                                 "end": f"{end:.3f}", "step": f"{step:.3f}"})
        return series_frame(data.get("result", []), self.targets, t0, pod_label=self.pod_label)


def source_for(exp: Experiment) -> PrometheusSource | None:
    """The experiment's Prometheus source (backend.k8s.prometheus on k8s, else metrics.prometheus), or None
    when server metrics are scraped from each endpoint directly."""
    k8s = exp.backend.kind == "k8s"
    url = (exp.backend.k8s.prometheus if k8s else None) or exp.metrics.prometheus
    if not url:
        return None
    field = "backend.k8s.prometheus" if k8s and exp.backend.k8s.prometheus else "metrics.prometheus"
    return PrometheusSource(url, {}, namespace=exp.namespace if k8s else None, step_s=exp.metrics.step_s,
                            token_env=exp.metrics.token_env, field=field, pod_label=exp.metrics.pod_label)


def series_frame(result: Iterable[dict], targets: Mapping[str, str], t0_unix: float, *,
                 pod_label: str = "pod") -> pd.DataFrame:
    """A query_range matrix result → rows (time, t, name, role, metric, labels JSON, value).

    The labels of a pod's `up` series are its target labels (what the scrape config added): they are
    dropped, and a metric label Prometheus renamed to `exported_<name>` on a clash gets its name back."""
    result = list(result)
    added: dict[str, set[str]] = {}
    for s in result:
        m = s.get("metric", {})
        if m.get("__name__") == "up":
            added.setdefault(m.get(pod_label, ""), set()).update(k for k in m if k != "__name__")
    rows = []
    for s in result:
        m = dict(s.get("metric", {}))
        name = m.pop("__name__", "")
        pod = m.get(pod_label, "")
        if pod not in targets or name in SELF_SERIES:
            continue
        drop = added.get(pod, TARGET_LABELS)
        own = {k: v for k, v in m.items() if k not in drop}
        for k in [k for k in own if k.startswith("exported_") and k[9:] in drop]:
            own[k[9:]] = own.pop(k)
        metric = "pdlab:scrape_up" if name == "up" else name
        labels = json.dumps({} if name == "up" else own, sort_keys=True)
        for ts, v in s.get("values", []):
            rows.append((float(ts), float(ts) - t0_unix, pod, targets[pod], metric, labels, float(v)))
    df = pd.DataFrame(rows, columns=COLUMNS)
    if not len(df):
        return df
    return df.astype({"time": float, "t": float, "value": float}).sort_values(["time", "name"], kind="stable",
                                                                              ignore_index=True)


def write_file_sd(path: Path | str, endpoints: Iterable[Any]) -> Path:
    """Write a Prometheus file_sd target list (host:port of each metrics URL, labelled pod and role)."""
    groups = []
    for e in endpoints:
        url = getattr(e, "metrics_url", None)
        if not url:
            continue
        u = httpx.URL(url)
        groups.append({"targets": [f"{u.host}:{u.port}"], "labels": {"pod": e.name, "role": e.role,
                                                                     "__metrics_path__": u.path or "/metrics"}})
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(p, json.dumps(groups, indent=1))
    return p


def _re_escape(s: str) -> str:
    """Escape a pod name for a PromQL regex (RE2; names are DNS labels, so only '.' needs it)."""
    return "".join("\\\\" + ch if ch in ".+*?()[]{}|^$\\" else ch for ch in s)


__all__ = ["PrometheusError", "PrometheusSource", "series_frame", "source_for", "write_file_sd"]
