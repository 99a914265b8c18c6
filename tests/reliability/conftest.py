"""Fixtures for the reliability suite (services come from the session fixtures in tests/conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.workers.helpers import Topics, known_pole_bundle


@pytest.fixture
def topics() -> Topics:
    return Topics()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return known_pole_bundle(tmp_path / "kp.zpb")
