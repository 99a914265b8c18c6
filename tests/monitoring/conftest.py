"""Fixtures for the monitor's tests: compact settings (1-minute short window) and an in-memory alert sink."""

from __future__ import annotations

import pytest

from harness.monitor import ListSink, fast_settings
from monitoring.settings import MonitorSettings


@pytest.fixture
def settings() -> MonitorSettings:
    return fast_settings()


@pytest.fixture
def sink() -> ListSink:
    return ListSink()
