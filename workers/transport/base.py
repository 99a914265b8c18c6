"""The transport interface the worker needs: poll/pause/resume/commit, and asynchronous acknowledged sends."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple, Protocol

from service.kafka import TopicPartition, UndecodableInputError


class RecordRefusedError(Exception):
    """The client or the broker refused a record for good (larger than it accepts, invalid): sending it again
    cannot succeed. Transports report such failures as this type, so the checkpoint can replace the record
    instead of re-sending it forever (which stalled the partition)."""

    def __init__(self, message: str, too_large: bool, certain: bool = True) -> None:
        super().__init__(message)
        self.too_large = too_large
        #: False when the refusal may belong to another record of the same produce request (a broker refuses a
        #: request's record batch as a whole): the record must then be tried again alone before it is blamed.
        self.certain = certain


class Record(NamedTuple):
    """One consumed message. ``timestamp_ms`` is the broker/producer timestamp (for end-to-end latency).

    A NamedTuple because one is built per consumed message: it is the cheapest immutable record in Python."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


class RebalanceListener(Protocol):
    """Called while ``Consumer.poll`` is blocked (kafka-python 3 calls it on its IO thread).

    ``on_revoked`` must not call the consumer: it finishes what it can (bounded) and returns the durable
    next-offsets of the revoked partitions; the transport commits them before the partitions move on, then
    reports the result through ``on_revoke_committed``.
    """

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]: ...

    def on_revoke_committed(self, offsets: Mapping[TopicPartition, int], error: BaseException | None) -> None: ...

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None: ...


class DeliveryHandle(Protocol):
    """An in-flight send. ``done()`` never blocks; ``error()`` is ``None`` once acknowledged by the broker."""

    def done(self) -> bool: ...

    def error(self) -> BaseException | None: ...


class Consumer(Protocol):
    def subscribe(self, topic: str, listener: RebalanceListener) -> None: ...

    def poll(self, timeout_s: float, max_records: int) -> list[Record]: ...

    def pause(self, partitions: Sequence[TopicPartition]) -> None: ...

    def resume(self, partitions: Sequence[TopicPartition]) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    def seek_to_committed(self, partitions: Sequence[TopicPartition]) -> None:
        """Restart ``partitions`` from their committed offsets (the reset policy where none is committed)."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Synchronously commit ``offset`` = the next offset to read, per partition; raises on failure."""
        ...

    def close(self) -> None: ...


class Producer(Protocol):
    def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> DeliveryHandle: ...

    def flush(self, timeout_s: float) -> None: ...

    def expedite(self, wait_s: float) -> None:
        """Send what was handed to the client now rather than after its linger; may block up to ``wait_s`` (a
        client that can only cut its linger short from inside a flush waits there). The worker calls it after a
        batch when it has nothing else to do."""
        ...

    def close(self, timeout_s: float) -> None: ...

    def broken(self) -> bool:
        """True once the client can send nothing more (a fatal state): the checkpoint replaces it."""
        ...


class ProducerFactory(Protocol):
    """Makes a new producer; ``isolated`` asks for one that puts every record in a produce request of its own
    and has no idempotence state to lose (for trying records the broker refused, one by one)."""

    def __call__(self, isolated: bool = False) -> Producer: ...


__all__ = [
    "Consumer",
    "DeliveryHandle",
    "Producer",
    "ProducerFactory",
    "RebalanceListener",
    "Record",
    "RecordRefusedError",
    "TopicPartition",
    "UndecodableInputError",
]
