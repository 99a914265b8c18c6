from __future__ import annotations

import pytest
import torch

from zeroproof.inference import InferenceConfig, strict_inference
from zeroproof.layers import ProjectiveMLP, ProjectiveRationalLayer, known_pole_model

pytestmark = pytest.mark.unit


def test_fresh_layer_denominator_is_anchored_at_one() -> None:
    layer = ProjectiveRationalLayer(3, 2, numerator_degree=2, denominator_degree=3)
    _, D = layer(torch.randn(16, 3))
    assert torch.equal(D, torch.ones(16, 2))


def test_known_pole_model_is_exact_away_from_the_pole() -> None:
    model = known_pole_model(0.25)
    x = torch.tensor([[-1.0], [0.0], [1.0], [0.25]])
    N, D = model(x)
    res = strict_inference(N.detach(), D.detach(), InferenceConfig())
    assert res.bottom_mask.squeeze(1).tolist() == [False, False, False, True]
    assert res.decoded[:3, 0].tolist() == pytest.approx([1 / (-1.25), 1 / (-0.25), 1 / 0.75])
    with pytest.raises(ValueError):
        known_pole_model(0.0)


def test_shared_denominator_puts_every_output_at_the_same_pole() -> None:
    per_output = ProjectiveRationalLayer(2, 3)
    shared = ProjectiveRationalLayer(2, 3, shared_denominator=True)
    with torch.no_grad():
        for layer in (per_output, shared):
            layer.denominator.weight.normal_()
    _, d_per = per_output(torch.randn(5, 2))
    _, d_shared = shared(torch.randn(5, 2))
    assert d_shared.shape == (5, 3) and torch.equal(d_shared[:, 0], d_shared[:, 2])
    assert not torch.equal(d_per[:, 0], d_per[:, 2])


def test_projective_mlp_shapes_and_validation() -> None:
    model = ProjectiveMLP(4, 2, hidden=16, depth=3, activation="relu")
    N, D = model(torch.randn(7, 4))
    assert N.shape == D.shape == (7, 2)
    with pytest.raises(ValueError, match="activation"):
        ProjectiveMLP(4, 2, activation="nope")
    with pytest.raises(ValueError):
        ProjectiveRationalLayer(0, 1)
