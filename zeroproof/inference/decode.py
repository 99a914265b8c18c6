"""The strict decode of a projective pair ⟨N, D⟩: the one definition every runtime follows (contract §1).

``bottom`` (⊥) where ``|D| < tau_infer``, N or D is NaN/±inf, or N/D is not finite; ``gap`` where not ⊥ and
``|D| < tau_train``; otherwise the value N/D. ``decoded`` is NaN exactly at ⊥.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from zeroproof.inference.config import InferenceConfig

Backend = Literal["auto", "eager", "fused"]

#: Below this many elements the eager path's fixed cost is small enough that dispatch isn't worth it.
FUSED_MIN_ELEMENTS = 4096


class StrictResult(NamedTuple):
    """Unpacks as ``decoded, bottom_mask, gap_mask`` (the seed page's triple)."""

    decoded: Tensor
    bottom_mask: Tensor
    gap_mask: Tensor


def decode_eager(N: Tensor, D: Tensor, tau_infer: float, tau_train: float) -> tuple[Tensor, Tensor, Tensor]:
    """Reference decode in plain tensor ops; TorchScript- and ONNX-exportable.

    ``tau_infer``/``tau_train`` must already be representable in the inputs' dtype
    (:meth:`InferenceConfig.thresholds_for`); pass ``tau_train == tau_infer`` for "no gap".

    Comparisons that produce bool tensors are the expensive ops on CPU, so every non-finite case is folded
    into one float ``w`` first: ``q - q`` is 0 for finite ``q`` and NaN otherwise (covers non-finite N and
    overflow), ``|D| - |D|`` is NaN for an infinite or NaN ``D``; adding them to ``|D|`` (exact: ``x + 0 == x``)
    leaves ``|D|`` where everything is finite and NaN elsewhere. NaN fails every comparison, so ``w >= tau_infer``
    is the complete "not ⊥" test and ``w < tau_train`` the gap test.
    """
    abs_d = torch.abs(D)
    q = torch.div(N, D)
    w = torch.sub(q, q)
    w.add_(abs_d)
    w.add_(torch.sub(abs_d, abs_d))
    ok = torch.ge(w, tau_infer)
    gap = torch.lt(w, tau_train)
    gap.logical_and_(ok)
    decoded = torch.where(ok, q, torch.full([], float("nan"), dtype=q.dtype, device=q.device))
    return decoded, torch.logical_not(ok), gap


def _as_float_pair(N: Tensor, D: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(N, Tensor):
        N = torch.as_tensor(N)
    if not isinstance(D, Tensor):
        D = torch.as_tensor(D)
    dtype = torch.result_type(N, D)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    if N.dtype != dtype:
        N = N.to(dtype)
    if D.dtype != dtype:
        D = D.to(dtype)
    if N.shape != D.shape:
        try:
            N, D = torch.broadcast_tensors(N, D)  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise ValueError(f"N and D must have the same shape, got {tuple(N.shape)} and {tuple(D.shape)}") from exc
    return N, D


def strict_inference(
    N: Tensor,
    D: Tensor,
    config: InferenceConfig | None = None,
    *,
    backend: Backend = "auto",
) -> StrictResult:
    """Decode ⟨N, D⟩ strictly; returns ``(decoded, bottom_mask, gap_mask)``.

    ``backend="auto"`` uses the fused single-pass kernel (numba on CPU, Triton on CUDA) for large float32/64
    tensors when it is installed, else the eager path; all backends give bit-identical masks and values.
    """
    cfg = config if config is not None else InferenceConfig()
    N, D = _as_float_pair(N, D)
    tau_infer, tau_train = cfg.thresholds_for(D.dtype)
    if backend != "eager":
        from zeroproof.inference import fused

        if backend == "fused" or (N.numel() >= FUSED_MIN_ELEMENTS and fused.supports(N, D)):
            return StrictResult(*fused.decode_fused(N, D, tau_infer, tau_train))
    return StrictResult(*decode_eager(N, D, tau_infer, tau_train))
