"""``zeroproof`` command-line tool (also ``python -m zeroproof``).

Subcommands come from the ``zeroproof.commands`` entry-point group, so the pure library never imports the
streaming side: ``workers`` contributes ``review`` and friends, the library contributes ``demo``, ``bundle``,
``export``... Each entry point names a module with ``register(subparsers) -> None`` that adds one parser and
sets ``func`` (taking the parsed namespace, returning an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from zeroproof.utils.errors import one_line

#: Built-in command modules, registered even when the package metadata is unavailable (e.g. a plain checkout).
BUILTIN_COMMANDS = (
    "zeroproof.commands.demo",
    "zeroproof.commands.bundle",
    "zeroproof.commands.train",
)


def _command_modules() -> list[str]:
    names = list(BUILTIN_COMMANDS)
    for ep in entry_points(group="zeroproof.commands"):
        if ep.value not in names:
            names.append(ep.value)
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zeroproof", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module_name in _command_modules():
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a broken plug-in must not take the other commands down with it
            print(f"zeroproof: warning: command module {module_name} unavailable: {exc}", file=sys.stderr)
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError) as exc:  # configuration/input problems: one clear line, no traceback
        print(f"zeroproof {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
