"""SCM training losses on the projective pair ⟨N, D⟩ against lifted targets.

Every loss here is division-free in the model's outputs (no ``N/D``), so training never evaluates the quantity
that blows up at a pole. Thresholds come from the same :class:`~zeroproof.inference.InferenceConfig` and the same
:func:`~zeroproof.inference.dtype_threshold` rounding the strict decode uses: the ⊥ a loss aims at is the ⊥ the
deployed decode produces.

Masks: the fit loss ignores ⊥ targets; the margin loss sees finite targets only; the sign loss sees ±∞ targets
only; the rejection loss sees finite targets only (a genuinely singular target *should* be ⊥, so it never counts
against coverage).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from zeroproof.inference.config import InferenceConfig, dtype_threshold
from zeroproof.losses.targets import LiftedTargets

#: Keeps ``log10(|D|)`` finite at ``D == 0`` in the rejection surrogate (far below any sensible tau_infer).
_LOG_FLOOR = 1e-30


def loss_thresholds(config: InferenceConfig, dtype: torch.dtype, tau_train: float | None = None) -> tuple[float, float]:
    """``(tau_infer, tau_train)`` rounded to ``dtype`` exactly as the strict decode rounds them.

    ``tau_train`` overrides the configured one (threshold perturbation); it never drops below ``tau_infer``.
    """
    ti = config.tau_infer
    tt = config.effective_tau_train if tau_train is None else max(float(tau_train), ti)
    return dtype_threshold(ti, dtype), dtype_threshold(tt, dtype)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over ``mask``; an empty mask gives a zero that still carries the graph (so ``backward`` works)."""
    count = mask.sum()
    total = torch.where(mask, values, torch.zeros_like(values)).sum()
    if int(count) == 0:
        return total * 0.0
    return total / count


FitNormalization = Literal["balanced", "angle"]


def implicit_fit_loss(
    N: Tensor, D: Tensor, targets: LiftedTargets, *, normalization: FitNormalization = "balanced"
) -> Tensor:
    """Implicit (cross-product) fit of ⟨N, D⟩ to the lifted targets, mean over non-⊥ targets.

    The residual ``r = N·t_D − D·t_N`` is zero exactly when the model's pair and the target pair are
    projectively equal; it is divided only by functions of the *target*, never of the model:

    - finite ``y``: ``r = N − y·D``; ``"balanced"`` (default) uses ``r² / (1 + |y|)``, ``"angle"`` uses
      ``r² / (1 + y²)`` (the squared sine of the angle between the pairs when ``D ≈ 1``). Near a pole
      ``r² / (1 + |y|) ≈ |y|·(D − N/y)²``: large targets weigh more, which locates the zero of ``D`` accurately
      (with ``"angle"`` an error of ``D`` there costs only ``(D − N/y)²``, which vanishes with ``D`` itself).
    - ±∞ target ``(±1, 0)``: ``r = ∓D``; the cost is ``|D|`` (not ``D²``), whose gradient does not fade as
      ``D → 0``, so ``|D|`` is pushed below ``tau_infer`` rather than merely towards it.

    Degenerate ⟨0, 0⟩ is kept away by the denominator anchor and the margin loss.
    """
    tN = targets.numerator.to(N.dtype)
    tD = targets.denominator.to(D.dtype)
    residual = N * tD - D * tN
    finite = targets.finite_mask
    if normalization == "balanced":
        scale = 1.0 + tN.abs()
    elif normalization == "angle":
        scale = 1.0 + tN * tN
    else:
        raise ValueError(f"normalization must be 'balanced' or 'angle', got {normalization!r}")
    safe_scale = torch.where(finite, scale, torch.ones_like(scale))
    per = torch.where(finite, residual * residual / safe_scale, residual.abs())
    return _masked_mean(per, ~targets.bottom_mask)


def margin_loss(
    D: Tensor, targets: LiftedTargets, config: InferenceConfig, *, tau_train: float | None = None
) -> Tensor:
    """Hinge ``relu(1 − |D| / tau_train)`` on finite targets: pushes ``|D|`` out of the gap and the ⊥ zone.

    Normalised by ``tau_train`` so its scale does not depend on how small the threshold is. (Its gradient is
    zero at ``D == 0`` exactly, where ``|D|`` has no direction; finite targets do not sit there in practice.)
    """
    _, tt = loss_thresholds(config, D.dtype, tau_train)
    if tt <= 0:
        return (D * 0.0).sum()
    return _masked_mean(F.relu(1.0 - D.abs() / tt), targets.finite_mask)


def sign_consistency_loss(N: Tensor, targets: LiftedTargets, *, margin: float = 1e-3) -> Tensor:
    """Hinge ``relu(margin − s·N)`` on ±∞ targets (``s = ±1``); nothing elsewhere.

    With the lifting convention ``±∞ = (±1, +0)``, the orientation of the model's ∞ at a pole is ``sign(N)`` on
    the ``D → +0`` side, so this term picks which of ``(N, D)`` and ``(−N, −D)`` the model converges to: the fit
    loss alone cannot (both are projectively the same point). The hinge is zero once ``s·N ≥ margin``, so it
    settles the orientation without pulling ``|N|`` away from what the fit wants (a logistic loss never stops
    pulling), and its gradient is bounded (a hinge divided by a small margin would swamp the fit).
    """
    if margin <= 0:
        raise ValueError("margin must be > 0")
    s = targets.infinity_sign.to(N.dtype)
    return _masked_mean(F.relu(margin - s * N), targets.singular_mask)


def soft_bottom_probability(D: Tensor, config: InferenceConfig, *, temperature: float = 0.25) -> Tensor:
    """Differentiable stand-in for the ⊥ mask: ``sigmoid((log10 tau_infer − log10 |D|) / T)``, T in decades.

    Equals 1/2 at ``|D| == tau_infer`` (the decode's boundary), tends to the hard mask as ``T → 0``, and has a
    gradient over several decades of ``|D|``, unlike the boolean mask (no gradient at all).
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    ti, _ = loss_thresholds(config, D.dtype)
    log_tau = math.log10(max(ti, _LOG_FLOOR))
    log_d = torch.log10(D.abs() + _LOG_FLOOR)
    return torch.sigmoid((log_tau - log_d) / temperature)


def rejection_loss(
    D: Tensor,
    targets: LiftedTargets,
    config: InferenceConfig,
    *,
    target_coverage: float = 0.95,
    temperature: float = 0.25,
) -> Tensor:
    """``relu(target_coverage − soft_coverage)²`` with ``soft_coverage = 1 − mean(soft ⊥)`` over finite targets.

    One-sided: once the (soft) coverage reaches the target the loss and its gradient are zero, so the model is
    not pushed away from poles it should report as ⊥.
    """
    if not 0.0 <= target_coverage <= 1.0:
        raise ValueError("target_coverage must be in [0, 1]")
    p_bottom = soft_bottom_probability(D, config, temperature=temperature)
    soft_coverage = 1.0 - _masked_mean(p_bottom, targets.finite_mask)
    return F.relu(target_coverage - soft_coverage) ** 2


class LossWeights(BaseModel):
    """λ weights and loss hyper-parameters. ``sign >= 1.0`` is the seed page's advice for robotics."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fit: float = Field(default=1.0, ge=0)
    margin: float = Field(default=0.1, ge=0)
    sign: float = Field(default=1.0, ge=0)
    rejection: float = Field(default=0.1, ge=0)
    target_coverage: float = Field(default=0.95, ge=0, le=1)
    sign_margin: float = Field(default=1e-3, gt=0)
    fit_normalization: FitNormalization = "balanced"
    rejection_temperature: float = Field(default=0.25, gt=0)


class LossBreakdown(NamedTuple):
    total: Tensor
    fit: Tensor
    margin: Tensor
    sign: Tensor
    rejection: Tensor

    def as_floats(self) -> dict[str, float]:
        """History-style names: ``loss``, ``fit_loss``, ``margin_loss``, ``sign_loss``, ``rejection_loss``."""
        return {
            "loss": float(self.total.detach()),
            "fit_loss": float(self.fit.detach()),
            "margin_loss": float(self.margin.detach()),
            "sign_loss": float(self.sign.detach()),
            "rejection_loss": float(self.rejection.detach()),
        }


def scm_loss(
    N: Tensor,
    D: Tensor,
    targets: LiftedTargets,
    config: InferenceConfig,
    weights: LossWeights | None = None,
    *,
    tau_train: float | None = None,
) -> LossBreakdown:
    """Weighted sum of the four losses, with each component returned for logging."""
    w = weights if weights is not None else LossWeights()
    N = N.float() if N.dtype in (torch.float16, torch.bfloat16) else N
    D = D.float() if D.dtype in (torch.float16, torch.bfloat16) else D
    fit = implicit_fit_loss(N, D, targets, normalization=w.fit_normalization)
    margin = margin_loss(D, targets, config, tau_train=tau_train)
    sign = sign_consistency_loss(N, targets, margin=w.sign_margin)
    rejection = rejection_loss(
        D, targets, config, target_coverage=w.target_coverage, temperature=w.rejection_temperature
    )
    total = w.fit * fit + w.margin * margin + w.sign * sign + w.rejection * rejection
    return LossBreakdown(total, fit, margin, sign, rejection)
