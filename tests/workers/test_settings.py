"""Settings: env + CLI precedence, validation errors as one line naming the setting, secrets never printed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.worker import REPO, known_pole_bundle
from service.secrets import redact_url
from workers.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_env_then_cli_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZEROPROOF_MAX_BATCH_SIZE", "64")
    monkeypatch.setenv("ZEROPROOF_INPUT_TOPIC", "env.topic")
    s = load_settings(["--input-topic", "cli.topic"])
    assert s.max_batch_size == 64 and s.input_topic == "cli.topic"
    assert s.output_topic == "zeroproof.outputs" and s.policy_gap == "fallback" and s.policy_bottom == "fallback"


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"ZEROPROOF_TAU_INFER": "-1"}, "ZEROPROOF_TAU_INFER"),
        ({"ZEROPROOF_MAX_BATCH_SIZE": "lots"}, "ZEROPROOF_MAX_BATCH_SIZE"),
        ({"ZEROPROOF_KAFKA_BOOTSTRAP": "nohostport"}, "ZEROPROOF_KAFKA_BOOTSTRAP"),
        ({"ZEROPROOF_POLICY_GAP": "maybe"}, "ZEROPROOF_POLICY_GAP"),
        ({"ZEROPROOF_SHADOW_THRESHOLDS": "1e-3:1e-5"}, "ZEROPROOF_SHADOW_THRESHOLDS"),
        ({"ZEROPROOF_MODEL": "/nonexistent/model.zpb"}, "ZEROPROOF_MODEL"),
        ({"ZEROPROOF_REDIS_URL": "http://x"}, "ZEROPROOF_REDIS_URL"),
        ({"ZEROPROOF_FALLBACK_CONTROLLERS": "hold_last,magic"}, "ZEROPROOF_FALLBACK_CONTROLLERS"),
        ({"ZEROPROOF_MAX_IN_FLIGHT_RECORDS": "100"}, "ZEROPROOF_MAX_IN_FLIGHT_RECORDS"),  # below max_batch_size
        ({"ZEROPROOF_MAX_IN_FLIGHT_BATCHES": "2"}, "ZEROPROOF_MAX_IN_FLIGHT_BATCHES"),  # replaced: refused, not ignored
    ],
)
def test_invalid_setting_is_one_line(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as exc:
        load_settings([])
    text = str(exc.value)
    assert name in text and "\n" not in text


def test_secrets_are_redacted() -> None:
    s = load_settings(
        [], redis_url="redis://user:hunter2@localhost:6379/0", kafka_sasl_password="s3cret", redis_password="pw9"
    )
    dumped = repr(s) + str(s.redacted())
    assert "hunter2" not in dumped and "s3cret" not in dumped and "pw9" not in dumped
    assert redact_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"


def _run_worker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "workers", *args], env=full, cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_worker_refuses_bad_config_with_one_line(tmp_path: Path) -> None:
    r = _run_worker({"ZEROPROOF_TAU_TRAIN": "nan", "ZEROPROOF_MODEL": str(known_pole_bundle(tmp_path / "m.zpb"))})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "ZEROPROOF_TAU_TRAIN" in lines[0] and "Traceback" not in r.stderr
    r = _run_worker({}, "--max-batch-delay-ms", "0")
    assert r.returncode == 2 and "ZEROPROOF_MAX_BATCH_DELAY_MS" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run_worker({})  # no model at all
    assert r.returncode == 2 and "ZEROPROOF_MODEL" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "garbage.zpb"
    bad.write_bytes(b"not a model")
    r = _run_worker({"ZEROPROOF_MODEL": str(bad)})
    assert r.returncode == 2 and "garbage.zpb" in r.stderr and len(r.stderr.strip().splitlines()) == 1
