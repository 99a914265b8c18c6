"""``zeroproof train-arm`` end to end on a tiny budget: bundle servable, provenance, report JSON, validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from zeroproof.cli import main
from zeroproof.export import load_servable

pytestmark = pytest.mark.slow


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
