from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from zeroproof.cli import main
from zeroproof.export.bundle import save_bundle
from zeroproof.inference import InferenceConfig
from zeroproof.layers import known_pole_model
from zeroproof.training import SCMTrainer, TrainerConfig
from zeroproof.training.validation import load_heldout, save_heldout, validate_bundle

pytestmark = pytest.mark.unit

POLE = 0.5


def _heldout(tmp_path: Path, n: int = 400) -> Path:
    x = torch.linspace(-1.0, 2.0, n).unsqueeze(1)
    x[0, 0] = POLE  # one exactly singular input: ⊥ there is correct and must not cost coverage
    y = 1.0 / (x.double() - POLE)
    y[x == POLE] = math.inf
    return save_heldout(tmp_path / "heldout.npz", x, y)


def _bundle(tmp_path: Path, *, provenance: bool) -> Path:
    extra = {"sign_loss_active": True, "lambda_sign": 1.0, "history_keys": ["loss", "sign_loss"]} if provenance else {}
    path = tmp_path / ("pole.zpb" if provenance else "pole-noprov.zpb")
    save_bundle(known_pole_model(POLE), path, config=InferenceConfig(), model_version="pole-1", extra=extra)
    return path


def test_heldout_roundtrip(tmp_path: Path) -> None:
    x, y = load_heldout(_heldout(tmp_path))
    assert x.dtype == torch.float32 and x.shape == (400, 1)
    assert y is not None and torch.isinf(y).sum() == 1
    bad = tmp_path / "bad.npz"
    with open(bad, "wb") as f:
        import numpy as np

        np.savez(f, z=np.zeros(3))
    with pytest.raises(ValueError, match="'x'"):
        load_heldout(bad)


def test_validate_passes_with_provenance_and_onnx(tmp_path: Path) -> None:
    x, y = load_heldout(_heldout(tmp_path))
    report = validate_bundle(_bundle(tmp_path, provenance=True), x, y)
    status = {c.name: c.status for c in report.checks}
    assert status == {
        "coverage": "pass",
        "gap_rate": "pass",
        "sign_consistency_in_training": "pass",
        "onnx_bottom_semantics": "pass",
    }
    assert report.passed
    assert report.metrics["coverage_nonsingular"] == 1.0
    assert report.metrics["bottom_rate_singular_targets"] == 1.0
    assert "PASSED" in report.to_markdown()


def test_validate_cli_fails_without_sign_evidence_and_writes_reports(tmp_path: Path) -> None:
    data = _heldout(tmp_path)
    out = tmp_path / "report"
    code = main(["validate", str(_bundle(tmp_path, provenance=False)), "--data", str(data), "--report-dir", str(out)])
    assert code == 1
    payload = json.loads((out / "validation.json").read_text())
    assert payload["passed"] is False
    failed = [c["name"] for c in payload["checks"] if c["status"] == "fail"]
    assert failed == ["sign_consistency_in_training"]
    assert "FAIL" in (out / "validation.md").read_text()


def test_validate_gap_rate_is_a_warning_and_coverage_can_fail(tmp_path: Path) -> None:
    x, y = load_heldout(_heldout(tmp_path))
    wide_gap = InferenceConfig(tau_infer=1e-6, tau_train=0.5)
    report = validate_bundle(_bundle(tmp_path, provenance=True), x, y, config=wide_gap, onnx=False)
    status = {c.name: c.status for c in report.checks}
    assert status["gap_rate"] == "warn"
    assert report.passed  # a warning does not fail the validation
    strict = InferenceConfig(tau_infer=0.5, tau_train=0.5)
    report = validate_bundle(_bundle(tmp_path, provenance=True), x, y, config=strict, onnx=False)
    assert {c.name: c.status for c in report.checks}["coverage"] == "fail"
    assert not report.passed


def test_validate_reads_sign_evidence_from_a_checkpoint(tmp_path: Path) -> None:
    x, y = load_heldout(_heldout(tmp_path))
    model = known_pole_model(POLE)
    trainer = SCMTrainer(model, TrainerConfig(progress=False, lr=1e-4))
    trainer.fit((x, y.float()), epochs=1)
    ckpt = trainer.save_checkpoint(tmp_path / "checkpoint.pt", epoch=1)
    report = validate_bundle(_bundle(tmp_path, provenance=False), x, y, checkpoint=ckpt, onnx=False)
    assert {c.name: c.status for c in report.checks}["sign_consistency_in_training"] == "pass"


def test_calibrate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _heldout(tmp_path)
    code = main(["calibrate", str(_bundle(tmp_path, provenance=True)), "--data", str(data), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    assert payload["recommended_tau_infer"] is not None
    assert len(payload["rows"]) > 5


def _arm(w_sin: float, w_cos: float = 0.0, bias: float = -1.0) -> torch.nn.Module:
    """An arm model whose denominator is D = w_sin·sin θ2 + w_cos·cos θ2 + (1 + bias)."""
    from zeroproof.models.arm import ArmIKProjective

    torch.manual_seed(0)
    model = ArmIKProjective(hidden=4)
    with torch.no_grad():
        model.denominator.weight.copy_(torch.tensor([[w_sin, w_cos]]))
        model.denominator.bias.fill_(bias)
    return model.eval()


def test_every_singular_set_of_the_arm_is_checked() -> None:
    """The issue's bundle: D = 161.6·sin θ2 (what train-arm wrote after ~300 steps) is ⊥ at θ2 = 0 but finite at
    θ2 = ±π (float32 ±π is 8.7e-8 away from the pole: |D| = 1.4e-5 ≥ tau_infer); D = 0.69·sin θ2 is ⊥ on all."""
    from zeroproof.training.validation import known_singular_sets, singular_set_checks

    cfg = InferenceConfig(tau_infer=1e-6, tau_train=1e-4)
    sets = known_singular_sets(_arm(1.0))
    assert set(sets) == {"θ2 = 0", "θ2 = +π", "θ2 = −π"}
    assert all(x.shape == (2000, 4) for x in sets.values())
    bad = {c.name: c for c in singular_set_checks(_arm(161.6), cfg, sets)}
    assert {n: c.status for n, c in bad.items()} == {
        "singular_set[θ2 = 0]": "pass",
        "singular_set[θ2 = +π]": "fail",
        "singular_set[θ2 = −π]": "fail",
    }
    assert bad["singular_set[θ2 = +π]"].value == 0.0 and "max |D| 1.41e-05" in bad["singular_set[θ2 = +π]"].detail
    good = singular_set_checks(_arm(0.69), cfg, sets)
    assert [c.status for c in good] == ["pass"] * 3
    # θ2 = 0 alone is not enough, and vice versa: D = 1 + cos θ2 is ⊥ at ±π only
    only_pi = {c.name: c.status for c in singular_set_checks(_arm(0.0, 1.0, 0.0), cfg, sets)}
    assert only_pi["singular_set[θ2 = 0]"] == "fail" and only_pi["singular_set[θ2 = +π]"] == "pass"
    assert known_singular_sets(known_pole_model(POLE)) == {}  # no declared sets: no such check


def test_validate_fails_a_bundle_that_is_finite_on_a_singular_set(tmp_path: Path) -> None:
    from zeroproof.models.arm import generate_arm_data

    extra = {"sign_loss_active": True, "lambda_sign": 1.0, "history_keys": ["loss", "sign_loss"]}
    path = tmp_path / "arm-bad.zpb"
    save_bundle(_arm(161.6), path, config=InferenceConfig(), model_version="arm-bad", extra=extra)
    x, y = generate_arm_data(200, seed=3)
    report = validate_bundle(path, x, y, onnx=False)
    checks = {c.name: c.status for c in report.checks}
    assert checks["singular_set[θ2 = −π]"] == "fail" and checks["singular_set[θ2 = 0]"] == "pass"
    assert not report.passed
