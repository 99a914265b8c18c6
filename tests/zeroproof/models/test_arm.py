from __future__ import annotations

import math

import pytest
import torch

from zeroproof.export.bundle import load_bundle, save_bundle
from zeroproof.models import registered
from zeroproof.models.arm import (
    DEFAULT_L1,
    DEFAULT_L2,
    ArmIKMLP,
    ArmIKProjective,
    arm_bucket_data,
    arm_ik_truth,
    generate_arm_data,
    parameter_count,
)

pytestmark = pytest.mark.unit


def test_truth_is_the_inverse_jacobian() -> None:
    x, y = generate_arm_data(256, seed=3, near_fraction=0.0, singular_fraction=0.0)
    x64 = x.double()
    t1, t2 = x64[:, 0], x64[:, 1]
    l1, l2 = DEFAULT_L1, DEFAULT_L2
    J = torch.stack(
        [
            torch.stack([-l1 * torch.sin(t1) - l2 * torch.sin(t1 + t2), -l2 * torch.sin(t1 + t2)], -1),
            torch.stack([l1 * torch.cos(t1) + l2 * torch.cos(t1 + t2), l2 * torch.cos(t1 + t2)], -1),
        ],
        -2,
    )
    expected = torch.linalg.solve(J, x64[:, 2:4])
    torch.testing.assert_close(y, expected, rtol=1e-9, atol=1e-9)
    _, det, _ = arm_ik_truth(x)
    torch.testing.assert_close(det, torch.linalg.det(J))


def test_exactly_singular_targets_are_oriented_infinities() -> None:
    x = torch.tensor([[0.3, 0.0, 0.5, -0.2], [1.0, 0.0, 0.0, 0.0]])
    num, det, y = arm_ik_truth(x)
    assert det.tolist() == [0.0, 0.0]
    assert torch.isinf(y[0]).all()
    assert torch.equal(torch.sign(y[0]), torch.sign(num[0]))  # the θ2 → 0⁺ side, where det J > 0
    assert torch.isnan(y[1]).all()  # dx = dy = 0: 0/0, no value (never +∞)
    # the limit from θ2 → 0⁺ has the same signs
    _, _, y_plus = arm_ik_truth(torch.tensor([[0.3, 1e-6, 0.5, -0.2]]))
    assert torch.equal(torch.sign(y_plus[0]), torch.sign(y[0]))


def test_generated_data_mixture() -> None:
    x, y = generate_arm_data(4000, seed=0, near_fraction=0.2, singular_fraction=0.05)
    assert x.dtype == torch.float32 and x.shape == (4000, 4)
    exact = x[:, 1] == 0
    assert 0.03 < float(exact.float().mean()) < 0.07
    assert torch.isinf(y[exact]).any()
    _, det, _ = arm_ik_truth(x)
    near = (det.abs() < 1e-2) & ~exact
    assert float(near.float().mean()) > 0.1
    assert (x[:, 1].abs() <= math.pi + 1e-6).all()


def test_bucket_data_lands_in_its_buckets() -> None:
    data = arm_bucket_data(50, seed=0)
    bounds = {"le_1e-5": (0, 1e-5), "1e-5_1e-4": (1e-5, 1e-4), "1e-4_1e-3": (1e-4, 1e-3), "gt_1e-3": (1e-3, 10)}
    for name, (lo, hi) in bounds.items():
        x, _ = data[name]
        _, det, _ = arm_ik_truth(x)
        assert x.shape[0] == 50
        assert bool(((det.abs() > lo) & (det.abs() <= hi)).all()), name
    _, det, _ = arm_ik_truth(data["exact"][0])
    assert bool((det == 0).all())


def test_model_shapes_anchor_and_shared_denominator() -> None:
    model = ArmIKProjective(hidden=8)
    x, _ = generate_arm_data(16, seed=1)
    N, D = model(x)
    assert N.shape == D.shape == (16, 2)
    assert torch.equal(D, torch.ones_like(D))  # D = 1 + δQ, δQ = 0 at init
    per_output = ArmIKProjective(hidden=8, shared_denominator=False)
    with torch.no_grad():
        per_output.denominator.weight.normal_()
    _, D2 = per_output(x)
    assert not torch.equal(D2[:, 0], D2[:, 1])
    assert parameter_count(ArmIKMLP(12)) > 0
    assert "arm_ik_projective" in registered()


def test_the_numerator_can_represent_adj_j(tmp_path: object) -> None:
    # Set the weights to the analytic solution: N = adj(J)·d / (l1 l2), D = sin θ2. The decode then equals the truth.
    model = ArmIKProjective(hidden=4, denominator_hidden=0)
    l1, l2 = DEFAULT_L1, DEFAULT_L2
    with torch.no_grad():
        model.coefficients.weight.zero_()
        model.coefficients.bias.zero_()
        w = model.coefficients.weight  # rows: (out1, dx), (out1, dy), (out2, dx), (out2, dy); cols: φ then hidden
        s1, c1, s12, c12 = 0, 1, 4, 5
        w[0, c12] = l2
        w[1, s12] = l2
        w[2, c1], w[2, c12] = -l1, -l2
        w[3, s1], w[3, s12] = -l1, -l2
        w /= l1 * l2
        model.denominator.weight.zero_()
        model.denominator.weight[0, 0] = 1.0  # sin θ2
        model.denominator.bias.fill_(-1.0)  # folded anchor: (1 + b) = 0 exactly
    x, y = generate_arm_data(512, seed=2, near_fraction=0.0, singular_fraction=0.0)
    N, D = model(x)
    torch.testing.assert_close((N / D).double(), y, rtol=1e-3, atol=1e-4)
    _, D0 = model(torch.tensor([[0.7, 0.0, 0.1, 0.2]]))
    assert D0.abs().max().item() == 0.0  # the folded anchor keeps D's zero exact


def test_bundle_roundtrip(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "arm.zpb"
    model = ArmIKProjective(hidden=8)
    save_bundle(model, path, model_version="arm-test", extra={"sign_loss_active": True})
    loaded = load_bundle(path)
    x, _ = generate_arm_data(8, seed=5)
    assert loaded.manifest.in_features == 4 and loaded.manifest.out_features == 2
    for a, b in zip(model(x), loaded.model(x), strict=True):
        assert torch.equal(a, b)
