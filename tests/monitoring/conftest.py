"""Fixtures for the monitor's tests: compact settings (1-minute short window) and an in-memory alert sink."""

from __future__ import annotations

from typing import Any

import pytest

from monitoring.rules import Alert
from monitoring.settings import MonitorSettings

#: 2026-01-15, a multiple of every window length used in the tests.
T0 = 1_768_435_200.0


class ListSink:
    """Collects alerts; implements the same ``AlertSink`` interface as the real sinks."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.ticks = 0
        self.restored: list[Alert] = []

    def emit(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def restore(self, firing: list[Alert]) -> None:
        self.restored += firing

    def tick(self, now: float) -> None:
        self.ticks += 1

    def close(self) -> None:
        return None


def fast_settings(**overrides: Any) -> MonitorSettings:
    """Short windows so that scenarios take minutes of simulated time, not hours."""
    base: dict[str, Any] = dict(
        short_window=60,
        long_window=600,
        bucket=5,
        eval_interval=5,
        allowed_lateness=5,
        coverage_pending=30,
        gap_pending=30,
        bottom_rise_pending=30,
        clear_for=30,
        no_data_after=60,
        min_volume=200,
        baseline_min_volume=1000,
    )
    base.update(overrides)
    return MonitorSettings(**base)


@pytest.fixture
def settings() -> MonitorSettings:
    return fast_settings()


@pytest.fixture
def sink() -> ListSink:
    return ListSink()
