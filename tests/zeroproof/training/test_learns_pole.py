"""A short training run learns a known 1-D pole y = 1/(x − a): values, ⊥ at the pole, orientation of ∞."""

from __future__ import annotations

import math

import pytest
import torch

from zeroproof.inference import InferenceConfig, strict_inference
from zeroproof.layers import ProjectiveRationalLayer
from zeroproof.ops import infinity_sign
from zeroproof.training import SCMTrainer, TrainerConfig, polish_rational_head

pytestmark = pytest.mark.unit

POLE = 0.25


def test_learns_known_pole() -> None:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(512, 1, generator=g) * 2 - 1
    x[::16] = POLE  # exactly singular inputs, lifted as +∞ (the D → +0 side: x → a⁺)
    y = 1.0 / (x.double() - POLE)
    y[x == POLE] = math.inf
    model = ProjectiveRationalLayer(1, 1)
    cfg = TrainerConfig(batch_size=64, lr=1e-1, progress=False, tau_infer=1e-6, tau_train=1e-4)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.97)
    trainer = SCMTrainer(model, cfg, optimizer=opt, scheduler=sched)
    trainer.fit((x, y.float()), epochs=150)
    assert trainer.history["loss"][-1] < trainer.history["loss"][0] / 100

    test_x = torch.tensor([[-0.9], [-0.2], [0.1], [0.2], [0.3], [0.5], [0.9]])
    with torch.no_grad():
        N, D = model(test_x)
        decoded, bottom, _ = strict_inference(N, D, InferenceConfig())
        truth = 1.0 / (test_x - POLE)
        assert not bool(bottom.any())
        torch.testing.assert_close(decoded, truth, rtol=2e-2, atol=1e-3)
        # at the pole: ⊥, with +∞ orientation (x → a⁺)
        Np, Dp = model(torch.tensor([[POLE]]))
        # SGD alone pins the zero of D to ~1e-5: ⊥ under tau_infer = 1e-4 ...
        res = strict_inference(Np, Dp, InferenceConfig(tau_infer=1e-4, tau_train=1e-3))
        assert bool(res.bottom_mask.all())
        assert infinity_sign(Np, res.bottom_mask).tolist() == [[1]]
    # ... and the closed-form head polish puts it below the default tau_infer = 1e-6.
    names = ["numerator.weight", "numerator.bias", "denominator.weight", "denominator.bias"]
    assert polish_rational_head(model, names, x, y).accepted
    with torch.no_grad():
        Np, Dp = model(torch.tensor([[POLE]]))
        res = strict_inference(Np, Dp, InferenceConfig())
        assert bool(res.bottom_mask.all())
        assert infinity_sign(Np, res.bottom_mask).tolist() == [[1]]
        # just left of the pole the value is hugely negative: the sign flips across the pole
        left = model(torch.tensor([[POLE - 1e-2]]))
        assert float(left[0] / left[1]) < -50
