from __future__ import annotations

import math

import pytest
import torch

from zeroproof.training import choose_tau_infer, default_candidates, sweep_tau_infer
from zeroproof.training.calibration import rows_to_json, rows_to_markdown

pytestmark = pytest.mark.unit


def test_sweep_reports_coverage_gap_and_error_per_candidate() -> None:
    # |D| spread over decades; N = D * value so that every accepted decode is exact except where noted.
    D = torch.tensor([1e-8, 1e-6, 1e-5, 1e-3, 1e-1, 1.0, 0.0], dtype=torch.float64)
    N = torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    y = N / D
    y[-1] = math.inf  # the D = 0 row is a genuine pole
    y[0] = 2e8  # the model is off by a factor 2 at the smallest finite |D|
    rows = sweep_tau_infer(N, D, y, candidates=[1e-9, 1e-7, 1e-4], gap_ratio=100.0)
    assert [r.tau_infer for r in rows] == [1e-9, 1e-7, 1e-4]
    r0, r1, r2 = rows
    assert r0.bottom_rate == pytest.approx(1 / 7)  # only D = 0
    assert r0.bottom_rate_singular == 1.0 and r0.bottom_rate_finite == 0.0
    assert r0.gap_rate == pytest.approx(1 / 7)  # 1e-8 in [1e-9, 1e-7)
    assert r0.max_abs_error_accepted == pytest.approx(1e8)
    assert r1.bottom_rate == pytest.approx(2 / 7)
    assert r1.gap_rate == pytest.approx(1 / 7)  # gap [1e-7, 1e-5): 1e-6 only (1e-5 is not < 1e-5)
    assert r1.max_abs_error_accepted == pytest.approx(0.0)
    assert r2.bottom_rate == pytest.approx(4 / 7)
    assert r2.coverage == pytest.approx(3 / 7)
    assert r2.accepted_rate == pytest.approx(r2.coverage - r2.gap_rate)
    assert "tau_infer" in rows_to_markdown(rows)
    assert rows_to_json(rows)[0]["tau_infer"] == 1e-9


def test_choose_prefers_the_most_conservative_that_meets_limits() -> None:
    D = torch.logspace(-9, 0, 1000, dtype=torch.float64)
    N = torch.ones_like(D)
    rows = sweep_tau_infer(N, D, N / D, candidates=default_candidates(1e-9, 1e-1, 1), gap_ratio=10.0)
    best = choose_tau_infer(rows, min_coverage=0.7, max_gap_rate=0.2)
    assert best is not None
    assert best.bottom_rate_finite <= 0.3 and best.gap_rate <= 0.2
    assert all(r.tau_infer <= best.tau_infer for r in rows if 1 - r.bottom_rate_finite >= 0.7 and r.gap_rate <= 0.2)
    assert choose_tau_infer(rows, min_coverage=1.0, max_gap_rate=0.0) is None


def test_sweep_without_targets() -> None:
    D = torch.tensor([1e-8, 1.0])
    rows = sweep_tau_infer(torch.ones(2), D, None, candidates=[1e-6], tau_train=1e-4)
    assert rows[0].coverage == 0.5
    assert math.isnan(rows[0].mae_accepted)
