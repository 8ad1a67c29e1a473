"""`pdlab plan`: the recommendation (default) or the rate curve (--rate-curve), printed as text or --json."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pdlab.core.errors import PdlabError, SpecError
from pdlab.core.fsutil import write_atomic
from pdlab.experiment.loader import load_experiment
from pdlab.experiment.topology import build
from pdlab.plan.emit import PLAN, PREDICTIONS, emit
from pdlab.plan.planner import format_plan, plan
from pdlab.plan.report import format_plan as format_recommendation
from pdlab.plan.report import summarize
from pdlab.plan.search import search

PLAN_MAX_REQUESTS = 200_000  # --rate-curve: simulated requests per arm (the engine does a few thousand per second)


def run(params: str, overrides: list[str], *, budget: int | None = None, tp: int | None = None,
        rate_curve: bool = False, as_json: bool = False, emit_dir: str | None = None, csv: str | None = None) -> int:
    """Plan for `params`; returns the exit code (0, also when no configuration meets the SLO)."""
    exp = load_experiment(params, overrides)
    if tp is not None and not rate_curve:
        raise SpecError("--tp fixes one TP for the rate curve; add --rate-curve, or drop --tp (the search tries "
                        "every TP that fits)", field="--tp")
    if rate_curve:
        if emit_dir:
            raise SpecError("--emit needs the search (drop --rate-curve)", field="--emit")
        per_arm = sum(v for k, v in exp.workload.levels if k == "rate") * (exp.workload.duration_s or 60)
        if per_arm > PLAN_MAX_REQUESTS:
            raise SpecError(f"the plan would simulate {per_arm:,.0f} requests per arm (limit {PLAN_MAX_REQUESTS:,}, "
                            "about a minute each); lower workload.rates or workload.duration_s, e.g. --set "
                            "workload.duration_s=60", file=params, field="workload.duration_s")
        print(f"planning {exp.model.name} on {exp.gpu.type}: every arm at equal GPU count, rates "
              f"{', '.join(f'{v:g}' for k, v in exp.workload.levels if k == 'rate')} req/s, "
              f"{exp.workload.duration_s or 60:g} s each, in virtual time", file=sys.stderr)
        table = plan(exp, budget=budget, tp=tp)
        if as_json:
            print(table.to_json(orient="records"))
        else:
            print(format_plan(table))
        _write_csv(csv, table)
        return 0
    budget = budget or build(exp).gpus
    print(f"planning {exp.model.name} on {budget}× {exp.gpu.type}: every TP that fits, colocated and PD, "
          f"highest rate meeting the SLO, in virtual time", file=sys.stderr)
    try:
        found = search(exp, budget)
    except SpecError as e:
        if e.file or (e.field or "").startswith("--"):
            raise
        raise SpecError(e.message, file=params, field=e.field) from None
    result = summarize(exp, found, budget)
    if emit_dir:
        result["emitted"] = [str(Path(emit_dir) / n) for n in ("params.yaml", "sweep.yaml", PREDICTIONS, PLAN)]
        emit(exp, found, emit_dir, plan=result)
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(format_recommendation(result))
        if emit_dir:
            print(f"\nwrote {', '.join(str(Path(p)) for p in result['emitted'])}; measure it with "
                  f"`pdlab sweep {Path(emit_dir) / 'sweep.yaml'}`")
    if csv:
        import pandas as pd

        _write_csv(csv, pd.DataFrame(result["configs"]))
    return 0


def _write_csv(path: str | None, table: Any) -> None:
    """The table as CSV, atomically; an unwritable path is one clear error and leaves nothing behind."""
    if not path:
        return
    try:
        write_atomic(Path(path), table.to_csv(index=False))
    except OSError as e:
        raise PdlabError(f"--csv {path}: cannot write ({e.strerror or e}); give a writable file path") from None
