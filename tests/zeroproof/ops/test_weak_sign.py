from __future__ import annotations

import pytest
import torch

from zeroproof.inference import InferenceConfig
from zeroproof.ops import HysteresisSign, WeakSignTracker, infinity_sign, weak_sign

pytestmark = pytest.mark.unit


def test_weak_sign_dead_band() -> None:
    x = torch.tensor([-1.0, -1e-5, 0.0, 1e-5, 2e-4, float("nan")])
    assert weak_sign(x, 1e-4).tolist()[:5] == [-1.0, 0.0, 0.0, 0.0, 1.0]
    assert weak_sign(x, 1e-4)[5].item() == 0.0
    with pytest.raises(ValueError, match="band"):
        weak_sign(x, -1.0)


def test_hysteresis_holds_through_the_band_and_flips_only_across_it() -> None:
    h = HysteresisSign(band=0.1)
    seq = [0.05, 0.5, 0.05, -0.05, 0.0, -0.09, -0.2, 0.09, 0.2]
    out = [int(h.update(torch.tensor([v]))[0]) for v in seq]
    assert out == [0, 1, 1, 1, 1, 1, -1, -1, 1]
    h.reset()
    assert int(h.update(torch.tensor([0.0]))[0]) == 0
    with pytest.raises(ValueError, match="shape"):
        h.update(torch.zeros(2))


def test_infinity_sign_reports_only_poles() -> None:
    N = torch.tensor([2.0, -3.0, 0.0, float("nan"), 5.0])
    bottom = torch.tensor([True, True, True, True, False])
    assert infinity_sign(N, bottom).tolist() == [1, -1, 0, 0, 0]
    held = torch.tensor([-1, 0, 1, 1, -1], dtype=torch.int8)
    assert infinity_sign(N, bottom, held).tolist() == [-1, -1, 0, 0, 0]


def test_tracker_keeps_one_state_per_entity_and_is_bounded() -> None:
    tracker = WeakSignTracker(config=InferenceConfig(tau_infer=1e-6, tau_train=1e-4), max_entities=2)
    assert tracker.band == 1e-4
    N = torch.tensor([1.0])
    # robot-a approaches the pole with D < 0, robot-b with D > 0; both end at D ≈ 0 (⊥).
    for d in (-0.1, -1e-3, -1e-5):
        tracker.held_sign("robot-a", torch.tensor([d]))
    for d in (0.1, 1e-3, 1e-5):
        tracker.held_sign("robot-b", torch.tensor([d]))
    at_pole = torch.tensor([1e-9])
    assert tracker.observe("robot-a", N, at_pole, torch.tensor([True])).tolist() == [-1]
    assert tracker.observe("robot-b", N, at_pole, torch.tensor([True])).tolist() == [1]
    tracker.held_sign("robot-c", torch.tensor([0.5]))
    assert len(tracker) == 2
    assert "robot-a" not in tracker  # least recently used evicted
    assert tracker.observe("robot-a", N, at_pole, torch.tensor([True])).tolist() == [1]  # fresh: canonical side
    tracker.reset("robot-b")
    assert "robot-b" not in tracker
    tracker.reset()
    assert len(tracker) == 0
