"""From plan to proof: `--emit DIR` writes the winner's params, a sweep that measures the plan, and its predictions.

DIR/params.yaml is the winning deployment (the input params with its topology and rates around its knee);
DIR/sweep.yaml measures it (the base point) and the next configurations plus the best colocated and best PD
(baselines), each at {0.6, 0.8, 0.9, 1.0, 1.1} × its predicted max rate; DIR/plan-predictions.json holds what
the planner predicts for every run of that sweep at every rate, so `pdlab.plan.verify` can put predicted and
measured side by side once `pdlab sweep DIR/sweep.yaml` has run; DIR/plan.json is the plan itself (the --json
object, with the Pareto points) for the report's figure.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from pdlab.core.errors import SpecError
from pdlab.core.fsutil import dump_json, write_atomic
from pdlab.experiment.loader import experiment_from_dict
from pdlab.experiment.spec import Experiment, apply_overrides, resolved
from pdlab.plan.search import Result, Search
from pdlab.plan.simulate import probe, unit_configs
from pdlab.plan.space import deployment_overrides

KNEE = (0.6, 0.8, 0.9, 1.0, 1.1)
PREDICTIONS = "plan-predictions.json"
PLAN = "plan.json"
ARMS = 3  # configurations measured besides the best colocated and best PD


def knee_rates(max_rate: float) -> list[float]:
    """Rates around a predicted knee, rounded to 3 significant digits."""
    return [float(f"{max_rate * k:.3g}") for k in KNEE]


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", label.lower()).strip("-")


def chosen(s: Search, arms: int = ARMS) -> list[Result]:
    """The winner first, then the next `arms` - 1 by tok/s/GPU, plus the best colocated and best PD if missing."""
    ok = sorted((r for r in s.results if r.meets), key=lambda r: -r.tok_s_per_gpu)
    out = ok[:arms]
    for kind in ("colocated", "pd"):
        best = next((r for r in ok if r.candidate.kind == kind), None)
        if best is not None and best not in out:
            out.append(best)
    return out


def emit(exp: Experiment, s: Search, out_dir: str | Path, *, sweep_name: str | None = None,
         plan: dict[str, Any] | None = None) -> list[Path]:
    """Write params.yaml, sweep.yaml, plan-predictions.json (and plan.json, the --json object, when given) into
    `out_dir`; returns their paths."""
    picks = chosen(s)
    if not picks:
        raise SpecError("no configuration meets the SLO, so there is nothing to emit; relax the SLO "
                        "(slo.ttft_ms, slo.tpot_ms, slo.statistic) or raise --budget", field="--emit")
    out = Path(out_dir)
    base_doc = resolved(exp)
    winner = picks[0]
    params = _arm_doc(base_doc, exp, winner)
    experiment_from_dict(params, source=str(out / "params.yaml"))  # what we write must load
    router = base_doc["topology"].get("router", {})
    baselines: dict[str, dict[str, Any]] = {}
    runs = {"base": winner}
    for r in picks[1:]:
        over = deployment_overrides(exp, r.candidate)
        over["topology"] = dict(over["topology"], router=copy.deepcopy(router))
        over["workload.rates"] = knee_rates(r.max_rate)
        name = _slug(r.candidate.label)
        baselines[name] = over
        runs[name] = r
    gpus = {r.candidate.gpus for r in picks}
    sweep = {"sweep": sweep_name or f"plan-{exp.name}",
             "description": f"measure the plan: {winner.candidate.label} and the runners-up at their predicted knees",
             "base": "params.yaml", "baselines": baselines, "repeats": 1, "equal_gpus": len(gpus) == 1}
    predictions = {"model": exp.model.name, "gpu": exp.gpu.type, "slo": exp.slo.model_dump(),
                   "runs": {name: _predict(exp, r, params if name == "base" else
                                            apply_overrides(params, baselines[name]))
                            for name, r in runs.items()}}
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "params.yaml", out / "sweep.yaml", out / PREDICTIONS]
    write_atomic(paths[0], _yaml(params))
    write_atomic(paths[1], _yaml(sweep))
    write_atomic(paths[2], dump_json(predictions))
    if plan is not None:
        paths.append(out / PLAN)
        write_atomic(paths[3], dump_json(plan))
    return paths


def _yaml(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _arm_doc(base_doc: dict, exp: Experiment, r: Result) -> dict:
    over = deployment_overrides(exp, r.candidate)
    over["topology"] = dict(over["topology"], router=base_doc["topology"].get("router", {}))
    over["workload.rates"] = knee_rates(r.max_rate)
    doc = apply_overrides(base_doc, over)
    doc["workload"].pop("concurrencies", None)
    return doc


def _predict(exp: Experiment, r: Result, doc: dict) -> dict[str, Any]:
    """The planner's figures for one arm at each of its sweep rates (the sweep measures the same levels)."""
    arm = experiment_from_dict(doc, source="pdlab plan --emit")
    cfg = unit_configs(exp, r.candidate)
    levels = []
    for rate in arm.workload.rates or []:
        p = probe(exp, r.candidate, cfg, rate, early=False)
        levels.append({"rate": rate, "meets_slo": p.meets, "why": p.why, **p.figures})
    return {"arm": r.candidate.label, "kind": r.candidate.kind, "gpus": r.candidate.gpus,
            "max_rate": r.max_rate, "levels": levels}
