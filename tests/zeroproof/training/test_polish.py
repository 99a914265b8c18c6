from __future__ import annotations

import math

import pytest
import torch

from zeroproof.inference import InferenceConfig, strict_inference
from zeroproof.layers import ProjectiveMLP, ProjectiveRationalLayer
from zeroproof.training.polish import polish_rational_head

pytestmark = pytest.mark.unit

POLE = 0.25


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.linspace(-1, 1, 401).unsqueeze(1)
    x[200, 0] = POLE
    y = 1.0 / (x.double() - POLE)
    y[x == POLE] = math.inf
    return x, y


def test_polish_pins_the_pole_and_keeps_orientation() -> None:
    x, y = _data()
    layer = ProjectiveRationalLayer(1, 1)
    with torch.no_grad():  # roughly right (what a short SGD run gives): N ≈ 4, D ≈ 4(x − a), but off by a bit
        layer.numerator.weight.fill_(0.1)
        layer.numerator.bias.fill_(3.7)
        layer.denominator.weight.fill_(4.2)
        layer.denominator.bias.fill_(-1.95)
    cfg = InferenceConfig()
    N, D = layer(torch.tensor([[POLE]]))
    assert not bool(strict_inference(N, D, cfg).bottom_mask.any())  # before: the pole is in the wrong place
    report = polish_rational_head(
        layer, ["numerator.weight", "numerator.bias", "denominator.weight", "denominator.bias"], x, y
    )
    assert report.accepted, report.reason
    assert report.fit_after < report.fit_before / 1e6
    with torch.no_grad():
        N, D = layer(torch.tensor([[POLE], [0.75], [-0.75]]))
        res = strict_inference(N, D, cfg)
    assert res.bottom_mask.flatten().tolist() == [True, False, False]
    assert float(N[0, 0]) > 0  # +∞ orientation (D > 0 on the x > a side) kept
    torch.testing.assert_close(res.decoded[1:].flatten(), torch.tensor([2.0, -1.0]), rtol=1e-5, atol=1e-6)


def test_polish_refuses_non_linear_parameters_and_leaves_the_model_alone() -> None:
    x, y = _data()
    torch.manual_seed(0)
    model = ProjectiveMLP(1, 1, hidden=4, depth=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = polish_rational_head(model, ["backbone.0.weight", "head.denominator.bias"], x, y)
    assert not report.accepted
    assert "not linear" in report.reason
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    with pytest.raises(KeyError):
        polish_rational_head(model, ["nope"], x, y)


def test_polish_keeps_the_scale_when_sgd_left_d_without_its_sign_change() -> None:
    """A short SGD run leaves D ≈ 1 everywhere (no sign change yet). Keeping mean(sign(D_now)·D) then pins nearly
    the plain mean of the solved D, ~0 for data around the pole, and the first solve blows the scale up (D ≈ 100x)
    so the ⊥ band |D| < tau_infer shrinks 100-fold: an input 1e-7 from the pole came out finite (the arm at
    float32 θ2 = ±π). The re-solve with the solved D's own signs keeps mean |D| at its intended value."""
    pole = 0.01
    x = torch.linspace(-1, 1, 401).unsqueeze(1)
    x[200, 0] = pole
    y = 1.0 / (x.double() - pole)
    y[x == pole] = math.inf
    layer = ProjectiveRationalLayer(1, 1)
    with torch.no_grad():
        layer.numerator.weight.fill_(0.0)
        layer.numerator.bias.fill_(1.0)
        layer.denominator.weight.fill_(0.0)
        layer.denominator.bias.fill_(1.0)  # D = 1 (+ the layer's own anchor, if any): positive everywhere
    names = ["numerator.weight", "numerator.bias", "denominator.weight", "denominator.bias"]
    report = polish_rational_head(layer, names, x, y)
    assert report.accepted, report.reason
    assert report.resolves >= 1
    assert 0.5 * report.scale_before <= report.scale_after <= 2.0 * report.scale_before
    near = torch.tensor([[pole + 1e-7]], dtype=torch.float32)
    with torch.no_grad():
        N, D = layer(near)
    assert bool(strict_inference(N, D, InferenceConfig()).bottom_mask.all()), float(D)
    # without the re-solve (the old polish): the scale is blown up and the same input is finite
    blown = ProjectiveRationalLayer(1, 1)
    blown.load_state_dict({k: torch.zeros_like(v) for k, v in layer.state_dict().items()})
    with torch.no_grad():
        blown.numerator.bias.fill_(1.0)
        blown.denominator.bias.fill_(1.0)
    old = polish_rational_head(blown, names, x, y, max_resolves=0)
    assert old.accepted and old.scale_after > 20 * old.scale_before
    with torch.no_grad():
        N, D = blown(near)
    assert not bool(strict_inference(N, D, InferenceConfig()).bottom_mask.any())
