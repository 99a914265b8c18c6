"""The reference docs are generated from the code or checked against it: the configuration reference is fresh,
``--help`` shows the same text, every setting says what it does, every CLI command is documented."""

from __future__ import annotations

from pathlib import Path

import pytest

from console.settings import build_arg_parser as console_parser
from embedded.config_cli import reference, services
from monitoring.settings import build_arg_parser as monitor_parser
from workers.settings import build_arg_parser as worker_parser
from zeroproof.cli import build_parser

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DOCS = "\n".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))


def test_configuration_reference_is_fresh() -> None:
    generated = reference()
    on_disk = (ROOT / "docs" / "configuration.md").read_text()
    assert on_disk == generated, "docs/configuration.md is stale: run `zeroproof config --write docs/configuration.md`"


@pytest.mark.parametrize(("title", "command", "settings"), services())
def test_every_setting_says_what_it_does(title: str, command: str, settings: type) -> None:
    assert [name for name, f in settings.model_fields.items() if not (f.description or "").strip()] == []


@pytest.mark.parametrize("parser", [worker_parser, monitor_parser, console_parser])
def test_help_shows_the_reference_text(parser: object) -> None:
    # argparse wraps lines (also at hyphens): compare without any whitespace
    help_text = "".join(parser().format_help().split())  # type: ignore[operator]
    for title, _, settings in services():
        if parser().prog not in (f"zeroproof-{title.lower()}", f"zeroproof {title.lower()}"):  # type: ignore[operator]
            continue
        for doc in settings.reference():
            assert "".join(doc.description.split()) in help_text, doc.name
            assert doc.env[0] in help_text, doc.name


def test_every_cli_command_is_documented() -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    assert {"run", "demo", "bundle", "review", "train-arm", "validate", "calibrate", "config"} <= set(commands)
    missing = [name for name in commands if f"zeroproof {name}" not in README + DOCS]
    assert missing == []


def test_the_readme_links_the_reference_docs() -> None:
    for page in ("docs/configuration.md", "docs/contract.md"):
        assert f"]({page})" in README, page
        assert (ROOT / page).is_file()
