"""Where the monitor's inputs come from: the stats records to aggregate and the alerts earlier instances announced.

``StatsSource`` is the seam between the transport-free core (``monitoring.core``) and Kafka: ``KafkaStatsSource``
reads every partition of the stats topic by assignment (the monitor joins no group: every replica must see every
worker), ``MemoryStatsSource`` is the in-process twin for tests and embedding, with the same interface.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from typing import Any, Protocol

import orjson
import structlog

from monitoring.rules import Alert
from monitoring.settings import MonitorSettings
from service.kafka_fetch import UndecodableGuard

log = structlog.get_logger("zeroproof.monitor")


class StatsSource(Protocol):
    """Raw stats records (``StatsMessage`` JSON) in the order they arrive."""

    def poll(self, timeout: float) -> list[bytes]:
        """What arrived, waiting at most ``timeout`` seconds when nothing has; ``[]`` when nothing came."""
        ...

    def close(self) -> None: ...


class MemoryStatsSource:
    """An in-memory :class:`StatsSource`: ``put`` records, the monitor polls them (tests, embedding)."""

    def __init__(self, records: Iterable[bytes] = ()) -> None:
        self._queue: deque[bytes] = deque(records)
        self.closed = False

    def put(self, *records: bytes) -> None:
        self._queue.extend(records)

    def poll(self, timeout: float) -> list[bytes]:
        if not self._queue:
            time.sleep(min(timeout, 0.01))
            return []
        out = list(self._queue)
        self._queue.clear()
        return out

    def close(self) -> None:
        self.closed = True


def _consumer(settings: MonitorSettings, suffix: str, **extra: Any) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        **settings.kafka_python_client(),
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{settings.monitor_client_id}-{suffix}",
        fetch_max_wait_ms=50,
        request_timeout_ms=int(settings.kafka_timeout * 1000),
        bootstrap_timeout_ms=int(settings.kafka_timeout * 1000),
        **extra,
    )


def read_announced(settings: MonitorSettings, idle: float = 1.0, max_wait: float = 60.0) -> dict[str, Alert]:
    """The last event per ``rule/model_version`` on the alerts topic: what earlier instances announced."""
    from kafka import TopicPartition

    consumer = _consumer(settings, "alerts-reader")
    last: dict[str, Alert] = {}
    try:
        parts = consumer.partitions_for_topic(settings.alerts_topic)
        if not parts:
            return last
        tps = [TopicPartition(settings.alerts_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + max_wait
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < idle:
            batch = consumer.poll(timeout_ms=200, max_records=5000)
            for records in batch.values():
                quiet_since = time.monotonic()
                for rec in records:
                    try:
                        alert = Alert.from_dict(orjson.loads(rec.value))
                    except (ValueError, KeyError, TypeError):
                        continue
                    last[alert.key] = alert
    finally:
        consumer.close()
    return last


class KafkaStatsSource:
    """All partitions of the stats topic by manual assignment, starting at ``since`` (epoch seconds)."""

    def __init__(self, settings: MonitorSettings, since: float) -> None:
        self.s = settings
        self.since = since
        self.consumer = _consumer(
            settings,
            "stats",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            receive_buffer_bytes=4 * 1024 * 1024,
        )
        self.guard = UndecodableGuard(self.consumer, log, retry_s=30.0)
        self.assigned: set[int] = set()
        self._next_refresh = 0.0
        self.refresh()

    def refresh(self) -> None:
        """Assign partitions that appeared since the last look (the topic may not exist yet at start)."""
        from kafka import TopicPartition

        self._next_refresh = time.monotonic() + (10.0 if self.assigned else 1.0)
        parts = self.consumer.partitions_for_topic(self.s.stats_topic) or set()
        new = set(parts) - self.assigned
        if not new:
            return
        topic = self.s.stats_topic
        old = {TopicPartition(topic, p): self.consumer.position(TopicPartition(topic, p)) for p in self.assigned}
        fresh = [TopicPartition(topic, p) for p in sorted(new)]
        self.consumer.assign(list(old) + fresh)
        for tp, pos in old.items():
            self.consumer.seek(tp, pos)
        try:
            found = self.consumer.offsets_for_times({tp: int(self.since * 1000) for tp in fresh})
        except Exception:  # brokers without timestamp lookup: read everything, old records are skipped
            found = {}
        for tp in fresh:
            hit = found.get(tp)
            if hit is None and tp in found:
                self.consumer.seek_to_end(tp)
            elif hit is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, hit.offset)
        self.assigned |= new
        log.info("stats partitions assigned", topic=topic, partitions=sorted(self.assigned))

    def poll(self, timeout: float) -> list[bytes]:
        if time.monotonic() >= self._next_refresh:
            self.refresh()
        if not self.assigned:
            time.sleep(timeout)
            return []
        # an undecodable stats batch holds back its partition only (kafka-python would otherwise spin in poll)
        self.guard.before_poll()
        try:
            batch = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=5000)
        except Exception as exc:
            if self.guard.on_poll_error(exc):
                return []
            raise
        self.guard.after_poll(batch)
        return [rec.value for records in batch.values() for rec in records]

    def close(self) -> None:
        self.consumer.close()
