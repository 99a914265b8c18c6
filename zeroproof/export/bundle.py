"""Model bundles: one safetensors file holding weights, thresholds, version and a weights checksum.

Nothing in a bundle is ever unpickled: weights are raw tensors (safetensors), the architecture is a registered
name plus JSON keyword arguments. The loader recomputes the sha256 of the weights and refuses a mismatch.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from zeroproof.inference.config import InferenceConfig
from zeroproof.models.registry import architecture_of, build_architecture

BUNDLE_FORMAT = "zeroproof-bundle/1"
_META_KEY = "zeroproof"


class BundleError(ValueError):
    """A bundle is malformed, tampered with, or does not match what the caller pinned."""


def weights_sha256(state: Mapping[str, Tensor]) -> str:
    """Checksum over names, dtypes, shapes and raw bytes, in name order (independent of file layout)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        digest.update(name.encode())
        digest.update(str(t.dtype).encode())
        digest.update(repr(tuple(t.shape)).encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


@dataclass(frozen=True)
class BundleManifest:
    architecture: str
    architecture_kwargs: dict[str, Any]
    tau_infer: float
    tau_train: float | None
    model_version: str
    weights_sha256: str
    in_features: int | None = None
    out_features: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = BUNDLE_FORMAT

    @property
    def config(self) -> InferenceConfig:
        return InferenceConfig(tau_infer=self.tau_infer, tau_train=self.tau_train)

    def to_json(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BundleManifest:
        try:
            raw = json.loads(text)
            return cls(**raw)
        except (TypeError, ValueError) as exc:
            raise BundleError(f"bundle manifest is malformed: {exc}") from exc


@dataclass(frozen=True)
class LoadedBundle:
    model: nn.Module
    manifest: BundleManifest
    path: Path

    @property
    def config(self) -> InferenceConfig:
        return self.manifest.config


def save_bundle(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    config: InferenceConfig | None = None,
    model_version: str,
    extra: dict[str, Any] | None = None,
) -> BundleManifest:
    """Write ``model`` (a registered architecture) as a bundle; atomic (write then rename)."""
    from safetensors.torch import save_file

    if not model_version:
        raise ValueError("model_version must be a non-empty string")
    cfg = config if config is not None else InferenceConfig()
    name, kwargs = architecture_of(model)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    manifest = BundleManifest(
        architecture=name,
        architecture_kwargs=kwargs,
        tau_infer=cfg.tau_infer,
        tau_train=cfg.tau_train,
        model_version=model_version,
        weights_sha256=weights_sha256(state),
        in_features=getattr(model, "in_features", None),
        out_features=getattr(model, "out_features", None),
        extra=dict(extra or {}),
    )
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={_META_KEY: manifest.to_json()})
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return manifest


def read_manifest(path: str | os.PathLike[str]) -> BundleManifest:
    """Read the manifest only (no weights), e.g. to show a bundle's version and thresholds."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise BundleError(f"{path}: not a zeroproof bundle ({exc})") from exc
    if _META_KEY not in meta:
        raise BundleError(f"{path}: safetensors file without a zeroproof manifest")
    manifest = BundleManifest.from_json(meta[_META_KEY])
    if manifest.format != BUNDLE_FORMAT:
        raise BundleError(f"{path}: unsupported bundle format {manifest.format!r}")
    return manifest


def load_bundle(
    path: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    map_location: str | torch.device = "cpu",
) -> LoadedBundle:
    """Load and verify a bundle; the model comes back in eval mode.

    Raises :class:`BundleError` if the weights' checksum differs from the manifest (corruption or tampering)
    or from ``expected_sha256`` (pinning a known model).
    """
    from safetensors.torch import load_file

    manifest = read_manifest(path)
    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:
        raise BundleError(f"{path}: cannot read weights ({exc})") from exc
    actual = weights_sha256(state)
    if actual != manifest.weights_sha256:
        raise BundleError(
            f"{path}: weights checksum mismatch (manifest {manifest.weights_sha256[:12]}…, actual {actual[:12]}…)"
        )
    if expected_sha256 is not None and actual != expected_sha256.lower():
        raise BundleError(f"{path}: weights sha256 {actual[:12]}… is not the pinned {expected_sha256[:12]}…")
    try:
        model = build_architecture(manifest.architecture, manifest.architecture_kwargs)
        model.load_state_dict(state, strict=True)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise BundleError(f"{path}: weights do not fit architecture {manifest.architecture!r}: {exc}") from exc
    model.to(map_location).eval()
    return LoadedBundle(model=model, manifest=manifest, path=Path(path))
