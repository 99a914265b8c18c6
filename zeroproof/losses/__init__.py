"""Losses and metrics for projective models: target lifting, the SCM losses, coverage."""

from zeroproof.losses.coverage import coverage_metric
from zeroproof.losses.scm import (
    LossBreakdown,
    LossWeights,
    implicit_fit_loss,
    loss_thresholds,
    margin_loss,
    rejection_loss,
    scm_loss,
    sign_consistency_loss,
    soft_bottom_probability,
)
from zeroproof.losses.targets import LiftedTargets, TargetStatus, lift_targets, unlift

__all__ = [
    "LiftedTargets",
    "LossBreakdown",
    "LossWeights",
    "TargetStatus",
    "coverage_metric",
    "implicit_fit_loss",
    "lift_targets",
    "loss_thresholds",
    "margin_loss",
    "rejection_loss",
    "scm_loss",
    "sign_consistency_loss",
    "soft_bottom_probability",
    "unlift",
]
