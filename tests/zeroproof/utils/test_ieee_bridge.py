from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from zeroproof.inference import strict_inference
from zeroproof.utils.ieee_bridge import from_ieee, to_ieee

pytestmark = pytest.mark.unit


def test_seed_from_ieee_call() -> None:
    scm_value, bottom_mask = from_ieee(torch.tensor([1.0, float("nan"), float("inf")]))
    assert bottom_mask.tolist() == [False, True, True]
    assert scm_value[0] == 1.0 and torch.isnan(scm_value[1:]).all()


def test_from_ieee_keeps_the_sign_of_infinity() -> None:
    result = from_ieee(torch.tensor([-math.inf, math.inf, math.nan, -2.0, 0.0]))
    assert result.sign.tolist() == [-1, 1, 0, 0, 0]
    assert result.bottom_mask.tolist() == [True, True, True, False, False]
    assert result.value[3] == -2.0


def test_to_ieee_maps_bottom_to_nan_and_feeds_numpy() -> None:
    decoded, bottom, _ = strict_inference(torch.tensor([1.0, 1.0, 3.0]), torch.tensor([2.0, 0.0, 1.0]))
    ieee = to_ieee(decoded, bottom)
    arr = ieee.cpu().numpy()
    assert isinstance(arr, np.ndarray)
    assert arr[0] == 0.5 and math.isnan(arr[1]) and arr[2] == 3.0
    # to_ieee masks even a finite value flagged ⊥ and never modifies its input
    value = torch.tensor([4.0, 5.0])
    out = to_ieee(value, torch.tensor([True, False]))
    assert math.isnan(out[0]) and value[0] == 4.0


def test_round_trip() -> None:
    x = torch.tensor([1.5, math.nan, -math.inf, 2.0])
    value, bottom = from_ieee(x)
    back = to_ieee(value, bottom)
    assert torch.equal(torch.isnan(back), torch.tensor([False, True, True, False]))
    assert back[0] == 1.5 and back[3] == 2.0


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        to_ieee(torch.zeros(3), torch.zeros(2, dtype=torch.bool))


def test_from_ieee_accepts_lists_and_ints() -> None:
    value, bottom = from_ieee([1, 2])
    assert value.dtype.is_floating_point and not bottom.any()
