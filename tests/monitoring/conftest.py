"""Fixtures for the monitor's tests: compact settings (1-minute short window) and an in-memory alert sink."""

from __future__ import annotations

import pytest

from harness.monitor import fast_settings
from monitoring.settings import MonitorSettings
from monitoring.sinks import MemorySink


@pytest.fixture
def settings() -> MonitorSettings:
    return fast_settings()


@pytest.fixture
def sink() -> MemorySink:
    return MemorySink()
