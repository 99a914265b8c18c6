"""``zeroproof train-arm`` end to end on a tiny budget: bundle servable, provenance, report JSON, validate; and
every known singular set of the arm checked (⊥) before a bundle is written."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from zeroproof.cli import main
from zeroproof.export import load_servable
from zeroproof.export.bundle import read_manifest
from zeroproof.inference import InferenceConfig, strict_inference


@pytest.mark.slow
def test_train_arm_writes_a_servable_bundle_and_report(tmp_path: Path) -> None:
    bundle, report, heldout, ckpt = (tmp_path / n for n in ("arm.zpb", "arm.json", "held.npz", "arm.ckpt.pt"))
    code = main(
        [
            "train-arm",
            "--out",
            str(bundle),
            "--seconds",
            "20",
            "--max-steps",
            "400",
            "--per-bucket",
            "100",
            "--report",
            str(report),
            "--heldout",
            str(heldout),
            "--checkpoint",
            str(ckpt),
        ]
    )
    assert code == 0
    servable = load_servable(bundle)
    assert servable.in_features == 4
    N, D = servable.model(torch.tensor([[0.3, 0.0, 0.5, -0.2]]))
    assert N.shape == D.shape == (1, 2)
    data = json.loads(report.read_text())
    assert data["training"]["mlp_steps"] == data["training"]["projective_steps"] > 0
    assert set(data["evaluation"]["buckets"]) == {"le_1e-5", "1e-5_1e-4", "1e-4_1e-3", "gt_1e-3"}
    assert "exact_singular" in data["evaluation"]
    state = torch.load(str(ckpt), weights_only=True)
    assert "sign_loss" in state["history"]
    code = main(["validate", str(bundle), "--data", str(heldout), "--report-dir", str(tmp_path / "val")])
    checks = {c["name"]: c["status"] for c in json.loads((tmp_path / "val" / "validation.json").read_text())["checks"]}
    assert checks["sign_consistency_in_training"] == "pass"
    assert checks["onnx_bottom_semantics"] == "pass"
    assert code == (0 if all(s != "fail" for s in checks.values()) else 1)


def _arm_result(w_sin: float, config: InferenceConfig) -> Any:
    from zeroproof.models.arm import ArmIKProjective
    from zeroproof.training.arm import ArmTrainResult

    torch.manual_seed(0)
    model = ArmIKProjective(hidden=4)
    with torch.no_grad():
        model.denominator.weight.copy_(torch.tensor([[w_sin, 0.0]]))
        model.denominator.bias.fill_(-1.0)
    return ArmTrainResult(model.eval(), None, 314, 1.0, config, {"polish": {"accepted": True}})  # type: ignore[arg-type]


@pytest.mark.unit
def test_train_arm_fails_and_writes_nothing_when_a_singular_set_is_not_bottom(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """What train-arm produced after ~300 steps before the polish kept its scale: D = 161.6·sin θ2, ⊥ at θ2 = 0 only.
    It used to print "wrote bundle" and exit 0; now it exits 1 naming the sets, and writes no bundle."""
    import zeroproof.training.arm as arm

    monkeypatch.setattr(arm, "train_arm", lambda **kw: _arm_result(161.6, kw["config"]))
    out = tmp_path / "arm.zpb"
    code = main(["train-arm", "--out", str(out), "--max-steps", "300", "--heldout", str(tmp_path / "h.npz")])
    captured = capsys.readouterr()
    assert code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zeroproof train-arm: FAILED: outputs not ⊥ on singular set")
    assert "θ2 = +π [" in lines[0] and "θ2 = −π [" in lines[0] and "θ2 = 0 [" not in lines[0]
    assert f"no bundle written to {out}" in lines[0]
    assert "FAIL  singular_set[θ2 = +π]" in captured.out and "PASS  singular_set[θ2 = 0]" in captured.out
    assert "wrote" not in captured.out
    assert not out.exists() and not (tmp_path / "h.npz").exists()


@pytest.mark.slow
def test_train_arm_small_budget_is_bottom_on_every_singular_set(tmp_path: Path) -> None:
    """The issue's run: ~300 steps. Before the fix it exited 0 with θ2 = ±π finite (|D| = 1.4e-5 there); now the
    polish keeps D's scale, every singular set is ⊥, and the bundle records the checks."""
    out = tmp_path / "arm.zpb"
    assert main(["train-arm", "--out", str(out), "--max-steps", "300", "--seconds", "60"]) == 0
    servable = load_servable(out)
    cfg = servable.config
    assert cfg is not None
    g = torch.Generator().manual_seed(5)
    theta1 = (2 * torch.rand(500, generator=g) - 1) * math.pi
    d = 2 * torch.rand(500, 2, generator=g) - 1
    for theta2 in (0.0, math.pi, -math.pi):
        x = torch.stack([theta1, torch.full_like(theta1, theta2), d[:, 0], d[:, 1]], dim=-1).float()
        with torch.no_grad():
            N, D = servable.model(x)
        assert bool(strict_inference(N, D, cfg).bottom_mask.all()), (theta2, float(D.abs().max()))
    extra = read_manifest(out).extra
    assert {v["status"] for v in extra["singular_sets"].values()} == {"pass"} and len(extra["singular_sets"]) == 3
    assert extra["head_polish"]["resolves"] >= 1
