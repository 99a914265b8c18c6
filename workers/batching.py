"""Micro-batching: records gather in a buffer until a batch is due.

A batch is due when it holds ``max_batch_size`` records, when its first record is ``max_batch_delay`` old, or —
with ``dispatch_when_idle`` (the default) — as soon as the compute stage is free, so an idle worker never waits
out the deadline and batches grow with the load by themselves (docs/worker.md, "Batching").
"""

from __future__ import annotations

import time
from collections.abc import Collection
from dataclasses import dataclass

from workers.transport.base import Record, TopicPartition


@dataclass
class Batch:
    records: list[Record]
    first_at: float  # monotonic time the first record was polled (queue time, the deadline)
    first_wall: float  # wall time of the same moment (the stats record's window start)


class Batcher:
    def __init__(self, max_size: int, max_delay_s: float, dispatch_when_idle: bool) -> None:
        self.max_size = max_size
        self.max_delay_s = max_delay_s
        self.dispatch_when_idle = dispatch_when_idle
        self.batch: Batch | None = None

    @property
    def buffered(self) -> int:
        return len(self.batch.records) if self.batch is not None else 0

    @property
    def room(self) -> int:
        """Records the next poll may add."""
        return self.max_size - self.buffered

    def add(self, records: list[Record]) -> None:
        if not records:
            return
        if self.batch is None:
            self.batch = Batch(list(records), time.monotonic(), time.time())
        else:
            self.batch.records.extend(records)

    def due(self, now: float) -> bool:
        b = self.batch
        return b is not None and (
            self.dispatch_when_idle or len(b.records) >= self.max_size or now >= b.first_at + self.max_delay_s
        )

    def wait_s(self, now: float, idle_s: float) -> float:
        """How long the next poll may wait: until the buffered batch's deadline, ``idle_s`` when empty."""
        return max(0.0, self.batch.first_at + self.max_delay_s - now) if self.batch is not None else idle_s

    def take(self) -> Batch | None:
        b, self.batch = self.batch, None
        return b

    def drop(self, partitions: Collection[TopicPartition]) -> int:
        """Forget buffered records of ``partitions`` (revoked, or restarting from their commits); returns how many.
        They were never processed, so nothing is lost: they are read again."""
        b = self.batch
        if b is None:
            return 0
        keep = [r for r in b.records if r.tp not in partitions]
        dropped = len(b.records) - len(keep)
        self.batch = Batch(keep, b.first_at, b.first_wall) if keep else None
        return dropped

    def clear(self) -> int:
        dropped, self.batch = self.buffered, None
        return dropped
