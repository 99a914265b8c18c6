"""Training projective models: ``SCMTrainer`` with resumable checkpoints, threshold perturbation, calibration."""

from zeroproof.training.calibration import CalibrationRow, choose_tau_infer, default_candidates, sweep_tau_infer
from zeroproof.training.perturbation import ThresholdPerturbation
from zeroproof.training.polish import PolishReport, polish_rational_head
from zeroproof.training.trainer import (
    CHECKPOINT_FORMAT,
    EarlyStoppingConfig,
    SCMTrainer,
    TrainerConfig,
    evaluate_projective,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "CalibrationRow",
    "EarlyStoppingConfig",
    "PolishReport",
    "SCMTrainer",
    "ThresholdPerturbation",
    "TrainerConfig",
    "choose_tau_infer",
    "default_candidates",
    "evaluate_projective",
    "polish_rational_head",
    "sweep_tau_infer",
]
