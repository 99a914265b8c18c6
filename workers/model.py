"""The served model: loading (bundle or TorchScript), thresholds, device placement and robust batched forward.

A ``ModelRuntime`` is immutable once built; hot reload builds a new one and swaps it between batches, so every
batch is served by exactly one (model version, thresholds) pair, and each output names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from workers.settings import WorkerSettings
from zeroproof.export import load_servable
from zeroproof.export.loader import Servable, file_sha256
from zeroproof.inference import DEFAULT_TAU_INFER, DEFAULT_TAU_TRAIN, InferenceConfig


class ModelLoadError(ValueError):
    """The model or thresholds file cannot be served (missing, corrupt, bad thresholds)."""


class RowError(Exception):
    """The model raised on one input row (not an out-of-memory): that input goes to the DLQ."""


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(requested)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {requested!r} requested but CUDA is not available")
    return dev


def read_thresholds_file(path: Path) -> dict[str, float | None]:
    """``{"tau_infer": 1e-6, "tau_train": 1e-4}`` (either key optional); the file the operator edits live."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"thresholds file {path}: {exc}") from exc
    if not isinstance(raw, dict) or not set(raw) <= {"tau_infer", "tau_train"}:
        raise ModelLoadError(f"thresholds file {path}: expected an object with tau_infer and/or tau_train")
    return {k: (None if v is None else float(v)) for k, v in raw.items()}


def resolve_config(settings: WorkerSettings, bundle: InferenceConfig | None) -> InferenceConfig:
    """Precedence: thresholds file > explicit settings > the bundle's stored pair > the contract defaults."""
    ti: float = bundle.tau_infer if bundle is not None else DEFAULT_TAU_INFER
    tt: float | None = bundle.tau_train if bundle is not None else DEFAULT_TAU_TRAIN
    if settings.tau_infer is not None:
        ti = settings.tau_infer
    if settings.tau_train is not None:
        tt = settings.tau_train
    if settings.thresholds_file is not None:
        live = read_thresholds_file(settings.thresholds_file)
        if "tau_infer" in live and live["tau_infer"] is not None:
            ti = live["tau_infer"]
        if "tau_train" in live:
            tt = live["tau_train"]
    try:
        return InferenceConfig(tau_infer=ti, tau_train=tt)
    except ValueError as exc:
        msg = str(exc).splitlines()
        raise ModelLoadError(f"thresholds: {msg[-1] if msg else exc}") from None


@dataclass
class ModelRuntime:
    servable: Servable
    config: InferenceConfig
    device: torch.device
    in_features: int | None
    file_fingerprint: tuple[float, int]
    thresholds_fingerprint: tuple[float, int] | None
    _probed: dict[int, bool] = field(default_factory=dict)

    @property
    def model_version(self) -> str:
        return self.servable.model_version

    def accepts_width(self, width: int) -> bool:
        """Feature count check; for TorchScript (no stored width) the first width the model runs on wins."""
        if self.in_features is not None:
            return width == self.in_features
        if width not in self._probed:
            try:
                self._forward(torch.zeros((1, width), dtype=torch.float32))
                ok = True
            except Exception:
                ok = False
            self._probed[width] = ok
            if ok:
                self.in_features = width
        return self._probed[width]

    def _forward(self, x_cpu: Tensor) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            x = x_cpu.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else x_cpu
            out = self.servable.model(x)
            if not isinstance(out, (tuple, list)) or len(out) != 2:
                raise TypeError("model must return (N, D)")
            N, D = out[0], out[1]
            if N.dim() == 1:
                N, D = N.unsqueeze(1), D.unsqueeze(1)
            if N.shape != D.shape or N.shape[0] != x.shape[0]:
                raise TypeError(f"model returned N{tuple(N.shape)} and D{tuple(D.shape)} for {x.shape[0]} rows")
            return N, D

    def forward(self, x: np.ndarray) -> tuple[Tensor, Tensor, list[int]]:
        """``(N, D, failed_rows)`` for ``x`` (B, F) float32. Rows of N/D for failed rows are NaN.

        CUDA out-of-memory halves the batch and retries; any other model exception is bisected down to the
        offending rows, which the caller sends to the DLQ, so one bad row never fails its batch.
        """
        failed: list[int] = []
        parts: list[tuple[int, Tensor, Tensor]] = []
        self._run(torch.from_numpy(x), 0, parts, failed)
        parts.sort(key=lambda p: p[0])
        if len(parts) == 1 and not failed:
            return parts[0][1], parts[0][2], failed
        width = parts[0][1].shape[1] if parts else 1
        N = torch.full((x.shape[0], width), float("nan"), device=self.device)
        D = torch.full((x.shape[0], width), float("nan"), device=self.device)
        for start, n, d in parts:
            N[start : start + n.shape[0]] = n
            D[start : start + d.shape[0]] = d
        return N, D, failed

    def _run(self, x: Tensor, start: int, parts: list[tuple[int, Tensor, Tensor]], failed: list[int]) -> None:
        try:
            N, D = self._forward(x)
            parts.append((start, N, D))
            return
        except torch.cuda.OutOfMemoryError:
            if x.shape[0] == 1:
                raise
            torch.cuda.empty_cache()
        except Exception:
            if x.shape[0] == 1:
                failed.append(start)
                return
        half = x.shape[0] // 2
        self._run(x[:half], start, parts, failed)
        self._run(x[half:], start + half, parts, failed)


def fingerprint(path: Path) -> tuple[float, int]:
    st = path.stat()
    return (st.st_mtime, st.st_size)


def load_runtime(settings: WorkerSettings, device: torch.device | None = None) -> ModelRuntime:
    """Load what ``ZEROPROOF_MODEL`` names; raises :class:`ModelLoadError` with a one-line reason."""
    if settings.model is None:
        raise ModelLoadError("no model: set ZEROPROOF_MODEL (a bundle or a TorchScript file)")
    dev = device or pick_device(settings.device)
    try:
        fp = fingerprint(settings.model)
        servable = load_servable(settings.model, expected_sha256=settings.model_sha256, map_location=dev)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"model {settings.model}: {str(exc).splitlines()[0] if str(exc) else exc!r}") from None
    model = servable.model.to(dev).eval()
    servable = Servable(
        model,
        servable.config,
        servable.model_version,
        servable.kind,
        servable.sha256,
        servable.in_features,
        servable.path,
    )
    config = resolve_config(settings, servable.config)
    tfp = fingerprint(settings.thresholds_file) if settings.thresholds_file is not None else None
    return ModelRuntime(servable, config, dev, servable.in_features, fp, tfp)


def changed_on_disk(runtime: ModelRuntime, settings: WorkerSettings) -> bool:
    """Cheap stat-based check used by the periodic reload watcher (content is verified on load)."""
    try:
        if settings.model is not None and fingerprint(settings.model) != runtime.file_fingerprint:
            return True
        if settings.thresholds_file is not None:
            return fingerprint(settings.thresholds_file) != runtime.thresholds_fingerprint
    except OSError:
        return False
    return False


__all__ = [
    "ModelLoadError",
    "ModelRuntime",
    "RowError",
    "changed_on_disk",
    "file_sha256",
    "load_runtime",
    "pick_device",
    "resolve_config",
]
