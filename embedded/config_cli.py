"""``zeroproof config``: the configuration reference of every service, from their settings models."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from service.reference import render
from service.settings import ServiceSettings


def services() -> list[tuple[str, str, type[ServiceSettings]]]:
    from console.settings import ConsoleSettings
    from monitoring.settings import MonitorSettings
    from workers.settings import WorkerSettings

    return [
        ("Worker", "zeroproof-worker", WorkerSettings),
        ("Monitor", "zeroproof-monitor", MonitorSettings),
        ("Console", "zeroproof console", ConsoleSettings),
    ]


def reference() -> str:
    return render(services())


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("config", help="print the configuration reference of every service")
    p.add_argument("--write", type=Path, help="write it to this file (docs/configuration.md) instead")
    p.add_argument("--check", type=Path, help="exit 1 if this file differs from the generated reference")
    p.set_defaults(func=_config)


def _config(args: argparse.Namespace) -> int:
    text = reference()
    if args.check is not None:
        if not args.check.is_file() or args.check.read_text() != text:
            sys.stderr.write(f"zeroproof config: {args.check} is stale; run zeroproof config --write {args.check}\n")
            return 1
        return 0
    if args.write is not None:
        args.write.write_text(text)
        return 0
    sys.stdout.write(text)
    return 0
