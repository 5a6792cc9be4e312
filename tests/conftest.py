"""Shared fixtures: small real datasets, a shared-data skip, and quiet local settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.data import resolve_data_root

REPO = Path(__file__).resolve().parents[1]

# Tests must not pick up a developer's cluster by accident.
os.environ.pop("RAY_ADDRESS", None)


def shared_data_root() -> Path | None:
    return resolve_data_root(None)


def require_shared(*parts: str) -> Path:
    """Skip (with the reason) unless the real dataset files exist under the data root."""
    root = shared_data_root()
    if root is None:
        pytest.skip("no data root: set UNLEARN_AUDIT_DATA or place shared/data beside the repo")
    path = root.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared dataset file {path} is absent")
    return path


@pytest.fixture
def repo() -> Path:
    return REPO
