"""Shared fixtures. Integration fixtures start real services once per session (see tests/support/services.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.services import kafka_broker, redis_server
from harness.worker import Topics, known_pole_bundle


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """Bootstrap address of a real Kafka-protocol broker for this test session."""
    with kafka_broker() as bootstrap:
        yield bootstrap


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a redis-server started for this test session on a free port."""
    with redis_server() as url:
        yield url


@pytest.fixture
def topics() -> Topics:
    """Fresh topic names per test (worker and reliability tests share the broker of the session)."""
    return Topics()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """The known-pole model bundle (pole at x = 0.5) the worker tests use."""
    return known_pole_bundle(tmp_path / "kp.zpb")
