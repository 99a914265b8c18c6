"""The Kafka transport's hold-back of undecodable record batches (UndecodableGuard), against kafka-python's own
Fetcher and SubscriptionState: only the network is replaced (``FetcherConsumer`` answers each fetch from an
in-memory partition log of real record batches), so the client's decode, error deferral, pause parking and the
infinite loop the guard prevents are kafka-python's real code."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest
from kafka.consumer.fetcher import CompletedFetch, Fetcher
from kafka.consumer.subscription_state import SubscriptionState
from kafka.errors import KafkaConnectionError, UnsupportedCodecError
from kafka.record import default_records
from kafka.record.memory_records import MemoryRecordsBuilder
from kafka.structs import TopicPartition as KTopicPartition

from workers.metrics import WorkerMetrics
from workers.settings import WorkerSettings
from workers.transport.base import TopicPartition, UndecodableInputError
from workers.transport.kafka import KafkaConsumerTransport, _MembershipTracker

pytestmark = pytest.mark.unit

T = "in"
P0, P1 = TopicPartition(T, 0), TopicPartition(T, 1)
CODECS = {"none": 0, "gzip": 1, "snappy": 2}
RETRY_S = 30.0


class WouldSpinError(Exception):
    """kafka-python's fetched_records took 0 records from the same partition buffer over and over: unguarded,
    this is the loop inside ``poll`` that never returns."""


def batch(base: int, n: int, codec: str = "none") -> bytes:
    """A real v2 record batch of ``n`` records at offsets ``base..base+n-1`` (values ``b"<offset>"``)."""
    b = MemoryRecordsBuilder(magic=2, compression_type=CODECS[codec], batch_size=1 << 20)
    for i in range(n):
        b.append(timestamp=None, key=b"k", value=b"%d" % (base + i) * 20, headers=[])
    b.close()
    buf = bytearray(b.buffer())
    struct.pack_into(">q", buf, 0, base)  # the broker sets the base offset (outside the CRC)
    return bytes(buf)


def garbage_gzip_batch(base: int, n: int, monkeypatch: pytest.MonkeyPatch) -> bytes:
    """A gzip batch whose payload is not gzip: the CRC is computed over it, so only decompression fails."""
    with monkeypatch.context() as m:
        m.setattr(default_records, "gzip_encode", lambda payload, **kw: b"\x1f\x8bnot gzip" + bytes(16))
        return batch(base, n, "gzip")


class FetcherConsumer:
    """What the transport uses of a KafkaConsumer, built on kafka-python's real Fetcher and SubscriptionState.
    ``poll`` answers a fetch for every fetchable partition from ``log`` (batches at or after its position), then
    runs the real ``fetched_records``."""

    def __init__(self, partitions: Sequence[TopicPartition]) -> None:
        self._subscription = SubscriptionState()
        self._subscription.assign_from_user([KTopicPartition(tp.topic, tp.partition) for tp in partitions])
        for tp in partitions:
            self._subscription.seek(KTopicPartition(tp.topic, tp.partition), 0)
        stub_client = SimpleNamespace(_manager=SimpleNamespace(_net=None, broker_version=(2, 8)))
        self._fetcher = Fetcher(stub_client, self._subscription, metrics=None)
        self.log: dict[TopicPartition, list[tuple[int, int, bytes]]] = {tp: [] for tp in partitions}
        self.raise_next: BaseException | None = None
        self.polls = 0
        append = self._fetcher._append
        zero_takes = {"n": 0}

        def counted_append(drained: Any, part: Any, max_records: int, update_offsets: bool) -> int:
            got = append(drained, part, max_records, update_offsets)
            zero_takes["n"] = zero_takes["n"] + 1 if got == 0 and part else 0
            if zero_takes["n"] > 1000:
                raise WouldSpinError(part.topic_partition)
            return int(got)

        self._fetcher._append = counted_append

    def add(self, tp: TopicPartition, base: int, n: int, data: bytes) -> None:
        self.log[tp].append((base, base + n, data))

    def position(self, tp: TopicPartition) -> int:
        return int(self._subscription.assignment[KTopicPartition(tp.topic, tp.partition)].position.offset)

    def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[Any, list[Any]]:
        self.polls += 1
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc
        for ktp in self._fetcher._fetchable_partitions():
            tp = TopicPartition(ktp.topic, ktp.partition)
            pos = self._subscription.assignment[ktp].position.offset
            data = b"".join(d for _, end, d in self.log[tp] if end > pos)
            if data:
                pd = SimpleNamespace(
                    error_code=0,
                    high_watermark=self.log[tp][-1][1],
                    records=data,
                    aborted_transactions=None,
                    diverging_epoch=None,
                    preferred_read_replica=-1,
                )
                self._fetcher._completed_fetches.append(CompletedFetch(ktp, pos, 11, pd, None))
        records, _ = self._fetcher.fetched_records(max_records)
        return dict(records)

    def pause(self, *tps: KTopicPartition) -> None:
        for tp in tps:
            self._subscription.pause(tp)

    def resume(self, *tps: KTopicPartition) -> None:
        for tp in tps:
            self._subscription.resume(tp)

    def paused(self) -> set[TopicPartition]:
        return {TopicPartition(t.topic, t.partition) for t in self._subscription.paused_partitions()}

    def assignment(self) -> set[KTopicPartition]:
        return set(self._subscription.assignment)


class ListLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def error(self, event: str, **kw: Any) -> None:
        self.lines.append(("error", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))

    def events(self, *names: str) -> list[dict[str, Any]]:
        return [kw | {"event": e} for _, e, kw in self.lines if e in names]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _Listener:
    def on_revoked(self, partitions: Any) -> dict[Any, int]:
        return {}

    def on_revoke_committed(self, offsets: Any, error: BaseException | None) -> None:
        return None

    def on_assigned(self, partitions: Any) -> None:
        return None


def transport(client: Any, retry_s: float = RETRY_S) -> tuple[KafkaConsumerTransport, ListLog, WorkerMetrics, Clock]:
    log, metrics, clock = ListLog(), WorkerMetrics(), Clock()
    t = KafkaConsumerTransport(
        WorkerSettings(undecodable_retry_s=retry_s), log=log, metrics=metrics, client=client, clock=clock
    )
    t._membership = _MembershipTracker(_Listener(), t._guard)  # what subscribe() sets up, without a broker
    t._membership.on_assigned([])
    t._guard._rebalances.clear()
    return t, log, metrics, clock


def drain(t: KafkaConsumerTransport, polls: int = 6) -> dict[TopicPartition, list[int]]:
    got: dict[TopicPartition, list[int]] = {}
    for _ in range(polls):
        for r in t.poll(0.0, 500):
            got.setdefault(r.tp, []).append(r.offset)
    return got


def gauge(metrics: WorkerMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels or None)


class Snappy:
    """Switches kafka-python to "installed without python-snappy" (after the test's batches are built)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mp = monkeypatch

    def remove(self) -> None:
        self.mp.setattr("kafka.codec.has_snappy", lambda: False)

    def install(self) -> None:
        self.mp.undo()


@pytest.fixture
def snappy(monkeypatch: pytest.MonkeyPatch) -> Snappy:
    return Snappy(monkeypatch)


def two_partitions_with_a_snappy_batch_on_p0() -> FetcherConsumer:
    c = FetcherConsumer([P0, P1])
    c.add(P0, 0, 3, batch(0, 3))
    c.add(P0, 3, 3, batch(3, 3, "snappy"))
    c.add(P0, 6, 3, batch(6, 3))
    c.add(P1, 0, 4, batch(0, 4))
    c.add(P1, 4, 4, batch(4, 4))
    return c


def test_unguarded_kafka_python_raises_once_then_spins(snappy: Snappy) -> None:
    """The bug the guard exists for (kafka-python 3.0.12): the harness turns the endless loop into WouldSpinError."""
    c = FetcherConsumer([P0])
    c.add(P0, 0, 3, batch(0, 3, "snappy"))
    snappy.remove()
    with pytest.raises(UnsupportedCodecError):
        c.poll()
    with pytest.raises(WouldSpinError):
        c.poll()


def test_an_undecodable_batch_holds_back_its_partition_only(snappy: Snappy) -> None:
    c = two_partitions_with_a_snappy_batch_on_p0()
    snappy.remove()
    t, log, metrics, _ = transport(c)
    got = drain(t)
    assert got == {P0: [0, 1, 2], P1: list(range(8))}
    assert set(t.undecodable) == {P0} and t.undecodable[P0].offset == 3
    assert c.paused() == {P0} and c.position(P0) == 3  # held at the batch: nothing after it skipped
    lines = log.events("partition_undecodable", "partition_still_undecodable")
    assert len(lines) == 1
    assert (lines[0]["partition"], lines[0]["offset"], lines[0]["error_type"]) == (0, 3, "UnsupportedCodecError")
    assert gauge(metrics, "zeroproof_worker_partitions_undecodable") == 1
    assert gauge(metrics, "zeroproof_worker_undecodable_offset", topic=T, partition="0") == 3
    # records arriving on the other partition keep flowing
    c.add(P1, 8, 2, batch(8, 2))
    assert drain(t) == {P1: [8, 9]}


def test_a_deferred_decode_error_is_held_in_the_poll_that_returned_other_records(snappy: Snappy) -> None:
    """kafka-python returns the records it drained first and keeps the error for the next poll; the guard holds
    the partition at once, so a pause before that next poll (backpressure) cannot park the dead buffer."""
    c = FetcherConsumer([P1, P0])
    c.add(P1, 0, 4, batch(0, 4))
    c.add(P0, 0, 3, batch(0, 3, "snappy"))
    snappy.remove()
    t, log, _, _ = transport(c)
    first = t.poll(0.0, 500)  # p1's fetch is parsed first (assignment order), then p0's fails
    assert {r.tp for r in first} == {P1}
    assert set(t.undecodable) == {P0} and c._fetcher._next_in_line_exception_metadata is None
    t.pause([P0, P1])
    t.resume([P0, P1])
    assert drain(t) == {} and c.paused() == {P0}


def test_backpressure_resume_never_resumes_a_held_partition(snappy: Snappy) -> None:
    c = two_partitions_with_a_snappy_batch_on_p0()
    snappy.remove()
    t, _, _, _ = transport(c)
    drain(t)
    t.pause([P0, P1])
    assert c.paused() == {P0, P1}
    t.resume([P0, P1])
    assert c.paused() == {P0}


def test_held_partition_is_retried_logged_rarely_and_released_once_it_decodes(snappy: Snappy) -> None:
    c = two_partitions_with_a_snappy_batch_on_p0()
    snappy.remove()
    t, log, metrics, clock = transport(c)
    drain(t)
    assert c.paused() == {P0}
    clock.now += RETRY_S
    assert drain(t) == {}  # resumed, fetched the same batch, failed again: held again
    assert t.undecodable[P0].failures == 2 and c.paused() == {P0} and c.position(P0) == 3
    assert len(log.events("partition_undecodable", "partition_still_undecodable")) == 1
    # while the worker is paused for backpressure the retry waits
    t.pause([P0, P1])
    clock.now += 10 * RETRY_S
    drain(t)
    assert t.undecodable[P0].retry_at is not None and t.undecodable[P0].failures == 2
    t.resume([P0, P1])
    drain(t)
    assert t.undecodable[P0].failures == 3
    assert len(log.events("partition_undecodable", "partition_still_undecodable")) == 1  # 300 s < relog_s
    clock.now += 700.0
    drain(t)
    assert t.undecodable[P0].failures == 4 and len(log.events("partition_still_undecodable")) == 1
    # the codec becomes available (a transient corruption would heal the same way): the retry decodes it
    snappy.install()
    clock.now += RETRY_S
    got = drain(t)
    assert got == {P0: [3, 4, 5, 6, 7, 8]}  # from the undecodable batch on: nothing skipped
    assert t.undecodable == {} and c.paused() == set()
    assert len(log.events("partition_decodable_again")) == 1
    assert gauge(metrics, "zeroproof_worker_partitions_undecodable") == 0
    assert gauge(metrics, "zeroproof_worker_undecodable_offset", topic=T, partition="0") is None
    assert gauge(metrics, "zeroproof_worker_undecodable_fetches_total", error="UnsupportedCodecError") == 4


def test_retry_zero_keeps_the_partition_paused(snappy: Snappy) -> None:
    c = two_partitions_with_a_snappy_batch_on_p0()
    snappy.remove()
    t, _, _, clock = transport(c, retry_s=0.0)
    drain(t)
    clock.now += 1e6
    drain(t)
    assert t.undecodable[P0].failures == 1 and c.paused() == {P0}


def test_a_reassigned_partition_starts_fresh_without_a_second_log_line(snappy: Snappy) -> None:
    c = two_partitions_with_a_snappy_batch_on_p0()
    snappy.remove()
    t, log, _, _ = transport(c)
    drain(t)
    t._membership.on_revoked([P0, P1])
    t._membership.on_assigned([P0, P1])
    assert t.poll(0.0, 500) == []  # the rebalance is applied: p0 resumed, fetched from its position, held again
    assert len(log.events("partition_undecodable_released")) == 1
    drain(t)
    assert set(t.undecodable) == {P0} and t.undecodable[P0].failures == 1 and c.paused() == {P0}
    assert len(log.events("partition_undecodable", "partition_still_undecodable")) == 1


def test_an_eager_rebalance_unpauses_the_partitions_it_keeps() -> None:
    """The worker assumes nothing is paused after an assignment; kafka-python keeps the paused flag of a kept
    partition, so the transport resumes what it is assigned."""
    c = FetcherConsumer([P0, P1])
    t, _, _, _ = transport(c)
    t.pause([P0, P1])
    t._membership.on_revoked([P0, P1])
    t._membership.on_assigned([P0, P1])
    t.poll(0.0, 10)
    assert c.paused() == set()


def test_a_corrupt_payload_under_a_valid_crc_is_held_like_a_missing_codec(monkeypatch: pytest.MonkeyPatch) -> None:
    c = FetcherConsumer([P0, P1])
    c.add(P0, 0, 2, batch(0, 2))
    c.add(P0, 2, 5, garbage_gzip_batch(2, 5, monkeypatch))
    c.add(P1, 0, 3, batch(0, 3))
    t, log, _, _ = transport(c)
    assert drain(t) == {P0: [0, 1], P1: [0, 1, 2]}
    assert t.undecodable[P0].offset == 2 and t.undecodable[P0].error_type == "BadGzipFile"
    assert len(log.events("partition_undecodable")) == 1


def test_other_client_errors_are_raised_and_hold_nothing() -> None:
    c = FetcherConsumer([P0])
    c.add(P0, 0, 3, batch(0, 3))
    t, _, _, _ = transport(c)
    c.raise_next = KafkaConnectionError("broker gone")
    with pytest.raises(KafkaConnectionError):
        t.poll(0.0, 500)
    assert t.undecodable == {} and drain(t) == {P0: [0, 1, 2]}


def test_a_client_without_the_expected_internals_stops_instead_of_spinning() -> None:
    """A kafka-python other than the pinned 3.0.x: the partition cannot be told, so the worker must stop
    (exit 3) rather than skip offsets or poll into a loop."""

    class OtherClient:
        def poll(self, timeout_ms: int = 0, max_records: int = 500) -> dict[Any, list[Any]]:
            raise UnsupportedCodecError("Libraries for snappy compression codec not found")

        def assignment(self) -> set[KTopicPartition]:
            return {KTopicPartition(T, 0)}

    t, _, _, _ = transport(OtherClient())
    with pytest.raises(UndecodableInputError):
        t.poll(0.0, 500)


def test_a_decode_error_that_left_nothing_stuck_is_raised() -> None:
    """kafka-python as expected, but no broken buffer in its fetcher: nothing can spin, the caller logs it."""
    c = FetcherConsumer([P0])
    t, _, _, _ = transport(c)
    c.raise_next = UnsupportedCodecError("Libraries for snappy compression codec not found")
    with pytest.raises(UnsupportedCodecError):
        t.poll(0.0, 500)
    assert t.undecodable == {}
