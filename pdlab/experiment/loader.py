"""Params file or mapping → a validated, feasible Experiment: the spec's field checks, then the topology's
GPU accounting (TP per node, GPU budget, packing). The one way pdlab builds an Experiment from input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pdlab.core.errors import SpecError
from pdlab.experiment.spec import (
    Experiment,
    apply_overrides,
    check_context,
    format_validation_error,
    is_sweep_doc,
    read_yaml,
)
from pdlab.experiment.topology import check_feasible


def experiment_from_dict(doc: dict, *, source: str | None = None) -> Experiment:
    """Validate a raw params mapping into an Experiment, raising SpecError on any problem."""
    try:
        exp = Experiment.model_validate(doc)
        check_feasible(exp)
        check_context(exp)
        return exp
    except ValidationError as e:
        raise format_validation_error(e, Experiment, source) from None
    except SpecError as e:
        if source and not e.file:
            raise SpecError(e.message, file=source, field=e.field) from None
        raise


def load_experiment(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> Experiment:
    """Load a params file, apply --set overrides, validate. Errors name the file and the field."""
    doc = read_yaml(path)
    if is_sweep_doc(doc):
        raise SpecError("this is a sweep file (it has sweep/grid/baselines/base); use `pdlab sweep` "
                        "(or `pdlab validate` to list its points)", file=str(path))
    doc = apply_overrides(doc, overrides)
    source = str(path) + (" (with --set " + ", ".join(overrides) + ")" if isinstance(overrides, list) and overrides else "")
    return experiment_from_dict(doc, source=source)
