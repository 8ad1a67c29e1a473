"""Everything the compare notebook needs from a sweep directory, loaded once: `load(sweep_dir) -> SweepData`.

Builds on `pdlab.analysis.results` (summary rows per run × level, each run's requests and server metrics) and on
`sweep.json`, which `pdlab sweep` writes next to the runs: the display label of each run's arm, its repeat,
and the list of runs the sweep file expands to (runs left over from an older sweep file are ignored; points
without a complete run are listed as missing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from pdlab.analysis import results as _results
from pdlab.core.errors import PdlabError
from pdlab.core.schema import SERVER_METRIC_COLUMNS

SWEEP_JSON = "sweep.json"
GAUGES = ("sglang:num_queue_reqs", "sglang:num_running_reqs", "sglang:token_usage", "sglang:gen_throughput",
          "sglang:num_used_tokens", "sglang:num_prefill_inflight_queue_reqs",
          "sglang:num_decode_prealloc_queue_reqs", "sglang:num_decode_transfer_queue_reqs")
_REQ_COLS = ("level", "level_kind", "level_value", "req_id", "warmup", "t_send", "t_first", "t_end",
             "prompt_tokens", "output_tokens", "ok", "ttft_ms", "tpot_ms", "e2e_ms")


@dataclass
class SweepData:
    """A sweep's tidy tables: summary (run × level), requests, server gauges; arm params; what is missing."""

    path: Path
    name: str
    summary: pd.DataFrame
    requests: pd.DataFrame
    server: pd.DataFrame
    params_by_arm: dict[str, dict] = field(default_factory=dict)
    emulated: bool = False
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    provenance_by_run: dict[str, dict] = field(default_factory=dict)
    params_by_run: dict[str, dict] = field(default_factory=dict)

    @property
    def slo(self) -> tuple[float, float]:
        """(TTFT ms, TPOT ms) of the runs."""
        s = self.summary
        return float(s["slo_ttft_ms"].iloc[0]), float(s["slo_tpot_ms"].iloc[0])

    def describe(self) -> str:
        """One line: model, GPU, workload, SLOs and how many arms, levels and repeats were measured."""
        p = next(iter(self.params_by_arm.values()), {})
        w, ds = p.get("workload") or {}, (p.get("workload") or {}).get("dataset") or {}
        s = self.summary
        if s.empty:
            return "no completed runs"
        from pdlab.analysis.compare import x_column

        n_arms, n_x = s["arm"].nunique(), s[x_column(s)].nunique()
        reps = int(s.groupby(["arm", x_column(s)]).size().max())
        ttft, tpot = self.slo
        return (f"{(p.get('model') or {}).get('name')} on {(p.get('gpu') or {}).get('type')} GPUs · "
                f"{ds.get('kind')} prompts, input ≈ {ds.get('input_len')} / output ≈ {ds.get('output_len')} tokens, "
                f"{w.get('arrival')} arrivals, {w.get('duration_s') or w.get('num_prompts'):g} "
                f"{'s' if w.get('duration_s') else 'prompts'} per level · SLO TTFT ≤ {ttft:g} ms, TPOT ≤ {tpot:g} ms · "
                f"{n_arms} arms × {n_x} load levels × {reps} repeat{'s' if reps > 1 else ''} "
                f"({s['run'].nunique()} runs)")

    def coverage_warnings(self) -> list[str]:
        """Points of the sweep without a complete run, and runs in the directory that are not in the sweep."""
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} point(s) have no complete run and are left out: "
                       f"{', '.join(self.missing)} — see their notebook.ipynb")
        if self.ignored:
            out.append(f"ignored {len(self.ignored)} run(s) in {self.path} that the sweep file does not list: "
                       f"{', '.join(self.ignored)}")
        return out

    @property
    def label(self) -> str:
        """'emulated' or 'measured' — how every figure of this sweep is labelled."""
        return "emulated" if self.emulated else "measured"


def read_sweep_json(sweep_dir: Path | str) -> dict[str, Any]:
    """The sweep.json of a sweep directory ({} if absent)."""
    p = Path(sweep_dir) / SWEEP_JSON
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise PdlabError(f"{p}: unreadable ({e}); re-run `pdlab sweep` to rewrite it") from None


def is_emulated(params: dict, provenance: dict | None = None) -> bool:
    """Whether a run's numbers come from pdlab's emulated workers rather than real engines.

    Local runs with the emulator engine are; so are k8s runs whose cluster is pdlab's fake one
    (provenance.cluster.emulated, set from the nodes' `pdlab.io/emulated` label).
    """
    if ((provenance or {}).get("cluster") or {}).get("emulated"):
        return True
    b = params.get("backend") or {}
    return b.get("kind", "local") == "local" and b.get("engine", "emulator") == "emulator"


def load(sweep_dir: Path | str) -> SweepData:
    """Load a sweep directory (results/<sweep>) for comparison."""
    root = Path(sweep_dir).resolve()
    if not root.is_dir():
        raise PdlabError(f"{root}: no such sweep directory (run `pdlab sweep SWEEP.yaml` first)")
    meta = read_sweep_json(root)
    points = {p["run"]: p for p in meta.get("points", [])}
    summary = _results.load_sweep(root)
    ignored: list[str] = []
    if len(summary) and points:
        extra = sorted(set(summary["run"]) - set(points))
        ignored = extra
        summary = summary[summary["run"].isin(points)].copy()
        summary["repeat"] = summary["run"].map(lambda r: int(points[r].get("repeat", 0)))
    done = set(summary["run"]) if len(summary) else set()
    missing = [r for r in points if r not in done]
    req_parts, srv_parts, params_by_arm, prov_by_run, params_by_run = [], [], {}, {}, {}
    emulated = False
    runs = summary.drop_duplicates("run")[["run", "run_dir", "arm", "repeat"]] if len(summary) else []
    for r in getattr(runs, "itertuples", lambda: [])():
        run_dir = Path(r.run_dir)
        params = yaml.safe_load((run_dir / "params.yaml").read_text()) or {}
        params_by_arm.setdefault(r.arm, params)
        run = _results.load_run(run_dir)
        prov_by_run[r.run], params_by_run[r.run] = run.provenance, params
        emulated = emulated or is_emulated(params, run.provenance)
        if len(run.requests):
            req = run.requests[[c for c in _REQ_COLS if c in run.requests.columns]]
            req_parts.append(req.assign(run=r.run, arm=r.arm, repeat=r.repeat))
        if len(run.server_metrics):
            srv = run.server_metrics[run.server_metrics["metric"].isin(GAUGES)]
            srv_parts.append(srv.assign(run=r.run, arm=r.arm, repeat=r.repeat))
    requests = pd.concat(req_parts, ignore_index=True) if req_parts else pd.DataFrame(
        columns=[*_REQ_COLS, "run", "arm", "repeat"])
    server = pd.concat(srv_parts, ignore_index=True) if srv_parts else pd.DataFrame(
        columns=[*SERVER_METRIC_COLUMNS, "run", "arm", "repeat"])
    return SweepData(path=root, name=meta.get("sweep", root.name), summary=summary.reset_index(drop=True),
                     requests=requests, server=server, params_by_arm=params_by_arm, emulated=emulated,
                     missing=missing, ignored=ignored, meta=meta, provenance_by_run=prov_by_run,
                     params_by_run=params_by_run)
