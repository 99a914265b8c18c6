"""The README is the configuration reference: every setting and every CLI command must be documented there."""

from __future__ import annotations

from pathlib import Path

import pytest

from monitoring.settings import MonitorSettings
from workers.settings import WorkerSettings
from zeroproof.cli import build_parser

pytestmark = pytest.mark.unit
README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("settings", [WorkerSettings, MonitorSettings])
def test_every_setting_is_in_the_readme(settings: type) -> None:
    missing = [
        f"ZEROPROOF_{name.upper()}" for name in settings.model_fields if f"`ZEROPROOF_{name.upper()}`" not in README
    ]
    assert missing == []


def test_every_cli_command_is_in_the_readme() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"run", "demo", "bundle", "review", "train-arm", "validate", "calibrate"} <= set(commands)
    missing = [name for name in commands if f"zeroproof {name}" not in README]
    assert missing == []
