from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from zeroproof.cli import main

pytestmark = pytest.mark.unit


def test_demo_reports_rates_of_the_known_pole(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--json", "--samples", "20001"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_predictions"] == 20001
    assert report["bottom_count"] == 1  # exactly x == pole
    assert report["nonfinite_outside_bottom"] == 0
    assert report["coverage"] == pytest.approx(1 - report["bottom_rate"] - report["gap_rate"])
    assert report["closest_to_pole"][0]["status"] == "bottom"


def test_demo_human_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--samples", "1001"]) == 0
    out = capsys.readouterr().out
    assert "coverage" in out and "⊥ rate" in out and "gap rate" in out


def test_invalid_thresholds_fail_with_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--tau-infer", "1e-3", "--tau-train", "1e-4"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "tau_train" in err[0] and "must be >= tau_infer" in err[0]


def test_bundle_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "pole.zpb"
    assert main(["bundle", "make-known-pole", str(bundle), "--pole", "0.25"]) == 0
    assert main(["bundle", "info", str(bundle)]) == 0
    manifest = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest["architecture"] == "projective_rational" and manifest["tau_infer"] == 1e-6
    assert main(["bundle", "verify", str(bundle), "--sha256", manifest["weights_sha256"]]) == 0
    assert main(["bundle", "verify", str(bundle), "--sha256", "0" * 64]) == 2
    assert main(["bundle", "torchscript", str(bundle), str(tmp_path / "pole.pt")]) == 0
    assert (tmp_path / "pole.pt").stat().st_size > 0
    capsys.readouterr()
    assert main(["bundle", "onnx", str(bundle), str(tmp_path / "pole.onnx"), "--samples", "256"]) == 0
    out = capsys.readouterr().out
    reports = json.loads(out[out.index("[") :])
    assert [r["passed"] for r in reports] == [True, True]


def test_python_dash_m_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "zeroproof", "demo", "--json", "--samples", "101"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["total_predictions"] == 101
