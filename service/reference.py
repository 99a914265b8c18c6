"""The configuration reference as Markdown, rendered from the settings models themselves (their parts, field
descriptions, defaults and variable names), so docs/configuration.md and ``--help`` can never disagree."""

from __future__ import annotations

from collections.abc import Sequence

from service.settings import ServiceSettings

HEADER = """# Configuration reference

Generated from the settings models by `zeroproof config --write docs/configuration.md`; a test fails when this
file is stale. Every setting is an environment variable and a flag of the same name (`ZEROPROOF_FOO_BAR`,
`--foo-bar`); the flag wins. Invalid configuration stops a service at start-up with one line naming the setting
(exit code 2), never a traceback. Durations are a number in the unit the name says (`_s` seconds, `_ms`
milliseconds, no unit: seconds) or a number with its own unit (`500ms`, `90s`, `5m`, `1h`). Secrets (marked
"secret") are never logged, rendered or echoed, whatever their shape; prefer environment variables to flags for
them. Parts shared by several services (Kafka, Redis, Alertmanager) have one definition in `service/` and mean
the same everywhere.
"""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render(services: Sequence[tuple[str, str, type[ServiceSettings]]]) -> str:
    """``services``: (title, command, settings class). Shared parts are written once, where first met."""
    out = [HEADER]
    written_parts: set[str] = set()
    for title, command, cls in services:
        out.append(f"## {title}\n\n`{command} --help` prints the same settings.\n")
        groups: dict[str, list[str]] = {"": []}  # the service's own settings first, then the shared parts
        for doc in cls.reference():
            env = ", ".join(f"`{e}`" for e in doc.env)
            row = f"| {env} | `{doc.flag}` | `{_cell(doc.default)}` | {_cell(doc.description)} |"
            groups.setdefault(doc.part, []).append(row)
        for part, rows in groups.items():
            if part in written_parts:
                out.append(f"{part}: as above.\n")
                continue
            if part:
                written_parts.add(part)
            out.append(f"### {part or title + ' settings'}\n")
            out.append("| Variable | Flag | Default | Meaning |\n|---|---|---|---|")
            out.extend(rows)
            out.append("")
    return "\n".join(out).rstrip() + "\n"
