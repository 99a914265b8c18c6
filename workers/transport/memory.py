"""In-process broker implementing the transport interface, for unit tests of the worker loop.

One consumer group member owns every partition (no group protocol). Sends can be held (slow downstream) or
failed on purpose, to exercise pausing and resending.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from workers.transport.base import DeliveryHandle, RebalanceListener, Record, RecordRefusedError, TopicPartition


@dataclass
class InMemoryBroker:
    partitions: int = 2
    topics: dict[str, list[list[Record]]] = field(default_factory=dict)
    committed: dict[tuple[str, TopicPartition], int] = field(default_factory=dict)
    hold_sends: bool = False
    fail_next_sends: int = 0
    #: records larger than this (key + value) are refused for good, like a broker's message.max.bytes
    max_record_bytes: int | None = None
    #: a refused record also fails the next this-many sends of the same producer (a broker refuses a produce
    #: request's batch as a whole), with an uncertain refusal; isolated producers never do
    refusal_takes_neighbours: int = 0
    #: a refusal puts the (non-isolated) producer into a fatal state, as kafka-python's idempotent producer
    refusal_breaks_producer: bool = False
    pending: list[_MemHandle] = field(default_factory=list)

    def topic(self, name: str) -> list[list[Record]]:
        return self.topics.setdefault(name, [[] for _ in range(self.partitions)])

    def append(self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()) -> Record:
        parts = self.topic(topic)
        p = (zlib.crc32(key) % self.partitions) if key is not None else sum(len(x) for x in parts) % self.partitions
        rec = Record(topic, p, len(parts[p]), key, value, int(time.time() * 1000), tuple(headers))
        parts[p].append(rec)
        return rec

    def values(self, topic: str) -> list[bytes]:
        return [r.value for part in self.topic(topic) for r in part if r.value is not None]

    def release(self) -> None:
        """Deliver every held send."""
        for h in self.pending:
            if not h.is_done:
                self.append(*h.payload)
                h.is_done = True
        self.pending.clear()


class _MemHandle:
    def __init__(self, payload: tuple[str, bytes | None, bytes, tuple[tuple[str, bytes], ...]]) -> None:
        self.payload = payload
        self.is_done = False
        self.exc: BaseException | None = None

    def done(self) -> bool:
        return self.is_done

    def error(self) -> BaseException | None:
        return self.exc


class InMemoryConsumer:
    def __init__(self, broker: InMemoryBroker, group: str) -> None:
        self.broker = broker
        self.group = group
        self.topic_name = ""
        self.listener: RebalanceListener | None = None
        self.positions: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()
        self.closed = False
        self.poll_times: list[float] = []

    def subscribe(self, topic: str, listener: RebalanceListener) -> None:
        self.topic_name = topic
        self.listener = listener

    def _assign(self) -> None:
        tps = [TopicPartition(self.topic_name, p) for p in range(len(self.broker.topic(self.topic_name)))]
        for tp in tps:
            self.positions[tp] = self.broker.committed.get((self.group, tp), 0)
        if self.listener is not None:
            self.listener.on_assigned(tps)

    def revoke_all(self) -> None:
        """Simulate a rebalance: revoke everything, then re-assign from the committed offsets."""
        if self.listener is not None:
            offsets = self.listener.on_revoked(sorted(self.positions))
            self.commit(offsets)
            self.listener.on_revoke_committed(offsets, None)
        self.positions.clear()
        self.paused.clear()

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        self.poll_times.append(time.monotonic())
        if not self.positions:
            self._assign()
        out: list[Record] = []
        for tp, pos in sorted(self.positions.items()):
            if tp in self.paused:
                continue
            recs = self.broker.topic(tp.topic)[tp.partition][pos : pos + max_records - len(out)]
            out.extend(recs)
            self.positions[tp] = pos + len(recs)
        if not out and timeout_s > 0:
            time.sleep(min(timeout_s, 0.005))
        return out

    def seek_to_committed(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            if tp in self.positions:
                self.positions[tp] = self.broker.committed.get((self.group, tp), 0)

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self.paused.update(partitions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self.paused.difference_update(partitions)

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        for tp, off in offsets.items():
            self.broker.committed[(self.group, tp)] = off

    def close(self) -> None:
        self.closed = True


class InMemoryProducer:
    def __init__(self, broker: InMemoryBroker, isolated: bool = False) -> None:
        self.broker = broker
        self.isolated = isolated
        self.fatal: RecordRefusedError | None = None
        self._neighbours_to_fail = 0

    def broken(self) -> bool:
        return self.fatal is not None

    def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> DeliveryHandle:
        h = _MemHandle((topic, key, value, tuple(headers)))
        limit = self.broker.max_record_bytes
        size = len(value) + len(key or b"")
        if self.fatal is not None:
            h.exc, h.is_done = self.fatal, True
        elif limit is not None and size > limit:
            h.exc = RecordRefusedError(f"{size} bytes, the broker accepts {limit}", True, certain=self.isolated)
            h.is_done = True
            if not self.isolated:
                self._neighbours_to_fail = self.broker.refusal_takes_neighbours
                if self.broker.refusal_breaks_producer:
                    self.fatal = RecordRefusedError("fatal: an earlier batch was refused", True, certain=False)
        elif self._neighbours_to_fail > 0:
            self._neighbours_to_fail -= 1
            h.exc = RecordRefusedError("refused with its produce request", True, certain=False)
            h.is_done = True
        elif self.broker.fail_next_sends > 0:
            self.broker.fail_next_sends -= 1
            h.exc = RuntimeError("injected send failure")
            h.is_done = True
        elif self.broker.hold_sends:
            self.broker.pending.append(h)
        else:
            self.broker.append(topic, key, value, headers)
            h.is_done = True
        return h

    def flush(self, timeout_s: float) -> None:
        if not self.broker.hold_sends:
            self.broker.release()

    def expedite(self, wait_s: float) -> None:
        return None  # sends are immediate (or held by the broker for the test)

    def close(self, timeout_s: float) -> None:
        self.flush(timeout_s)
