"""Load what ``ZEROPROOF_MODEL`` points at: a zeroproof bundle or a plain TorchScript file (contract §2)."""

from __future__ import annotations

import hashlib
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zeroproof.export.bundle import BundleError, load_bundle
from zeroproof.inference.config import InferenceConfig


@dataclass(frozen=True)
class Servable:
    """A model ready to serve: ``model(x: float32 (B, F)) -> (N, D)``, in eval mode.

    ``config`` is the bundle's stored thresholds (``None`` for TorchScript, which stores none);
    ``model_version`` is the bundle's version, or ``torchscript-<sha256[:12]>`` of the file.
    """

    model: nn.Module
    config: InferenceConfig | None
    model_version: str
    kind: str
    sha256: str
    in_features: int | None
    path: Path


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_servable(
    path: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    map_location: str | torch.device = "cpu",
) -> Servable:
    """Detect the format by content, load, verify. ``expected_sha256`` pins the bundle's weights checksum,
    or the TorchScript file's checksum."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model file not found: {p}")
    if zipfile.is_zipfile(p):  # torch.jit.save writes a zip archive; safetensors files are not zips
        sha = file_sha256(p)
        if expected_sha256 is not None and sha != expected_sha256.lower():
            raise BundleError(f"{p}: file sha256 {sha[:12]}… is not the pinned {expected_sha256[:12]}…")
        try:
            module = torch.jit.load(str(p), map_location=map_location)  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise BundleError(f"{p}: not a loadable TorchScript file ({exc})") from exc
        module.eval()
        return Servable(module, None, f"torchscript-{sha[:12]}", "torchscript", sha, None, p)
    bundle = load_bundle(p, expected_sha256=expected_sha256, map_location=map_location)
    m = bundle.manifest
    return Servable(bundle.model, m.config, m.model_version, "bundle", m.weights_sha256, m.in_features, p)
