"""``zeroproof run``: registered on the ``zeroproof`` tool through the ``zeroproof.commands`` entry point."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from embedded.options import StackOptions
from embedded.stack import run_stack


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("run", help="the whole stack on this machine with robot-arm events")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--rate", type=float, default=400.0, help="events per second (default 400)")
    p.add_argument("--arms", type=int, default=6)
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<timestamp>)")
    p.add_argument(
        "--model",
        type=Path,
        default=Path("runs/models/arm.zpb"),
        help="reference arm bundle; trained on first run if missing",
    )
    p.add_argument("--worker-metrics-port", type=int, default=0)
    p.add_argument("--monitor-metrics-port", type=int, default=0)
    p.add_argument(
        "--console-port", type=int, default=8080, help="review console port (default 8080, else a free one; 0 = free)"
    )
    p.add_argument(
        "--keep", action="store_true", help="after the report, keep everything up (console included) until Ctrl-C"
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    options = StackOptions(
        duration_s=args.duration,
        rate_per_second=args.rate,
        arms=args.arms,
        model_path=args.model,
        worker_metrics_port=args.worker_metrics_port,
        monitor_metrics_port=args.monitor_metrics_port,
        console_port=args.console_port,
        keep=args.keep,
    )
    if args.out is not None:
        options.out_dir = args.out
    return run_stack(options)
