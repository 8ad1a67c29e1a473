"""Sweep files: a base spec, a grid over field paths, named baselines, repeats → validated points.

```yaml
sweep: ratio-sweep            # results/<sweep>/
base: seed-2p1d.yaml          # params file, relative to this file (or an inline `spec:` mapping)
set: {workload.rates: [1, 2, 4]}   # overrides applied to the base
grid:                         # cartesian product over dotted field paths
  topology.ratio: [1P3D, 2P2D, 3P1D]
baselines:                    # named extra arms: overrides on the base, crossed with the grid axes
  colocated-4x:               # they do not override
    topology: {kind: colocated, worker: {replicas: 4, tp: 2}}
repeats: 1                    # run every point N times (A/A spread for verdicts)
equal_gpus: true              # every arm must use the same GPU count
```
Every point is validated before anything is deployed; errors name the point and the field.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pdlab.core.errors import SpecError
from pdlab.experiment.loader import experiment_from_dict
from pdlab.experiment.spec import (
    Experiment,
    apply_overrides,
    format_validation_error,
    is_sweep_doc,
    parse_override,
    read_yaml,
)
from pdlab.experiment.topology import build


class SweepFile(BaseModel):
    """The raw sweep document."""

    model_config = ConfigDict(extra="forbid")
    sweep: str
    description: str = ""
    base: str | None = None
    spec: dict[str, Any] | None = None
    set: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    baselines: dict[str, dict[str, Any]] = Field(default_factory=dict)
    repeats: int = Field(1, ge=1, le=100)
    equal_gpus: bool = True
    notebooks: dict[str, str] = Field(default_factory=dict, description="override notebook paths: run, compare")

    @field_validator("sweep")
    @classmethod
    def _slug(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"sweep name '{v}' must be letters, digits, '.', '_' or '-' (it names a directory)")
        return v

    @field_validator("grid")
    @classmethod
    def _nonempty(cls, v: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for path, values in v.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"grid axis '{path}' needs a non-empty list of values")
        return v


@dataclass
class Point:
    """One run of a sweep: its directory name, arm, the overrides that make it, and the validated spec."""

    run: str
    arm: str
    overrides: dict[str, Any]
    experiment: Experiment
    repeat: int = 0
    axes: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None

    @property
    def gpus(self) -> int:
        return build(self.experiment).gpus


@dataclass
class Sweep:
    """A loaded sweep: its file, name, base document and expanded points."""

    path: Path
    name: str
    doc: SweepFile
    base: dict[str, Any]
    points: list[Point]


def _slug(value: Any) -> str:
    text = str(value).lower() if not isinstance(value, list) else "-".join(str(v) for v in value)
    return re.sub(r"[^a-z0-9.]+", "-", text).strip("-") or "x"


def _arm_label(exp: Experiment, baseline: str | None) -> str:
    """The arm's legend label: the topology ('2P2D (TP1)', 'colocated 4×TP1'); baselines keep their name
    when their topology alone would not tell them apart (set in load_sweep)."""
    return build(exp).label


def _covered(path: str, overridden: set[str]) -> bool:
    return any(path == o or path.startswith(o + ".") or o.startswith(path + ".") for o in overridden)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and expand a sweep file; every point validated (SpecError naming the point and field)."""
    p = Path(path)
    raw = read_yaml(p)
    if not is_sweep_doc(raw) and set(raw) & set(Experiment.model_fields):
        raise SpecError("this is a params file (one experiment, no 'sweep:'); use `pdlab run` (or `pdlab validate`)",
                        file=str(p))
    try:
        doc = SweepFile.model_validate(raw)
    except ValidationError as e:
        raise format_validation_error(e, SweepFile, str(p)) from None
    if doc.base and doc.spec is not None:
        raise SpecError("give either 'base' (a params file) or 'spec' (inline), not both", file=str(p), field="base")
    if doc.base:
        base_path = (p.parent / doc.base) if not Path(doc.base).is_absolute() else Path(doc.base)
        base = read_yaml(base_path)
    else:
        base = dict(doc.spec or {})
    base = apply_overrides(base, doc.set)
    cli_overrides = dict(parse_override(o) for o in overrides or [])
    if "repeats" in cli_overrides:
        doc.repeats = int(cli_overrides.pop("repeats"))
    # --set on a grid axis collapses that axis to the given value
    grid = {k: ([cli_overrides[k]] if k in cli_overrides else v) for k, v in doc.grid.items()}
    base = apply_overrides(base, {k: v for k, v in cli_overrides.items() if k not in grid})

    points: list[Point] = []
    arms: list[tuple[str | None, dict[str, Any]]] = [(None, {})]
    arms += [(name, over) for name, over in doc.baselines.items()]
    for baseline, base_over in arms:
        axes = {k: v for k, v in grid.items() if not (baseline and _covered(k, set(base_over)))}
        keys = list(axes)
        for combo in itertools.product(*(axes[k] for k in keys)) if keys else [()]:
            over = dict(base_over)
            over.update(dict(zip(keys, combo, strict=True)))
            name_parts = [_slug(baseline)] if baseline else []
            name_parts += [_slug(v) for v in combo]
            where = f"point {'/'.join(name_parts) or 'base'} ({', '.join(f'{k}={v}' for k, v in over.items()) or 'base'})"
            try:
                exp = experiment_from_dict(apply_overrides(base, over), source=f"{p}: {where}")
            except SpecError:
                raise
            for r in range(doc.repeats):
                run = "-".join(name_parts) or "base"
                if doc.repeats > 1:
                    run += f"-r{r + 1}"
                arm = _arm_label(exp, baseline)
                extra = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(keys, combo, strict=True)
                         if not k.startswith(("topology", "workload", "slo"))]
                if extra:
                    arm += " " + " ".join(extra)
                points.append(Point(run=run, arm=arm, overrides=over, experiment=exp,
                                    repeat=r, axes=dict(zip(keys, combo, strict=True)), baseline=baseline))
    by_label: dict[str, set[str | None]] = {}
    for pt in points:
        by_label.setdefault(pt.arm, set()).add(pt.baseline)
    for pt in points:
        if pt.baseline and len(by_label[pt.arm]) > 1:
            pt.arm = f"{pt.baseline} ({pt.arm})"
    if not points:
        raise SpecError("the sweep expands to no points", file=str(p), field="grid")
    names = [pt.run for pt in points]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise SpecError(f"two points share the run name(s) {sorted(dupes)}; give baselines distinct names",
                        file=str(p), field="baselines")
    if doc.equal_gpus:
        counts = {pt.arm: pt.gpus for pt in points}
        if len(set(counts.values())) > 1:
            detail = ", ".join(f"{a}: {g} GPUs" for a, g in counts.items())
            raise SpecError(f"arms use different GPU counts ({detail}); PD and colocated are compared at equal "
                            f"GPU count — fix the grid/baselines or set equal_gpus: false", file=str(p),
                            field="grid")
    return Sweep(path=p, name=doc.sweep, doc=doc, base=base, points=points)
