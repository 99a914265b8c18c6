"""The book of input partitions held back at a record batch that cannot be decoded, shared by both Kafka clients.

Either client meets such a batch differently (kafka-python raises once and then spins in its fetcher, see
``service/kafka_fetch.py``; librdkafka reports an error per fetch, see ``workers/transport/confluent.py``), but
what follows is the same and lives here: the partition is held at the batch's first offset (nothing after it is
processed or committed), logged once (``partition_undecodable``, then at most every ``relog_s``), shown in the
metrics, retried every ``retry_s`` and released when a retry decodes or the partition moves. The clients only
pause, seek and resume.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from service.kafka import TopicPartition

#: A held partition is logged when found undecodable, then at most this often while it stays undecodable.
UNDECODABLE_RELOG_S = 600.0


class UndecodableMetrics(Protocol):
    """The metrics the book keeps (a service's own registry provides them)."""

    @property
    def undecodable_fetches(self) -> Any: ...

    @property
    def undecodable_offset(self) -> Any: ...

    @property
    def partitions_undecodable(self) -> Any: ...


@dataclass
class HeldPartition:
    """An input partition held back at ``offset``, the first record of a batch that could not be decoded."""

    offset: int
    error: str
    error_type: str
    failures: int
    #: monotonic time of the next try (``inf``: never); ``None`` while resumed for that try
    retry_at: float | None


class HeldPartitions:
    """Which partitions are held, why, since when, and when they are tried again; the log lines and metrics.

    The caller's own pauses (the worker's backpressure) are tracked too, so a partition is resumed only when
    neither the caller nor the book holds it.
    """

    def __init__(
        self,
        log: Any,
        metrics: UndecodableMetrics | None = None,
        retry_s: float = 30.0,
        relog_s: float = UNDECODABLE_RELOG_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._metrics = metrics
        self.retry_s = retry_s
        self.relog_s = relog_s
        self._clock = clock
        self.held: dict[TopicPartition, HeldPartition] = {}
        self.caller_paused: set[TopicPartition] = set()
        #: last log line per partition: (offset, error type, when); kept across rebalances so a partition that
        #: comes back and fails at the same batch is not logged again before ``relog_s``
        self._logged: dict[TopicPartition, tuple[int, str, float]] = {}

    def __bool__(self) -> bool:
        return bool(self.held)

    # --- the caller's flow control ------------------------------------------------------------------------------
    def caller_pauses(self, partitions: Sequence[TopicPartition]) -> None:
        self.caller_paused.update(partitions)

    def caller_resumes(self, partitions: Sequence[TopicPartition]) -> list[TopicPartition]:
        """The caller resumes ``partitions``: those the client may really resume (not held back)."""
        self.caller_paused.difference_update(partitions)
        return [tp for tp in partitions if not self.holds_back(tp)]

    def holds_back(self, tp: TopicPartition) -> bool:
        """Is ``tp`` held and paused (not resumed for a retry)?"""
        h = self.held.get(tp)
        return h is not None and h.retry_at is not None

    def forget_caller_pauses(self, partitions: Iterable[TopicPartition]) -> None:
        """A rebalance moved ``partitions``: the caller's pauses of them end with it."""
        self.caller_paused.difference_update(partitions)

    # --- holding and releasing ----------------------------------------------------------------------------------
    def hold(self, tp: TopicPartition, offset: int, error_type: str, error: str) -> None:
        """Record that ``tp``'s batch at ``offset`` failed to decode (the client has paused ``tp`` there)."""
        now = self._clock()
        prev = self.held.get(tp)
        failures = prev.failures + 1 if prev is not None and prev.offset == offset else 1
        error = error[:500]
        retry_at = now + self.retry_s if self.retry_s > 0 else float("inf")
        self.held[tp] = HeldPartition(offset, error, error_type, failures, retry_at)
        m = self._metrics
        if m is not None:
            m.undecodable_fetches.labels(error_type).inc()
            m.undecodable_offset.labels(tp.topic, str(tp.partition)).set(offset)
            m.partitions_undecodable.set(len(self.held))
        last = self._logged.get(tp)
        first = last is None or last[0] != offset or last[1] != error_type
        if first or (last is not None and now - last[2] >= self.relog_s):
            retry = f"retried every {self.retry_s:g} s" if self.retry_s > 0 else "not retried (restart or rebalance)"
            self._log.error(
                "partition_undecodable" if first else "partition_still_undecodable",
                topic=tp.topic,
                partition=tp.partition,
                offset=offset,
                error_type=error_type,
                error=error,
                failures=failures,
                retry_s=self.retry_s,
                message=(
                    f"record batch at {tp.topic}:{tp.partition} offset {offset} cannot be decoded; this partition "
                    f"is paused there (nothing after it is processed or committed), the others keep flowing; "
                    f"{retry}"
                ),
            )
            self._logged[tp] = (offset, error_type, now)

    def due(self) -> list[TopicPartition]:
        """The held partitions whose retry is due (and the caller does not pause): marked as being retried; the
        client resumes those it still owns."""
        if not self.held:
            return []
        now = self._clock()
        due = [
            tp
            for tp, h in self.held.items()
            if h.retry_at is not None and now >= h.retry_at and tp not in self.caller_paused
        ]
        for tp in due:
            self.held[tp].retry_at = None
        return due

    def decoded(self, partitions: Iterable[TopicPartition]) -> None:
        """``partitions`` returned records: those being retried decode again and are released."""
        if not any(h.retry_at is None for h in self.held.values()):
            return
        for tp in set(partitions):
            h = self.held.get(tp)
            if h is not None and h.retry_at is None:
                self.release(tp, "decoded")

    def release(self, tp: TopicPartition, why: str) -> None:
        """``tp`` is no longer held: it ``"decoded"``, or was ``"revoked"``/``"assigned"`` by a rebalance."""
        h = self.held.pop(tp, None)
        if h is None:
            return
        m = self._metrics
        if m is not None:
            with contextlib.suppress(KeyError):
                m.undecodable_offset.remove(tp.topic, str(tp.partition))
            m.partitions_undecodable.set(len(self.held))
        if why == "decoded":
            self._logged.pop(tp, None)
            self._log.info(
                "partition_decodable_again",
                topic=tp.topic,
                partition=tp.partition,
                offset=h.offset,
                failures=h.failures,
            )
        else:
            self._log.info(
                "partition_undecodable_released", topic=tp.topic, partition=tp.partition, offset=h.offset, reason=why
            )
