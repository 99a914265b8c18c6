"""ONNX export with the strict decode inside the graph.

Outputs ``decoded``, ``bottom_mask``, ``gap_mask`` (and, by default, ``numerator``/``denominator`` so a runtime's
decode can be audited against its own ⟨N, D⟩), all with a dynamic batch axis. Uses the TorchScript-based
exporter (``dynamo=False``), which needs no onnxscript.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from zeroproof.inference.config import InferenceConfig
from zeroproof.inference.decode import decode_eager
from zeroproof.inference.wrapper import SCMInferenceWrapper, StrictDecodeModule

OUTPUT_NAMES = ("decoded", "bottom_mask", "gap_mask", "numerator", "denominator")
DEFAULT_OPSET = 17


class _WithProjective(nn.Module):
    def __init__(self, inner: StrictDecodeModule) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        N, D = self.inner.model(x)
        ti, tt = self.inner.thresholds(D.dtype)
        decoded, bottom, gap = decode_eager(N, D, ti, tt)
        return decoded, bottom, gap, N, D


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    in_features: int,
    config: InferenceConfig | None = None,
    *,
    include_projective: bool = True,
    opset_version: int = DEFAULT_OPSET,
) -> list[str]:
    """Export ``model`` (raw projective model or :class:`SCMInferenceWrapper`); returns the output names."""
    if isinstance(model, SCMInferenceWrapper):
        strict = StrictDecodeModule(model.model, config if config is not None else model.config)
    else:
        strict = StrictDecodeModule(model, config)
    module: nn.Module = _WithProjective(strict) if include_projective else strict
    module.eval()
    names = list(OUTPUT_NAMES if include_projective else OUTPUT_NAMES[:3])
    dummy = torch.zeros(2, in_features)
    axes: dict[str, Any] = {"input": {0: "batch_size"}}
    axes.update({name: {0: "batch_size"} for name in names})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about constants; the graph is checked by verify_*
        torch.onnx.export(
            module,
            (dummy,),
            str(path),
            export_params=True,
            opset_version=opset_version,
            input_names=["input"],
            output_names=names,
            dynamic_axes=axes,
            dynamo=False,
        )
    return names
