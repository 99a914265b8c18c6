"""Target lifting: real-valued targets (with ±∞ and NaN) to projective pairs plus a status label.

``y`` finite → ``(y, 1)``; ``+∞`` → ``(+1, 0)``; ``-∞`` → ``(-1, 0)``; NaN (⊥, "no value") → ``(0, 0)``, the one
pair no model output can match and the fit loss never looks at. The status label keeps the cases apart, so NaN
is never conflated with +∞ (the reference implementations lift both through ``sign(y)`` and get ``(+1, 0)``).

Orientation convention: ``(±1, 0)`` is the limit of ``(±1, d)`` as ``d → +0``. A lifted ``+∞`` is the value
``N/D`` approached from the side where the denominator is positive; the sign consistency loss teaches a model
that orientation, and :func:`zeroproof.ops.weak_sign.infinity_sign` reports it at decode time.
"""

from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple

import torch
from torch import Tensor


class TargetStatus(IntEnum):
    """Per-element label of a lifted target (stored as ``torch.int8``)."""

    FINITE = 0
    POS_INF = 1
    NEG_INF = 2
    BOTTOM = 3


class LiftedTargets(NamedTuple):
    """``numerator``/``denominator``: the projective target pair; ``status``: :class:`TargetStatus` codes."""

    numerator: Tensor
    denominator: Tensor
    status: Tensor

    @property
    def finite_mask(self) -> Tensor:
        return self.status == TargetStatus.FINITE

    @property
    def singular_mask(self) -> Tensor:
        """±∞ targets (a genuine pole with an orientation)."""
        return (self.status == TargetStatus.POS_INF) | (self.status == TargetStatus.NEG_INF)

    @property
    def bottom_mask(self) -> Tensor:
        """⊥/NaN targets: no value exists; excluded from every fit."""
        return self.status == TargetStatus.BOTTOM

    @property
    def infinity_sign(self) -> Tensor:
        """+1 / -1 on ±∞ targets, 0 elsewhere (float, same dtype as the pair)."""
        sign = torch.zeros_like(self.numerator)
        sign = torch.where(self.status == TargetStatus.POS_INF, torch.ones_like(sign), sign)
        return torch.where(self.status == TargetStatus.NEG_INF, -torch.ones_like(sign), sign)

    def to(self, device: torch.device | str) -> LiftedTargets:
        return LiftedTargets(self.numerator.to(device), self.denominator.to(device), self.status.to(device))

    def select(self, idx: Tensor) -> LiftedTargets:
        return LiftedTargets(self.numerator[idx], self.denominator[idx], self.status[idx])


def lift_targets(y: Tensor, dtype: torch.dtype | None = None) -> LiftedTargets:
    """Lift ``y`` (any shape, may hold ±inf and NaN) to a :class:`LiftedTargets` of the same shape."""
    y = torch.as_tensor(y)
    if not y.dtype.is_floating_point:
        y = y.to(torch.get_default_dtype())
    out_dtype = dtype if dtype is not None else y.dtype
    nan = torch.isnan(y)
    pos = torch.isposinf(y)
    neg = torch.isneginf(y)
    finite = ~(nan | pos | neg)
    status = torch.full(y.shape, int(TargetStatus.FINITE), dtype=torch.int8, device=y.device)
    status[pos] = int(TargetStatus.POS_INF)
    status[neg] = int(TargetStatus.NEG_INF)
    status[nan] = int(TargetStatus.BOTTOM)
    zero = torch.zeros_like(y)
    one = torch.ones_like(y)
    numerator = torch.where(finite, y, zero)
    numerator = torch.where(pos, one, numerator)
    numerator = torch.where(neg, -one, numerator)
    denominator = torch.where(finite, one, zero)
    return LiftedTargets(numerator.to(out_dtype), denominator.to(out_dtype), status)


def unlift(targets: LiftedTargets) -> Tensor:
    """Inverse of :func:`lift_targets`: finite values, ±inf, and NaN for ⊥ (never +inf)."""
    value = targets.numerator.clone()
    value = torch.where(targets.status == TargetStatus.POS_INF, torch.full_like(value, float("inf")), value)
    value = torch.where(targets.status == TargetStatus.NEG_INF, torch.full_like(value, float("-inf")), value)
    return torch.where(targets.status == TargetStatus.BOTTOM, torch.full_like(value, float("nan")), value)
