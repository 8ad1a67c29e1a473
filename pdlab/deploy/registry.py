"""The backend registry: `backend.kind` → a Backend. The concrete backends register here, nowhere else;
add a backend by writing its module and one entry below (docs/architecture.md, "Add a backend")."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from pdlab.core.errors import SpecError

if TYPE_CHECKING:
    from pdlab.deploy.base import Backend
    from pdlab.experiment.spec import Experiment

# kind → "module:factory"; imported on first use so `pdlab plan` never loads the kubernetes client.
_BACKENDS: dict[str, str] = {
    "local": "pdlab.deploy.local:backend_for",
    "k8s": "pdlab.deploy.k8s:backend_for",
}


def register(kind: str, target: str) -> None:
    """Register (or replace) a backend: `target` is 'module:function' taking an Experiment, returning a Backend."""
    _BACKENDS[kind] = target


def kinds() -> list[str]:
    """The registered backend kinds."""
    return sorted(_BACKENDS)


def _factory(kind: str) -> Callable[[Experiment], Backend]:
    try:
        module, name = _BACKENDS[kind].split(":")
    except KeyError:
        raise SpecError(f"unknown backend '{kind}'; use one of {kinds()}", field="backend.kind") from None
    return getattr(importlib.import_module(module), name)


def get_backend(exp: Experiment) -> Backend:
    """The backend an experiment asks for (`backend.kind`)."""
    return _factory(exp.backend.kind)(exp)
