from __future__ import annotations

import pytest
import torch

from zeroproof.losses.coverage import coverage_metric

pytestmark = pytest.mark.unit


def test_coverage_metric_is_one_minus_bottom_rate() -> None:
    assert coverage_metric(torch.tensor([True, False, False, False])) == pytest.approx(0.75)
    assert coverage_metric(torch.zeros(3, 3, dtype=torch.bool)) == 1.0
    assert coverage_metric([True, True]) == 0.0


def test_coverage_metric_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        coverage_metric(torch.zeros(0, dtype=torch.bool))
