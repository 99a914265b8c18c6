"""Pre-deployment validation: the seed page's safety checklist, run against a bundle and held-out data.

Checks: coverage ≥ ``min_coverage`` (on non-singular targets when targets are given, so correct ⊥ on singular
inputs never fails it), gap rate ≤ ``max_gap_rate`` (a warning above, as on the seed page), ⊥ on every known
singular set of the architecture (``singular_sets()`` of the model class, e.g. the arm's θ2 = 0 and θ2 = ±π),
sign consistency active in training (from a checkpoint's history and config, else the bundle's training
provenance), and the ONNX export keeping ⊥ semantics on the held-out inputs (plus the adversarial decode probe).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from zeroproof.export.bundle import LoadedBundle, load_bundle
from zeroproof.inference.config import InferenceConfig
from zeroproof.inference.decode import strict_inference
from zeroproof.losses.coverage import coverage_metric
from zeroproof.losses.targets import lift_targets

Status = Literal["pass", "warn", "fail"]


@dataclass
class Check:
    name: str
    status: Status
    detail: str
    value: Any = None
    threshold: Any = None


@dataclass
class ValidationReport:
    bundle: str
    model_version: str
    tau_infer: float
    tau_train: float | None
    inputs: int
    checks: list[Check] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["passed"] = self.passed
        return out

    def to_markdown(self) -> str:
        icon = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}
        lines = [
            f"# Pre-deployment validation: {'PASSED' if self.passed else 'FAILED'}",
            "",
            f"- bundle: `{self.bundle}` (version `{self.model_version}`)",
            f"- thresholds: tau_infer={self.tau_infer:g}, tau_train={self.tau_train}",
            f"- held-out inputs: {self.inputs}",
            "",
            "| check | result | value | threshold | detail |",
            "|---|---|---|---|---|",
        ]
        for c in self.checks:
            value = f"{c.value:.4f}" if isinstance(c.value, float) else ("" if c.value is None else str(c.value))
            threshold = "" if c.threshold is None else str(c.threshold)
            lines.append(f"| {c.name} | {icon[c.status]} | {value} | {threshold} | {c.detail} |")
        lines += ["", "## Metrics", "", "```json", json.dumps(self.metrics, indent=2, default=str), "```", ""]
        return "\n".join(lines)


def load_heldout(path: str | os.PathLike[str]) -> tuple[Tensor, Tensor | None]:
    """``.npz`` with ``x`` (inputs, (B, F)) and optionally ``y`` (targets, may hold ±inf/NaN); no pickles."""
    with np.load(str(path), allow_pickle=False) as data:
        if "x" not in data:
            raise ValueError(f"{path}: held-out file needs an array named 'x' (and optionally 'y')")
        x = torch.from_numpy(np.asarray(data["x"], dtype=np.float32))
        y = torch.from_numpy(np.asarray(data["y"], dtype=np.float64)) if "y" in data else None
    if x.ndim != 2:
        raise ValueError(f"{path}: 'x' must be 2-D (batch, features), got shape {tuple(x.shape)}")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"{path}: 'x' has {x.shape[0]} rows, 'y' has {y.shape[0]}")
    return x, y


def save_heldout(path: str | os.PathLike[str], x: Tensor, y: Tensor | None = None) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, Any] = {"x": x.detach().cpu().numpy()}
    if y is not None:
        arrays["y"] = y.detach().cpu().numpy()
    with open(target, "wb") as f:
        np.savez(f, **arrays)
    return target


def known_singular_sets(model: nn.Module) -> dict[str, Tensor]:
    """The inputs of every singular set the model's architecture declares (``singular_sets()``), else none."""
    declare = getattr(type(model), "singular_sets", None)
    if not callable(declare):
        return {}
    sets = declare()
    return {str(name): x for name, x in sets.items()}


@torch.no_grad()
def singular_set_checks(model: nn.Module, config: InferenceConfig, sets: dict[str, Tensor]) -> list[Check]:
    """One check per singular set: passes only if every output element on it decodes to ⊥ under ``config``."""
    checks: list[Check] = []
    was_training = model.training
    model.eval()
    try:
        for name, x in sets.items():
            N, D = model(x)
            bottom = strict_inference(N, D, config).bottom_mask
            rate = float(bottom.float().mean())
            finite_d = D.abs()[torch.isfinite(D)]
            max_d = float(finite_d.max()) if finite_d.numel() else math.nan
            ok = bool(bottom.all())
            detail = f"{int(x.shape[0])} poses: ⊥ rate {rate:.4f}, max |D| {max_d:.3g} (tau_infer {config.tau_infer:g})"
            checks.append(Check(f"singular_set[{name}]", "pass" if ok else "fail", detail, rate, "every output ⊥"))
    finally:
        model.train(was_training)
    return checks


def _sign_check(bundle: LoadedBundle, checkpoint: str | os.PathLike[str] | None) -> Check:
    if checkpoint is not None:
        state = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
        history = state.get("history", {})
        lam = float(state.get("config", {}).get("loss", {}).get("sign", 0.0))
        seen = int(state.get("singular_targets_seen", 0))
        ok = "sign_loss" in history and lam > 0 and seen > 0
        detail = f"checkpoint history has sign_loss={'sign_loss' in history}, λ_sign={lam:g}, singular targets={seen}"
        return Check("sign_consistency_in_training", "pass" if ok else "fail", detail, lam, "λ_sign > 0")
    extra = bundle.manifest.extra
    if "sign_loss_active" not in extra:
        return Check(
            "sign_consistency_in_training",
            "fail",
            "no training provenance: pass --checkpoint, or train with zeroproof (bundle extra 'sign_loss_active')",
        )
    ok = bool(extra["sign_loss_active"])
    keys = extra.get("history_keys", [])
    detail = f"bundle provenance: sign_loss_active={ok}, λ_sign={extra.get('lambda_sign')}, history has sign_loss="
    detail += str("sign_loss" in keys)
    return Check("sign_consistency_in_training", "pass" if ok else "fail", detail, extra.get("lambda_sign"), "> 0")


def _onnx_check(bundle: LoadedBundle, cfg: InferenceConfig, x: Tensor, workdir: Path) -> tuple[Check, dict[str, Any]]:
    try:
        from zeroproof.export.check import onnx_runtime, probe_decode_onnx, verify_bottom_semantics
        from zeroproof.export.onnx import export_onnx
    except ImportError as exc:  # pragma: no cover - depends on optional extras
        return Check("onnx_bottom_semantics", "fail", f"ONNX tooling unavailable: {exc}"), {}
    in_features = bundle.manifest.in_features or int(x.shape[1])
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "model.onnx"
    try:
        export_onnx(bundle.model, path, in_features, cfg)
        model_report = verify_bottom_semantics(onnx_runtime(path), bundle.model, cfg, x, name="onnxruntime")
        probe = probe_decode_onnx(cfg)
    except Exception as exc:
        return Check("onnx_bottom_semantics", "fail", f"export or run failed: {exc}"), {}
    passed = model_report.passed and probe.passed
    detail = (
        f"held-out masks bit-identical={model_report.checks.get('masks_bit_identical_to_eager')}, "
        f"adversarial probe passed={probe.passed}"
    )
    return Check("onnx_bottom_semantics", "pass" if passed else "fail", detail), {
        "onnx_model": model_report.to_dict(),
        "onnx_decode_probe": probe.to_dict(),
    }


def validate_bundle(
    bundle_path: str | os.PathLike[str],
    x: Tensor,
    y: Tensor | None = None,
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    config: InferenceConfig | None = None,
    min_coverage: float = 0.95,
    max_gap_rate: float = 0.05,
    onnx: bool = True,
    workdir: str | os.PathLike[str] | None = None,
) -> ValidationReport:
    """Run every check; never raises for a failed check (the report says so)."""
    bundle = load_bundle(bundle_path)
    cfg = config if config is not None else bundle.config
    report = ValidationReport(
        bundle=str(bundle_path),
        model_version=bundle.manifest.model_version,
        tau_infer=cfg.tau_infer,
        tau_train=cfg.tau_train,
        inputs=int(x.shape[0]),
    )
    with torch.no_grad():
        N, D = bundle.model(x)
    res = strict_inference(N, D, cfg)
    coverage_all = coverage_metric(res.bottom_mask)
    gap_rate = float(res.gap_mask.float().mean())
    metrics: dict[str, Any] = {
        "coverage_all": coverage_all,
        "bottom_rate": float(res.bottom_mask.float().mean()),
        "gap_rate": gap_rate,
        "accepted_rate": 1.0 - float(res.bottom_mask.float().mean()) - gap_rate,
    }
    coverage = coverage_all
    scope = "all held-out outputs (no targets given)"
    if y is not None:
        targets = lift_targets(y.reshape(N.shape))
        fin = targets.finite_mask
        if bool(fin.any()):
            coverage = coverage_metric(res.bottom_mask[fin])
            scope = "outputs with finite targets (⊥ on singular targets is correct and not counted)"
        sing = targets.singular_mask | targets.bottom_mask
        metrics["coverage_nonsingular"] = coverage
        if bool(sing.any()):
            metrics["bottom_rate_singular_targets"] = float(res.bottom_mask[sing].float().mean())
        accepted = fin & ~res.bottom_mask
        if bool(accepted.any()):
            err = (res.decoded[accepted].double() - targets.numerator[accepted].double()).abs()
            metrics["mae_accepted"] = float(err.mean())
    report.checks.append(
        Check("coverage", "pass" if coverage >= min_coverage else "fail", scope, coverage, f">= {min_coverage}")
    )
    report.checks.append(
        Check(
            "gap_rate",
            "pass" if gap_rate <= max_gap_rate else "warn",
            "high gap rate: consider retraining with a larger margin weight" if gap_rate > max_gap_rate else "ok",
            gap_rate,
            f"<= {max_gap_rate} (warning above)",
        )
    )
    report.checks.extend(singular_set_checks(bundle.model, cfg, known_singular_sets(bundle.model)))
    report.checks.append(_sign_check(bundle, checkpoint))
    if onnx:
        with tempfile.TemporaryDirectory() as tmp:
            check, details = _onnx_check(bundle, cfg, x, Path(workdir) if workdir is not None else Path(tmp))
        report.checks.append(check)
        metrics.update(details)
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    report.metrics = metrics
    return report


def write_reports(report: ValidationReport, directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "validation.md"
    js = out / "validation.json"
    md.write_text(report.to_markdown(), encoding="utf-8")
    js.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n", encoding="utf-8")
    return md, js
