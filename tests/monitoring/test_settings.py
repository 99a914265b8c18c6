from __future__ import annotations

import subprocess
import sys

import pytest

from monitoring.settings import MonitorSettings, SettingsError, load_settings
from service.settings import parse_duration

pytestmark = pytest.mark.unit


def test_defaults_follow_the_seed(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("ZEROPROOF_STATS_TOPIC", "ZEROPROOF_ALERTS_TOPIC", "ZEROPROOF_METRICS_PORT"):
        monkeypatch.delenv(var, raising=False)
    s = MonitorSettings()
    assert s.coverage_threshold == 0.90
    assert s.gap_threshold == 0.05
    assert s.stats_topic == "zeroproof.stats"
    assert s.alerts_topic == "zeroproof.alerts"
    assert s.metrics_port == 0
    assert s.coverage_clear > s.coverage_threshold
    assert s.gap_clear < s.gap_threshold
    assert s.baseline_window == s.long_window - s.short_window


def test_environment_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROPROOF_STATS_TOPIC", "env.stats")
    monkeypatch.setenv("ZEROPROOF_SHORT_WINDOW", "2m")
    monkeypatch.setenv("ZEROPROOF_MONITOR_LABEL", "site")
    s = load_settings(["--coverage-threshold", "0.8", "--long-window", "1h"])
    assert s.stats_topic == "env.stats"
    assert s.short_window == 120.0
    assert s.long_window == 3600.0
    assert s.coverage_threshold == 0.8
    assert s.monitor_label == "site"
    assert load_settings(["--stats-topic", "flag.stats"]).stats_topic == "flag.stats"


@pytest.mark.parametrize(
    ("text", "seconds"), [("300", 300.0), (45, 45.0), ("500ms", 0.5), ("90s", 90.0), ("5m", 300.0), ("1.5h", 5400.0)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["-1", "5 minutes", "inf", "nan", True, None])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("argv", "env_name"),
    [
        (["--coverage-threshold", "1.5"], "ZEROPROOF_COVERAGE_THRESHOLD"),
        (["--coverage-clear", "0.85"], "ZEROPROOF_COVERAGE_CLEAR"),
        (["--gap-clear", "0.06"], "ZEROPROOF_GAP_CLEAR"),
        (["--short-window", "7"], "ZEROPROOF_SHORT_WINDOW"),
        (["--long-window", "60", "--short-window", "300"], "ZEROPROOF_LONG_WINDOW"),
        (["--metrics-port", "70000"], "ZEROPROOF_METRICS_PORT"),
        (["--kafka-bootstrap", "nohost"], "ZEROPROOF_KAFKA_BOOTSTRAP"),
        (["--alertmanager-url", "ftp://x"], "ZEROPROOF_ALERTMANAGER_URL"),
        (["--eval-interval", "0"], "ZEROPROOF_EVAL_INTERVAL"),
        (["--bottom-rise-clear-floor", "0.5"], "ZEROPROOF_BOTTOM_RISE_CLEAR_FLOOR"),
    ],
)
def test_invalid_settings_name_the_setting(argv: list[str], env_name: str) -> None:
    with pytest.raises(SettingsError) as err:
        load_settings(argv)
    line = str(err.value)
    assert env_name in line
    assert "\n" not in line


def test_cli_reports_one_line_without_traceback() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "monitoring", "--gap-threshold", "-0.1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "ZEROPROOF_GAP_THRESHOLD" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_unreachable_broker_is_one_line() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitoring",
            "--kafka-bootstrap",
            "127.0.0.1:1",
            "--log-level",
            "error",
            "--kafka-timeout",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "ZEROPROOF_KAFKA_BOOTSTRAP" in proc.stderr.splitlines()[-1]


def test_redacted_hides_credentials() -> None:
    s = MonitorSettings(alertmanager_url="http://user:secret@am.example:9093")
    assert "secret" not in str(s.redacted())
