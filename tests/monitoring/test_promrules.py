"""The shipped Prometheus rules: identical to what the settings render, valid for promtool, and behaving
like the monitor's rules (promtool's rule unit tests; skipped where promtool is not installed)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from monitoring.promrules import render
from monitoring.settings import MonitorSettings

pytestmark = pytest.mark.unit

RULES = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "zeroproof-rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (apt-get install prometheus)")


def defaults() -> MonitorSettings:
    fields = {name: f.default for name, f in MonitorSettings.model_fields.items()}
    return MonitorSettings.model_validate(fields)


def test_shipped_file_matches_the_default_settings() -> None:
    assert RULES.read_text() == render(defaults()), "re-run: python -m monitoring.promrules > " + str(RULES)


def test_rendered_rules_follow_the_settings() -> None:
    text = render(defaults().model_copy(update={"coverage_threshold": 0.8, "min_volume": 50}))
    assert 'zeroproof_monitor_coverage{window="short"} < 0.8\n' in text
    assert 'zeroproof_monitor_predictions{window="short"} >= 50' in text
    for name in ("ZeroproofCoverageLow", "ZeroproofGapRateHigh", "ZeroproofBottomRateRise", "ZeroproofNoData"):
        assert f"- alert: {name}\n" in text


@needs_promtool
def test_promtool_check_rules() -> None:
    proc = subprocess.run([str(PROMTOOL), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 rules found" in proc.stdout


def _series(name: str, version: str, window: str | None, values: str) -> dict[str, str]:
    labels = f'model_version="{version}"' + (f',window="{window}"' if window else "")
    return {"series": f"{name}{{{labels}}}", "values": values}


def _firing(rule: str, version: str | None, summary: str, severity: str = "warning") -> dict[str, object]:
    labels = {"severity": severity, "rule": rule, "service": "zeroproof"}
    if version:
        labels["model_version"] = version
    return {"exp_labels": labels, "exp_annotations": {"summary": summary}}


@needs_promtool
def test_promtool_rule_unit_tests(tmp_path: Path) -> None:
    cov, pred, bot = "zeroproof_monitor_coverage", "zeroproof_monitor_predictions", "zeroproof_monitor_bottom_rate"
    series = [
        # v1: 99% → 85% at 2m15s → 91% (between threshold and clear level) at 5m15s → 95% at 8m15s.
        _series(cov, "v1", "short", "0.99x8 0.85x11 0.91x11 0.95x20"),
        _series(pred, "v1", "short", "5000x60"),
        # low: terrible coverage but 50 predictions per window.
        _series(cov, "low", "short", "0.5x60"),
        _series(pred, "low", "short", "50x60"),
        # rise: ⊥ 0.5% → 5% at 2m15s against a 0.5% baseline.
        _series(bot, "rise", "short", "0.005x8 0.05x30"),
        _series(bot, "rise", "baseline", "0.005x38"),
        _series(pred, "rise", "short", "5000x38"),
        _series(pred, "rise", "baseline", "50000x38"),
        {"series": "zeroproof_monitor_seconds_since_data", "values": "1x8 20+15x12"},
        {"series": "zeroproof_monitor_replaying", "values": "0x60"},
    ]
    cov_fire = [_firing("coverage_low", "v1", "Coverage of model v1 below 0.9 over 5m")]
    tests = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "15s",
        "tests": [
            {
                "interval": "15s",
                "input_series": series,
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "ZeroproofCoverageLow", "exp_alerts": []},  # pending
                    {"eval_time": "3m30s", "alertname": "ZeroproofCoverageLow", "exp_alerts": cov_fire},
                    # 91%: past the threshold, not past the clear level → still firing (hysteresis).
                    {"eval_time": "7m30s", "alertname": "ZeroproofCoverageLow", "exp_alerts": cov_fire},
                    {"eval_time": "8m45s", "alertname": "ZeroproofCoverageLow", "exp_alerts": cov_fire},  # keep
                    {"eval_time": "10m", "alertname": "ZeroproofCoverageLow", "exp_alerts": []},
                    {
                        "eval_time": "3m30s",
                        "alertname": "ZeroproofBottomRateRise",
                        "exp_alerts": [
                            _firing("bottom_rate_rise", "rise", "Sudden rise of bottom outputs of model rise over 5m")
                        ],
                    },
                    {"eval_time": "2m", "alertname": "ZeroproofNoData", "exp_alerts": []},
                    {
                        "eval_time": "4m",
                        "alertname": "ZeroproofNoData",
                        "exp_alerts": [
                            _firing("no_data", None, "No stats from any zeroproof worker for more than 2m", "critical")
                        ],
                    },
                ],
            }
        ],
    }
    test_file = tmp_path / "rules.test.yml"
    test_file.write_text(json.dumps(tests, indent=1))  # JSON is YAML
    proc = subprocess.run([str(PROMTOOL), "test", "rules", str(test_file)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
