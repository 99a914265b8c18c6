"""TorchScript export of a projective model with the strict decode inside."""

from __future__ import annotations

import os

import torch
from torch import nn

from zeroproof.inference.config import InferenceConfig
from zeroproof.inference.wrapper import SCMInferenceWrapper, StrictDecodeModule


def script_strict(model: nn.Module, config: InferenceConfig | None = None) -> torch.jit.ScriptModule:
    """Script ``model`` (returning ⟨N, D⟩) together with the decode; the result returns the strict triple."""
    if isinstance(model, SCMInferenceWrapper):
        module = StrictDecodeModule(model.model, config if config is not None else model.config)
    else:
        module = StrictDecodeModule(model, config)
    module.eval()
    scripted: torch.jit.ScriptModule = torch.jit.script(module)
    return scripted


def save_torchscript(model: nn.Module, path: str | os.PathLike[str], config: InferenceConfig | None = None) -> None:
    torch.jit.save(script_strict(model, config), str(path))
