from __future__ import annotations

import math

import pytest
import torch

from zeroproof.inference import SCMMonitor, WindowedSCMMonitor

pytestmark = pytest.mark.unit


def test_seed_monitor_counts_and_rates() -> None:
    m = SCMMonitor()
    m.update(torch.tensor([True, False, False, False]), torch.tensor([False, True, False, False]))
    m.update(torch.tensor([[False, False], [False, False]]), torch.tensor([[False, False], [False, True]]))
    r = m.report()
    assert r == {
        "coverage": pytest.approx(1 - 1 / 8 - 2 / 8),
        "bottom_rate": 1 / 8,
        "gap_rate": 2 / 8,
        "total_predictions": 8,
    }


def test_zero_predictions_do_not_divide_by_zero() -> None:
    r = SCMMonitor().report()
    assert r["total_predictions"] == 0
    assert all(math.isnan(r[k]) for k in ("coverage", "bottom_rate", "gap_rate"))
    w = WindowedSCMMonitor().report()
    assert w["total_predictions"] == 0 and math.isnan(w["coverage"]) and math.isnan(w["baseline"]["bottom_rate"])


def test_mismatched_masks_are_rejected() -> None:
    with pytest.raises(ValueError, match="elements"):
        SCMMonitor().update(torch.zeros(3, dtype=torch.bool), torch.zeros(4, dtype=torch.bool))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_windowed_monitor_shows_a_sudden_rise_that_lifetime_totals_hide() -> None:
    clock = FakeClock()
    windowed = WindowedSCMMonitor(window=10, baseline_window=100, bucket_seconds=1, clock=clock)
    lifetime = SCMMonitor()
    calm_b = torch.zeros(1000, dtype=torch.bool)
    calm_b[:5] = True  # 0.5 % ⊥
    gap = torch.zeros(1000, dtype=torch.bool)
    for _ in range(600):  # ten minutes of calm traffic
        windowed.update(calm_b, gap)
        lifetime.update(calm_b, gap)
        clock.now += 1
    storm_b = torch.zeros(1000, dtype=torch.bool)
    storm_b[:50] = True  # 5 % ⊥
    for _ in range(10):
        windowed.update(storm_b, gap)
        lifetime.update(storm_b, gap)
        clock.now += 1
    clock.now -= 1
    rep = windowed.report()
    assert rep["bottom_rate"] == pytest.approx(0.05)
    assert rep["baseline"]["bottom_rate"] == pytest.approx(0.005)
    assert windowed.bottom_rate_rise() == pytest.approx(10.0)
    assert lifetime.report()["bottom_rate"] < 0.006  # the lifetime view barely moves
    assert rep["lifetime"]["total_predictions"] == 610_000


def test_windowed_monitor_memory_is_bounded_and_old_data_expires() -> None:
    clock = FakeClock()
    m = WindowedSCMMonitor(window=5, baseline_window=5, bucket_seconds=1, clock=clock)
    for _ in range(1000):
        m.record(bottom=1, gap=0, total=10)
        clock.now += 1
    assert len(m._buckets) <= 11
    clock.now += 100
    assert m.report()["total_predictions"] == 0
    assert math.isnan(m.bottom_rate_rise())  # undefined without data


def test_windowed_monitor_validates_arguments() -> None:
    with pytest.raises(ValueError):
        WindowedSCMMonitor(window=0)
