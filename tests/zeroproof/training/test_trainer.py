from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from zeroproof.layers import ProjectiveMLP, known_pole_model
from zeroproof.losses import LossWeights
from zeroproof.training import (
    EarlyStoppingConfig,
    SCMTrainer,
    ThresholdPerturbation,
    TrainerConfig,
)

pytestmark = pytest.mark.unit

POLE = 0.25


def pole_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """y = 1/(x - POLE) on [-1, 1], a few inputs exactly at the pole (+∞ by the D → +0 convention)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 2 - 1
    x[:: max(n // 20, 1)] = POLE
    y = 1.0 / (x.double() - POLE)
    y[x == POLE] = math.inf
    return x, y.float()


class DropoutMLP(nn.Module):
    """Projective MLP with dropout: training consumes the global torch RNG, which a checkpoint must restore."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ProjectiveMLP(1, 1, hidden=8, depth=1)
        self.drop = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        N, D = self.inner.head(self.drop(self.inner.backbone(x)))
        return N, D


def make_trainer(seed: int = 0, dropout: bool = False, **overrides: object) -> SCMTrainer:
    torch.manual_seed(seed)
    model: nn.Module = DropoutMLP() if dropout else ProjectiveMLP(1, 1, hidden=8, depth=1)
    cfg = TrainerConfig(batch_size=32, lr=1e-2, progress=False, seed=seed, **overrides)  # type: ignore[arg-type]
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    return SCMTrainer(model, cfg, optimizer=opt, scheduler=sched)


def test_history_keys_per_epoch() -> None:
    trainer = make_trainer()
    x, y = pole_data(128)
    xv, yv = pole_data(64, seed=1)
    history = trainer.fit((x, y), (xv, yv), epochs=3)
    for key in (
        "loss",
        "fit_loss",
        "margin_loss",
        "sign_loss",
        "rejection_loss",
        "coverage",
        "gap_rate",
        "bottom_rate",
        "coverage_nonsingular",
        "tau_train",
        "lr",
        "val_loss",
        "val_sign_loss",
        "val_coverage",
        "val_gap_rate",
        "val_coverage_nonsingular",
        "val_bottom_rate_singular",
        "val_sign_accuracy",
    ):
        assert key in history, key
        assert len(history[key]) == 3, key
    assert "sign_loss" in trainer.history  # the seed page's safety check, as written
    assert history["lr"] == [pytest.approx(1e-2), pytest.approx(5e-3), pytest.approx(5e-3)]
    assert trainer.epoch == 3
    prov = trainer.provenance()
    assert prov["sign_loss_active"] is True
    assert prov["singular_targets_seen"] > 0


def test_sign_loss_not_claimed_active_without_singular_targets() -> None:
    trainer = make_trainer()
    x = torch.linspace(0.5, 1.0, 64).unsqueeze(1)
    trainer.fit((x, 1.0 / (x - POLE)), epochs=1)
    assert trainer.provenance()["sign_loss_active"] is False


def _run(tmp_path: Path, *, interrupt: bool, **overrides: object) -> dict[str, torch.Tensor]:
    x, y = pole_data(96)
    xv, yv = pole_data(32, seed=3)
    if not interrupt:
        trainer = make_trainer(**overrides)
        trainer.fit((x, y), (xv, yv), epochs=4)
        return trainer.model.state_dict()
    first = make_trainer(**overrides)
    first.fit((x, y), (xv, yv), epochs=2)
    path = first.save_checkpoint(tmp_path / "checkpoint.pt", epoch=2)
    torch.manual_seed(999)  # a different process state: the checkpoint must restore everything that matters
    torch.rand(17)
    second = make_trainer(seed=0, **overrides)
    with torch.no_grad():
        for p in second.model.parameters():
            p.add_(1.0)
    assert second.load_checkpoint(path) == 2
    assert second.history["loss"] == first.history["loss"]
    second.fit((x, y), (xv, yv), epochs=4)
    assert len(second.history["loss"]) == 4
    return second.model.state_dict()


@pytest.mark.parametrize(
    "overrides",
    [{}, {"perturb_tau_train": (1e-4, 1e-3), "grad_accumulation": 2}, {"dropout": True}],
    ids=["plain", "perturbed+accumulation", "dropout"],
)
def test_checkpoint_resume_gives_identical_weights(tmp_path: Path, overrides: dict[str, object]) -> None:
    a = _run(tmp_path, interrupt=False, **overrides)
    b = _run(tmp_path, interrupt=True, **overrides)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_checkpoint_file_as_on_the_seed_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    trainer = make_trainer()
    x, y = pole_data(64)
    trainer.fit((x, y), epochs=1)
    # During training
    trainer.save_checkpoint("checkpoint.pt", epoch=50)
    # Resume training
    trainer.load_checkpoint("checkpoint.pt")
    assert trainer.epoch == 50
    # Load for inference only
    model = ProjectiveMLP(1, 1, hidden=8, depth=1)
    checkpoint = torch.load("checkpoint.pt")
    model.load_state_dict(checkpoint["model_state_dict"])
    checkpoint = torch.load("checkpoint.pt", weights_only=True)  # no pickled code in the file
    for key in ("optimizer_state_dict", "scheduler_state_dict", "epoch", "rng", "config", "history"):
        assert key in checkpoint
    assert checkpoint["config"]["loss"]["sign"] == 1.0


def test_gradient_accumulation_matches_one_big_batch() -> None:
    x, y = pole_data(64)
    x = x[x[:, 0] != POLE][:32]
    y = 1.0 / (x - POLE)

    def train(batch: int, accum: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        model = ProjectiveMLP(1, 1, hidden=4, depth=1)
        cfg = TrainerConfig(batch_size=batch, grad_accumulation=accum, shuffle=False, progress=False, lr=1e-2)
        SCMTrainer(model, cfg, optimizer=torch.optim.SGD(model.parameters(), lr=1e-2)).fit((x, y), epochs=1)
        return model.state_dict()

    big, small = train(32, 1), train(8, 4)
    for k in big:
        torch.testing.assert_close(big[k], small[k], rtol=1e-5, atol=1e-6)


def test_early_stopping_ignores_correct_bottom_on_singular_targets() -> None:
    # The exact model is ⊥ at the pole: overall validation coverage is 2/3, coverage on finite targets is 1.
    model = known_pole_model(POLE)
    cfg = TrainerConfig(early_stopping=EarlyStoppingConfig(patience=1, min_coverage=0.99), progress=False, lr=1e-6)
    trainer = SCMTrainer(model, cfg)
    x, y = pole_data(64)
    xv = torch.tensor([[POLE], [0.9], [-0.5]])
    yv = torch.tensor([[math.inf], [1 / 0.65], [-1 / 0.75]])
    trainer.fit((x, y), (xv, yv), epochs=3)
    assert trainer.history["val_coverage"][0] == pytest.approx(2 / 3)
    assert trainer.history["val_coverage_nonsingular"][0] == 1.0
    assert trainer.history["val_bottom_rate_singular"][0] == 1.0
    assert trainer._es_best_epoch >= 1  # the epoch qualified despite the (correct) ⊥


def test_early_stopping_stops_when_coverage_never_qualifies() -> None:
    class AlwaysBottom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return x + self.w, torch.zeros_like(x) * self.w

    cfg = TrainerConfig(early_stopping=EarlyStoppingConfig(patience=2), progress=False)
    trainer = SCMTrainer(AlwaysBottom(), cfg)
    x = torch.rand(16, 1) + 1
    trainer.fit((x, x), (x, x), epochs=10)
    assert trainer.stopped_early
    assert trainer.epoch == 2


def test_threshold_perturbation_range_and_bounded_memory() -> None:
    p = ThresholdPerturbation(1e-4, 1e-2, window=8, seed=0)
    draws = [p.sample() for _ in range(1000)]
    assert all(1e-4 <= d <= 1e-2 for d in draws)
    assert len(p.recent) == 8
    assert p.count == 1000
    assert p.min >= 1e-4 and p.max <= 1e-2
    logs = torch.tensor(draws).log10()
    assert -3.2 < float(logs.mean()) < -2.8  # log-uniform: mean exponent in the middle
    state = p.state_dict()
    q = ThresholdPerturbation(1e-4, 1e-2, window=8, seed=5)
    q.load_state_dict(state)
    assert [q.sample() for _ in range(5)] == [p.sample() for _ in range(5)]
    with pytest.raises(ValueError):
        ThresholdPerturbation(0.0, 1.0)


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="tau_train"):
        TrainerConfig(tau_infer=1e-3, tau_train=1e-4)
    with pytest.raises(ValueError, match="perturb_tau_train"):
        TrainerConfig(tau_infer=1e-3, tau_train=1e-2, perturb_tau_train=(1e-4, 1e-2))
    with pytest.raises(ValueError):
        TrainerConfig(loss=LossWeights(sign=-1.0))


def test_amp_runs_on_cpu() -> None:
    trainer = make_trainer(amp=True)
    x, y = pole_data(64)
    history = trainer.fit((x, y), epochs=1)
    assert math.isfinite(history["loss"][0])
