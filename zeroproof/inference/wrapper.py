"""``SCMInferenceWrapper``: a model that emits ⟨N, D⟩, decoded strictly when in eval mode."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zeroproof.inference.config import InferenceConfig, dtype_threshold
from zeroproof.inference.decode import StrictResult, decode_eager, strict_inference


class SCMInferenceWrapper(nn.Module):
    """Wraps a projective model (``forward(x) -> (N, D)``).

    Train mode returns ``(N, D)`` untouched so losses see the projective pair; eval mode returns
    :class:`StrictResult` ``(decoded, bottom_mask, gap_mask)``. ``torch.jit.script`` scripts the eval-mode
    behaviour (see :class:`StrictDecodeModule`), which is what deployments run.
    """

    def __init__(self, model: nn.Module, config: InferenceConfig | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config if config is not None else InferenceConfig()

    def forward(self, x: Tensor) -> Any:
        N, D = self.model(x)
        if self.training:
            return N, D
        return strict_inference(N, D, self.config)

    def projective(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The raw pair, whatever the mode (for review records and diagnostics)."""
        N, D = self.model(x)
        return N, D

    def __prepare_scriptable__(self) -> StrictDecodeModule:
        return StrictDecodeModule(self.model, self.config)

    def extra_repr(self) -> str:
        return f"tau_infer={self.config.tau_infer}, tau_train={self.config.tau_train}"


class StrictDecodeModule(nn.Module):
    """Model plus strict decode in one scriptable/exportable graph; always decodes.

    Thresholds are stored pre-rounded for each float dtype, so the scripted graph and ONNX compare in the
    tensor's own dtype exactly as eager PyTorch does.
    """

    def __init__(self, model: nn.Module, config: InferenceConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else InferenceConfig()
        self.model = model
        self.tau_infer: float = cfg.tau_infer
        self.tau_train: float = cfg.effective_tau_train
        self.ti16: float = dtype_threshold(cfg.tau_infer, torch.float16)
        self.tt16: float = dtype_threshold(cfg.effective_tau_train, torch.float16)
        self.tibf16: float = dtype_threshold(cfg.tau_infer, torch.bfloat16)
        self.ttbf16: float = dtype_threshold(cfg.effective_tau_train, torch.bfloat16)
        self.ti32: float = dtype_threshold(cfg.tau_infer, torch.float32)
        self.tt32: float = dtype_threshold(cfg.effective_tau_train, torch.float32)
        self.ti64: float = dtype_threshold(cfg.tau_infer, torch.float64)
        self.tt64: float = dtype_threshold(cfg.effective_tau_train, torch.float64)

    def thresholds(self, dtype: torch.dtype) -> tuple[float, float]:
        if dtype == torch.float16:
            return self.ti16, self.tt16
        if dtype == torch.bfloat16:
            return self.tibf16, self.ttbf16
        if dtype == torch.float64:
            return self.ti64, self.tt64
        return self.ti32, self.tt32

    def forward(self, x: Tensor) -> StrictResult:
        N, D = self.model(x)
        ti, tt = self.thresholds(D.dtype)
        decoded, bottom, gap = decode_eager(N, D, ti, tt)
        return StrictResult(decoded, bottom, gap)


class DecodeOnly(nn.Module):
    """Just the decode, ⟨N, D⟩ in, triple out: exported on its own to probe a runtime's ⊥ semantics."""

    def __init__(self, config: InferenceConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else InferenceConfig()
        self.ti32: float = dtype_threshold(cfg.tau_infer, torch.float32)
        self.tt32: float = dtype_threshold(cfg.effective_tau_train, torch.float32)

    def forward(self, N: Tensor, D: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        return decode_eager(N, D, self.ti32, self.tt32)
