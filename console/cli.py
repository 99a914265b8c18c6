"""``zeroproof console``: registered on the ``zeroproof`` tool through the ``zeroproof.commands`` entry point.

The flags are the settings' own (``--console-port``, ``--redis-url``...), parsed by the console's settings parser
so that ``zeroproof console``, ``zeroproof-console`` and ``python -m console`` accept exactly the same ones.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "console",
        help="the review console (web): overview, review queue, records, bulk acknowledge, export",
        add_help=False,
        prefix_chars="\0",  # every argument goes to the settings parser below, --help included
    )
    p.add_argument("args", nargs="*", help="settings flags; see zeroproof console --help")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from console.server import main

    return main(list(args.args), prog="zeroproof console")
