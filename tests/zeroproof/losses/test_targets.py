from __future__ import annotations

import math

import pytest
import torch

from zeroproof.losses import LiftedTargets, TargetStatus, lift_targets, unlift

pytestmark = pytest.mark.unit


def test_lifting_each_kind() -> None:
    y = torch.tensor([2.5, -0.0, math.inf, -math.inf, math.nan])
    t = lift_targets(y)
    assert t.numerator.tolist()[:4] == [2.5, 0.0, 1.0, -1.0]
    assert t.denominator.tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert t.numerator[4].item() == 0.0  # ⊥ is (0, 0): matches no model pair, never (+1, 0)
    assert t.status.tolist() == [
        TargetStatus.FINITE,
        TargetStatus.FINITE,
        TargetStatus.POS_INF,
        TargetStatus.NEG_INF,
        TargetStatus.BOTTOM,
    ]
    assert t.status.dtype == torch.int8


def test_nan_is_never_conflated_with_positive_infinity() -> None:
    t = lift_targets(torch.tensor([math.nan, math.inf]))
    assert t.status[0] != t.status[1]
    assert (t.numerator[0], t.denominator[0]) != (t.numerator[1], t.denominator[1])
    assert t.bottom_mask.tolist() == [True, False]
    assert t.singular_mask.tolist() == [False, True]
    assert t.infinity_sign.tolist() == [0.0, 1.0]


def test_masks_partition_and_roundtrip() -> None:
    y = torch.tensor([[1.0, math.inf], [math.nan, -math.inf], [-3.0, 0.0]], dtype=torch.float64)
    t = lift_targets(y)
    total = t.finite_mask.int() + t.singular_mask.int() + t.bottom_mask.int()
    assert bool((total == 1).all())
    back = unlift(t)
    assert torch.equal(torch.isnan(back), torch.isnan(y))
    same = (back == y) | (torch.isnan(back) & torch.isnan(y))
    assert bool(same.all())
    assert t.numerator.dtype == torch.float64


def test_dtype_and_integer_input() -> None:
    t = lift_targets(torch.tensor([1, 2]), dtype=torch.float32)
    assert t.numerator.dtype == torch.float32
    assert t.numerator.tolist() == [1.0, 2.0]
    assert isinstance(t.select(torch.tensor([1])), LiftedTargets)
