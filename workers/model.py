"""The served model: loading (bundle or TorchScript), thresholds, device placement and robust batched forward.

A ``ModelRuntime`` is immutable once built (but for the feature width a TorchScript model reveals on its first
input, kept in its own small object); hot reload builds a new one and swaps it between batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from workers.settings import WorkerSettings
from zeroproof.export import load_servable
from zeroproof.export.loader import Servable, file_sha256
from zeroproof.inference import DEFAULT_TAU_INFER, DEFAULT_TAU_TRAIN, InferenceConfig


class ModelLoadError(ValueError):
    """The model or thresholds file cannot be served (missing, corrupt, bad thresholds)."""


class RowError(Exception):
    """The model raised on one input row (not an out-of-memory): that input goes to the DLQ."""


class ModelOutputError(Exception):
    """The model ran but its output breaks the serving contract (N and D of one shape, ``(B,)`` or ``(B, K)``).

    A model error, never the input's: the load-time probe turns it into a :class:`ModelLoadError` (exit 2, or
    ``reload_failed`` on a hot reload); found later on a batch, the batch's inputs go to the DLQ as
    ``model_output_invalid`` and the worker keeps running.
    """


def _shape(t: Tensor) -> str:
    return "(" + ", ".join(str(int(n)) for n in t.shape) + ")"


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a tensor of shape {_shape(value)}"
    if isinstance(value, (tuple, list)):
        return f"a {type(value).__name__} of {len(value)}"
    return f"a {type(value).__name__}"


def check_output(out: object, rows: int) -> tuple[Tensor, Tensor]:
    """``(N, D)`` as two ``(rows, K)`` floating tensors (a ``(rows,)`` pair becomes ``(rows, 1)``), or a
    :class:`ModelOutputError` saying in one line what the model returned instead."""
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise ModelOutputError(f"the model must return a pair (N, D); it returned {_describe(out)}")
    N, D = out[0], out[1]
    if not isinstance(N, Tensor) or not isinstance(D, Tensor):
        raise ModelOutputError(f"N and D must be tensors; the model returned {_describe(N)} and {_describe(D)}")
    if not (N.is_floating_point() and D.is_floating_point()):
        raise ModelOutputError(f"N and D must be floating point; the model returned {N.dtype} and {D.dtype}")
    if N.shape != D.shape:
        raise ModelOutputError(
            f"N {_shape(N)} and D {_shape(D)} differ in shape (batch of {rows}); "
            "N and D must have the same shape, (B,) or (B, K)"
        )
    if N.dim() not in (1, 2) or N.shape[0] != rows:
        raise ModelOutputError(
            f"N and D have shape {_shape(N)}, rank {N.dim()}, for a batch of B = {rows}; expected (B,) or (B, K)"
        )
    if N.dim() == 1:
        N, D = N.unsqueeze(1), D.unsqueeze(1)
    if N.shape[1] == 0:
        raise ModelOutputError(f"N and D have shape {_shape(N)}: no output element per input row")
    return N, D


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
    for k, v in raw.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ModelLoadError(f"thresholds file {path}: {k} must be a number or null, got {json.dumps(v)[:40]}")
    return {k: (None if v is None else float(v)) for k, v in raw.items()}


def resolve_config(settings: WorkerSettings, bundle: InferenceConfig | None) -> InferenceConfig:
    """Precedence: thresholds file > explicit settings > the bundle's stored pair > the contract defaults.

    An invalid pair is reported naming where each value came from (the file, the settings, the bundle), since the
    operator has to fix it there; pydantic's own message ends in a help URL that names nothing.
    """
    ti: float = bundle.tau_infer if bundle is not None else DEFAULT_TAU_INFER
    tt: float | None = bundle.tau_train if bundle is not None else DEFAULT_TAU_TRAIN
    origin = {"tau_infer": "the model bundle" if bundle else "the default", "tau_train": ""}
    origin["tau_train"] = origin["tau_infer"]
    if settings.tau_infer is not None:
        ti, origin["tau_infer"] = settings.tau_infer, "ZEROPROOF_TAU_INFER"
    if settings.tau_train is not None:
        tt, origin["tau_train"] = settings.tau_train, "ZEROPROOF_TAU_TRAIN"
    if settings.thresholds_file is not None:
        live = read_thresholds_file(settings.thresholds_file)
        where = f"thresholds file {settings.thresholds_file}"
        if "tau_infer" in live and live["tau_infer"] is not None:
            ti, origin["tau_infer"] = live["tau_infer"], where
        if "tau_train" in live:
            tt, origin["tau_train"] = live["tau_train"], where
    try:
        return InferenceConfig(tau_infer=ti, tau_train=tt)
    except ValidationError as exc:
        problem = str(exc.errors(include_url=False)[0].get("msg", exc)).removeprefix("Value error, ")
    except ValueError as exc:
        problem = str(exc).splitlines()[0]
    sources = sorted(set(origin.values()))
    raise ModelLoadError(f"thresholds from {' and '.join(sources)}: {problem}")


class FeatureWidth:
    """The one thing a runtime learns after it is built: the feature count of a TorchScript file (which stores
    none) is the first width the model runs on; widths it refused, or ran on with an invalid output, are
    remembered so they are not probed again. Kept apart so that the runtime itself stays immutable."""

    def __init__(self, known: int | None) -> None:
        self.value = known
        self.probed: dict[int, bool] = {}
        #: widths on which the model ran but returned an invalid output (the error, raised again on every batch)
        self.invalid: dict[int, ModelOutputError] = {}


@dataclass(frozen=True)
class ModelRuntime:
    """The served model, its thresholds and device, as loaded once; hot reload builds a new one and swaps it
    between batches (``workers.reload``), so every batch is served by exactly one (version, thresholds) pair."""

    servable: Servable
    config: InferenceConfig
    device: torch.device
    known_width: int | None
    file_fingerprint: tuple[float, int]
    thresholds_fingerprint: tuple[float, int] | None
    width: FeatureWidth = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "width", FeatureWidth(self.known_width))

    @property
    def model_version(self) -> str:
        return self.servable.model_version

    @property
    def in_features(self) -> int | None:
        return self.width.value

    def accepts_width(self, width: int) -> bool:
        """Feature count check; for TorchScript (no stored width) the first width the model runs on wins.

        Raises :class:`ModelOutputError` when the model runs on ``width`` features but returns an invalid output:
        that is the model's fault, not the input's (``wrong_feature_count`` would blame the input).
        """
        w = self.width
        if w.value is not None:
            return width == w.value
        if width in w.invalid:
            raise w.invalid[width]
        if width not in w.probed:
            try:
                ok = self.probe(width)
            except ModelOutputError as exc:
                w.invalid[width] = exc
                raise
            w.probed[width] = ok
            if ok:
                w.value = width
        return w.probed[width]

    def probe(self, width: int) -> bool:
        """Run the model on 1 and on 2 rows of zeros of ``width`` features: ``False`` if it cannot take that
        width (it raises on one row); :class:`ModelOutputError` if it runs but its output breaks the contract
        (wrong rank, N and D of different shapes, no batch dimension) or it takes one row but not two."""
        try:
            self._forward(torch.zeros((1, width), dtype=torch.float32))
        except (ModelOutputError, torch.cuda.OutOfMemoryError):
            raise
        except Exception:
            return False
        try:
            self._forward(torch.zeros((2, width), dtype=torch.float32))
        except (ModelOutputError, torch.cuda.OutOfMemoryError):
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()
            why = first[0][:200] if first else type(exc).__name__
            raise ModelOutputError(f"the model runs on 1 input row but raises on 2 ({why})") from None
        return True

    def _forward(self, x_cpu: Tensor) -> tuple[Tensor, Tensor]:
        with torch.inference_mode():
            x = x_cpu.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else x_cpu
            return check_output(self.servable.model(x), int(x.shape[0]))

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
        except ModelOutputError:
            raise  # the whole model is wrong, not one row: no bisection
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


#: Feature counts tried at load when a TorchScript file stores none (after the width being served, on a reload,
#: and the input widths of the module's 2-D weights): enough to find the width of any small model.
PROBE_WIDTHS = tuple(range(1, 17))


def _candidate_widths(model: torch.nn.Module, hint: int | None) -> list[int]:
    seen: list[int] = [hint] if hint is not None else []
    try:
        params = list(model.parameters())
    except Exception:
        params = []
    for p in params:
        if p.dim() == 2 and len(seen) < 8:
            seen.append(int(p.shape[1]))
    seen.extend(PROBE_WIDTHS)
    return [w for i, w in enumerate(seen) if w > 0 and w not in seen[:i]]


def check_model_output(runtime: ModelRuntime, width_hint: int | None = None) -> int | None:
    """The load-time check: run a 1- and a 2-row probe and raise :class:`ModelLoadError` (one line) if the
    model's output breaks the contract. With a known width (a bundle's ``in_features``, or ``width_hint``) that
    width is probed; otherwise candidate widths until the model runs on one. Returns the width checked (``None``
    when the model ran on none of them: the first batch checks, and its inputs go to the DLQ as
    ``model_output_invalid`` if the output is wrong). A model that merely raises on zeros is not refused here.
    """
    widths = [runtime.in_features] if runtime.in_features is not None else []
    if not widths:
        widths = _candidate_widths(runtime.servable.model, width_hint)
    for width in widths:
        try:
            if runtime.probe(width):
                return width
        except ModelOutputError as exc:
            raise ModelLoadError(
                f"model {runtime.servable.path}: invalid output on a {width}-feature input: {exc}"
            ) from None
        except torch.cuda.OutOfMemoryError:
            return None
    return None


def load_runtime(
    settings: WorkerSettings, device: torch.device | None = None, *, width_hint: int | None = None
) -> ModelRuntime:
    """Load what ``ZEROPROOF_MODEL`` names and probe its output (:func:`check_model_output`); raises
    :class:`ModelLoadError` with a one-line reason. ``width_hint``: the feature count being served (a reload)."""
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
    runtime = ModelRuntime(servable, config, dev, servable.in_features, fp, tfp)
    check_model_output(runtime, width_hint)
    return runtime


__all__ = [
    "ModelLoadError",
    "ModelOutputError",
    "ModelRuntime",
    "RowError",
    "check_model_output",
    "check_output",
    "file_sha256",
    "load_runtime",
    "pick_device",
    "resolve_config",
]
