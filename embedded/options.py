"""What a run of the embedded stack is asked to do, and what it saw: shared by the stack and its report."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StackOptions:
    duration_s: float = 60.0
    rate_per_second: float = 400.0
    arms: int = 6
    out_dir: Path = field(default_factory=lambda: Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    model_path: Path = Path("runs/models/arm.zpb")
    train_seconds: float = 90.0
    drain_timeout_s: float = 30.0
    worker_metrics_port: int = 0
    monitor_metrics_port: int = 0
    #: the review console's port (0 = any free one; the default falls back to a free one when 8080 is taken)
    console_port: int = 8080
    #: keep broker, Redis, worker, monitor and console up after the report until Ctrl-C
    keep: bool = False


@dataclass
class Timeline:
    """Per-second aggregates of what the workers published, for the live view and the plot."""

    points: list[dict[str, float]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, int] = field(default_factory=dict)
