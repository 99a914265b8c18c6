"""Thresholds for the strict decode, validated once so that every consumer can trust them."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

DEFAULT_TAU_INFER = 1e-6
DEFAULT_TAU_TRAIN = 1e-4

_BITS_VIEW: dict[torch.dtype, torch.dtype] = {
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float32: torch.int32,
    torch.float64: torch.int64,
}


class InferenceConfig(BaseModel):
    """Strict decode thresholds.

    ``tau_infer``: ``|D| < tau_infer`` is ⊥. ``tau_train`` (optional): ``tau_infer <= |D| < tau_train`` is the
    gap. Both are compared against ``|D|`` exactly (see :func:`dtype_threshold`), so ``|D| == tau_infer`` is
    never ⊥ whatever the tensor's dtype.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tau_infer: float = DEFAULT_TAU_INFER
    tau_train: float | None = DEFAULT_TAU_TRAIN

    @field_validator("tau_infer", "tau_train")
    @classmethod
    def _finite_non_negative(cls, value: float | None) -> float | None:
        if value is None:
            return None
        if not math.isfinite(value):
            raise ValueError(f"threshold must be finite, got {value!r}")
        if value < 0:
            raise ValueError(f"threshold must be >= 0, got {value!r}")
        return float(value)

    @model_validator(mode="after")
    def _ordered(self) -> InferenceConfig:
        if self.tau_train is not None and self.tau_train < self.tau_infer:
            raise ValueError(
                f"tau_train ({self.tau_train!r}) must be >= tau_infer ({self.tau_infer!r}); "
                "the gap is [tau_infer, tau_train)"
            )
        return self

    @property
    def effective_tau_train(self) -> float:
        """``tau_train`` with ``None`` meaning "no gap" (the gap interval is then empty)."""
        return self.tau_infer if self.tau_train is None else self.tau_train

    def thresholds_for(self, dtype: torch.dtype) -> tuple[float, float]:
        """Both thresholds rounded up to ``dtype``; comparing in ``dtype`` then equals the exact comparison."""
        return dtype_threshold(self.tau_infer, dtype), dtype_threshold(self.effective_tau_train, dtype)


@lru_cache(maxsize=256)
def dtype_threshold(tau: float, dtype: torch.dtype) -> float:
    """Smallest value representable in ``dtype`` that is >= ``tau``.

    For any ``x`` representable in ``dtype``: ``x < tau`` (exact, real numbers) iff ``x < dtype_threshold(tau)``.
    Every runtime (eager, TorchScript, ONNX, numba, the worker) compares against this value in the tensor's
    own dtype, which is why their masks agree bit for bit and why ``|D| == tau_infer`` is exactly the
    boundary even when ``tau_infer`` itself is not representable (1e-6 is not, in float32 or float16).
    """
    if dtype not in _BITS_VIEW:
        raise TypeError(f"strict decode needs a floating dtype, got {dtype}")
    rounded = torch.tensor(tau, dtype=torch.float64).to(dtype)
    if float(rounded) < tau:
        # Positive floats are ordered like their bit patterns: +1 ulp is the next representable value.
        rounded = (rounded.view(_BITS_VIEW[dtype]) + 1).view(dtype)
    return float(rounded)
