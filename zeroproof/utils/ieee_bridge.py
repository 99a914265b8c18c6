"""Bridge between SCM outputs (value + ⊥ mask) and plain IEEE-754 floats.

``to_ieee`` maps ⊥ to NaN. ``from_ieee`` maps NaN and ±inf to ⊥; the orientation of an infinite input is
not thrown away: it is in the result's ``.sign`` (+1 for +inf, -1 for -inf, 0 elsewhere), which is what
target lifting (±inf → (±1, 0)) needs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def to_ieee(decoded: Tensor, bottom_mask: Tensor) -> Tensor:
    """A new tensor equal to ``decoded`` with NaN wherever ``bottom_mask`` is set."""
    if decoded.shape != bottom_mask.shape:
        raise ValueError(f"shape mismatch: decoded {tuple(decoded.shape)} vs mask {tuple(bottom_mask.shape)}")
    if not decoded.dtype.is_floating_point:
        decoded = decoded.to(torch.get_default_dtype())
    return torch.where(bottom_mask.to(torch.bool), torch.full_like(decoded, float("nan")), decoded)


class IEEEDecoded(tuple[Tensor, Tensor]):
    """``(scm_value, bottom_mask)``, unpacking like the seed page, with the sign of ∞ in ``.sign``."""

    sign: Tensor

    def __new__(cls, value: Tensor, bottom_mask: Tensor, sign: Tensor) -> IEEEDecoded:
        obj = super().__new__(cls, (value, bottom_mask))
        obj.sign = sign
        return obj

    @property
    def value(self) -> Tensor:
        return self[0]

    @property
    def bottom_mask(self) -> Tensor:
        return self[1]

    def __getnewargs__(self) -> tuple[Any, ...]:
        return (self[0], self[1], self.sign)


def from_ieee(tensor: Tensor | Any) -> IEEEDecoded:
    """NaN/±inf → ⊥ (value NaN there, as in the strict decode); finite values pass through unchanged."""
    t = tensor if isinstance(tensor, Tensor) else torch.as_tensor(tensor)
    if not t.dtype.is_floating_point:
        t = t.to(torch.get_default_dtype())
    bottom = ~torch.isfinite(t)
    value = torch.where(bottom, torch.full_like(t, float("nan")), t)
    sign = torch.where(torch.isinf(t), torch.sign(t), torch.zeros_like(t)).to(torch.int8)
    return IEEEDecoded(value, bottom, sign)
