from __future__ import annotations

import math

import pytest
import torch

from zeroproof.inference import InferenceConfig, dtype_threshold, strict_inference
from zeroproof.losses import (
    LossWeights,
    implicit_fit_loss,
    lift_targets,
    loss_thresholds,
    margin_loss,
    rejection_loss,
    scm_loss,
    sign_consistency_loss,
    soft_bottom_probability,
)

pytestmark = pytest.mark.unit

CFG = InferenceConfig(tau_infer=1e-6, tau_train=1e-4)


def _leaf(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=True)


def test_fit_loss_formula_balanced_and_angle() -> None:
    N, D = _leaf([2.0, 1.0, 0.5, 7.0]), _leaf([1.0, 0.5, 0.25, 3.0])
    y = torch.tensor([3.0, math.inf, -math.inf, math.nan], dtype=torch.float64)
    t = lift_targets(y)
    # finite: (N - yD)^2 / (1 + |y|); ±inf: |D|; NaN: ignored.
    expected = ((2.0 - 3.0) ** 2 / 4.0 + 0.5 + 0.25) / 3
    assert implicit_fit_loss(N, D, t).item() == pytest.approx(expected)
    expected_angle = ((2.0 - 3.0) ** 2 / 10.0 + 0.5 + 0.25) / 3
    assert implicit_fit_loss(N, D, t, normalization="angle").item() == pytest.approx(expected_angle)
    with pytest.raises(ValueError, match="normalization"):
        implicit_fit_loss(N, D, t, normalization="bogus")  # type: ignore[arg-type]


def test_fit_loss_is_zero_on_projectively_equal_pairs_and_has_gradient() -> None:
    t = lift_targets(torch.tensor([2.0, -0.5, math.inf], dtype=torch.float64))
    scale = torch.tensor([3.0, -2.0, 5.0], dtype=torch.float64)
    N = (t.numerator * scale).requires_grad_()
    D = (t.denominator * scale).requires_grad_()
    assert implicit_fit_loss(N, D, t).item() == pytest.approx(0.0)
    N2, D2 = _leaf([1.0, 1.0, 1.0]), _leaf([1.0, 1.0, 0.1])
    implicit_fit_loss(N2, D2, t).backward()
    assert N2.grad is not None and D2.grad is not None
    assert bool((N2.grad[:2] != 0).all()) and bool((D2.grad != 0).all())
    assert N2.grad[2].item() == 0.0  # a ±∞ target constrains only D


def test_fit_loss_ignores_bottom_targets_and_empty_mask_keeps_graph() -> None:
    N, D = _leaf([1e6, 1.0]), _leaf([-3.0, 1.0])
    t = lift_targets(torch.tensor([math.nan, 1.0], dtype=torch.float64))
    assert implicit_fit_loss(N, D, t).item() == 0.0
    loss = implicit_fit_loss(N, D, lift_targets(torch.tensor([math.nan, math.nan], dtype=torch.float64)))
    loss.backward()
    assert loss.item() == 0.0
    assert N.grad is not None and N.grad.abs().sum().item() == 0.0


def test_margin_loss_formula_mask_and_gradient() -> None:
    tau = dtype_threshold(1e-4, torch.float64)
    D = _leaf([0.5e-4, 1.0, 0.0, 0.25e-4])
    t = lift_targets(torch.tensor([1.0, 1.0, math.inf, math.nan], dtype=torch.float64))
    loss = margin_loss(D, t, CFG)
    assert loss.item() == pytest.approx(((1 - 0.5e-4 / tau) + 0.0) / 2)  # ±∞ and ⊥ targets excluded
    loss.backward()
    assert D.grad is not None
    assert D.grad[0].item() < 0  # pushes |D| up
    assert D.grad[1].item() == 0.0 and D.grad[2].item() == 0.0 and D.grad[3].item() == 0.0
    # perturbed tau_train is used, never below tau_infer
    assert margin_loss(_leaf([0.5e-3]), lift_targets(torch.tensor([1.0])), CFG, tau_train=1e-3).item() == (
        pytest.approx(0.5, rel=1e-6)
    )


def test_sign_loss_formula_mask_and_gradient() -> None:
    N = _leaf([-0.5e-3, 2e-3, -1.0, 5.0, -5.0])
    t = lift_targets(torch.tensor([math.inf, math.inf, -math.inf, 1.0, math.nan], dtype=torch.float64))
    loss = sign_consistency_loss(N, t, margin=1e-3)
    assert loss.item() == pytest.approx((1.5e-3 + 0.0 + 0.0) / 3)
    loss.backward()
    assert N.grad is not None
    assert N.grad[0].item() < 0  # wrong orientation: pushed towards +
    assert N.grad[1].item() == 0.0 and N.grad[2].item() == 0.0  # right side of the margin: left alone
    assert N.grad[3].item() == 0.0 and N.grad[4].item() == 0.0  # finite and ⊥ targets: not this loss's business
    with pytest.raises(ValueError, match="margin"):
        sign_consistency_loss(N, t, margin=0.0)


def test_soft_bottom_matches_decode_boundary() -> None:
    ti, _ = loss_thresholds(CFG, torch.float64)
    D = torch.tensor([0.0, ti, 1.0], dtype=torch.float64)
    p = soft_bottom_probability(D, CFG)
    assert p[0].item() == pytest.approx(1.0)
    assert p[1].item() == pytest.approx(0.5)
    assert p[2].item() < 1e-6
    # the hard mask at the same points, from the decode itself (one threshold definition)
    hard = strict_inference(torch.ones(3, dtype=torch.float64), D, CFG).bottom_mask
    assert hard.tolist() == [True, False, False]


def test_rejection_loss_has_real_gradient_and_is_one_sided() -> None:
    D = _leaf([1e-9, 1e-8, 1.0, 1.0])
    t = lift_targets(torch.tensor([1.0, 1.0, 1.0, math.inf], dtype=torch.float64))
    loss = rejection_loss(D, t, CFG, target_coverage=0.95)
    p = soft_bottom_probability(D.detach(), CFG)
    soft_cov = 1 - p[:3].mean().item()
    assert loss.item() == pytest.approx((0.95 - soft_cov) ** 2)
    loss.backward()
    assert D.grad is not None
    assert D.grad[0].item() < 0 and D.grad[1].item() < 0  # |D| pushed up out of ⊥
    assert D.grad[3].item() == 0.0  # singular targets never count against coverage
    high = _leaf([1.0, 2.0])
    ok = rejection_loss(high, lift_targets(torch.tensor([1.0, 2.0])), CFG, target_coverage=0.95)
    ok.backward()
    assert ok.item() == 0.0 and high.grad is not None and high.grad.abs().sum().item() == 0.0


def test_combined_loss_breakdown_and_weights() -> None:
    N, D = _leaf([1.0, -0.2, 0.3]), _leaf([0.5, 1e-5, 1e-9])
    t = lift_targets(torch.tensor([1.0, 2.0, math.inf], dtype=torch.float64))
    w = LossWeights(fit=2.0, margin=0.5, sign=3.0, rejection=4.0)
    parts = scm_loss(N, D, t, CFG, w)
    expected = 2 * parts.fit + 0.5 * parts.margin + 3 * parts.sign + 4 * parts.rejection
    assert parts.total.item() == pytest.approx(expected.item())
    floats = parts.as_floats()
    assert set(floats) == {"loss", "fit_loss", "margin_loss", "sign_loss", "rejection_loss"}
    assert all(v >= 0 for v in floats.values())
    parts.total.backward()
    assert N.grad is not None and D.grad is not None
    assert LossWeights().sign >= 1.0  # the seed's advice for robotics is the default
