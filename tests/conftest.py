"""Shared test fixtures: repository paths and the shared CRD directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params"


def _shared() -> Path:
    env = os.environ.get("PDLAB_SHARED")
    for cand in ([Path(env)] if env else []) + [ROOT / "shared", ROOT.parent / "shared"]:
        if (cand / "crds").is_dir():
            return cand
    return ROOT / "tests" / "data"


SHARED = _shared()


@pytest.fixture
def params_dir() -> Path:
    return PARAMS


@pytest.fixture(autouse=True)
def _isolated_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep pdlab's local state files (running processes) out of the user's home during tests."""
    monkeypatch.setenv("PDLAB_STATE_DIR", str(tmp_path_factory.mktemp("pdlab-state")))
