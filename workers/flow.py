"""Backpressure: stop fetching input while the next batch cannot be dispatched or a downstream fails.

The consumer keeps polling while paused (group membership and ``max_poll_interval_ms`` stay healthy), so a
paused worker is still a live member; a rebalance hands back unpaused partitions, and the pause starts over.
"""

from __future__ import annotations

from typing import Any

from workers.metrics import WorkerMetrics
from workers.transport.base import Consumer


class FlowControl:
    def __init__(self, consumer: Consumer, metrics: WorkerMetrics, log: Any) -> None:
        self.consumer = consumer
        self.metrics = metrics
        self.log = log
        self.paused = False

    def set(self, paused: bool, in_flight: int = 0) -> None:
        if paused == self.paused:
            return
        parts = sorted(self.consumer.assignment())
        if paused:
            self.consumer.pause(parts)
        else:
            self.consumer.resume(parts)
        self.paused = paused
        self.metrics.paused.set(1 if paused else 0)
        self.log.debug("backpressure", paused=paused, in_flight=in_flight)

    def rebalanced(self) -> None:
        """Partitions assigned anew start unpaused."""
        self.paused = False
        self.metrics.paused.set(0)
