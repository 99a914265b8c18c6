"""Log lines about inputs and the model, rate-limited so a burst never floods the log nor hides that it happened."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from workers.metrics import WorkerMetrics
from workers.pipeline import BottomEvent


class BottomLogLimiter:
    """Log each ⊥ input as a structured event, at most ``rate`` per second; count the rest and report the
    count periodically, so a burst of ⊥ never floods the log (and never hides that it happened)."""

    def __init__(self, log: Any, metrics: WorkerMetrics, rate: float, report_every_s: float = 10.0) -> None:
        self.log = log
        self.metrics = metrics
        self.rate = rate
        self.tokens = rate
        self.last = time.monotonic()
        self.suppressed = 0
        self.report_every_s = report_every_s
        self.last_report = self.last

    def __call__(self, events: Sequence[BottomEvent], model_version: str) -> None:
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.last) * self.rate)
        self.last = now
        for ev in events:
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                self.log.warning(
                    "bottom_input",
                    input_id=ev.input_id,
                    entity=ev.entity,
                    source=f"{ev.topic}:{ev.partition}:{ev.offset}",
                    bottom_elements=ev.elements,
                    model_version=model_version,
                )
            else:
                self.suppressed += 1
                self.metrics.bottom_log_suppressed.inc()
        self.tick(now)

    def tick(self, now: float | None = None) -> None:
        """Report the suppressed count once per period even when no new ⊥ arrives."""
        now = time.monotonic() if now is None else now
        if self.suppressed and now - self.last_report >= self.report_every_s:
            self.log.warning(
                "bottom_inputs_suppressed", count=self.suppressed, window_s=round(now - self.last_report, 1)
            )
            self.suppressed = 0
            self.last_report = now


class ModelErrorLog:
    """``model_output_invalid`` errors: the first of each (model version, error) is logged at once, then at most
    one line per ``every_s`` with the number of inputs sent to the DLQ since, so a broken model is said clearly
    without one line per batch."""

    def __init__(self, log: Any, every_s: float = 60.0) -> None:
        self.log = log
        self.every_s = every_s
        self.last: dict[tuple[str, str], float] = {}
        self.pending: dict[tuple[str, str], int] = {}

    def __call__(self, errors: Sequence[tuple[str, int]], model_version: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for error, inputs in errors:
            key = (model_version, error)
            self.pending[key] = self.pending.get(key, 0) + inputs
            last = self.last.get(key)
            if last is None or now - last >= self.every_s:
                self.log.error(
                    "model_output_invalid",
                    model_version=model_version,
                    error=error,
                    inputs_to_dlq=self.pending.pop(key),
                    first=last is None,
                    message="the model's output breaks the serving contract: its inputs go to the DLQ "
                    "(reason model_output_invalid); deploy a fixed model (hot reload) and replay them",
                )
                self.last[key] = now
