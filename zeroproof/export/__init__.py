"""Export: TorchScript and ONNX with the decode inside, model bundles, and ⊥-semantics checks."""

from zeroproof.export.bundle import (
    BundleError,
    BundleManifest,
    LoadedBundle,
    load_bundle,
    read_manifest,
    save_bundle,
    weights_sha256,
)
from zeroproof.export.loader import Servable, load_servable
from zeroproof.export.torchscript import save_torchscript, script_strict

__all__ = [
    "BundleError",
    "BundleManifest",
    "LoadedBundle",
    "Servable",
    "load_bundle",
    "load_servable",
    "read_manifest",
    "save_bundle",
    "save_torchscript",
    "script_strict",
    "weights_sha256",
]
