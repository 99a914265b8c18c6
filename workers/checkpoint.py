"""The one owner of the delivery order (contract §4).

A batch's offsets are committed only after (1) every record it produced (outputs, DLQ, fallback requests,
stats) is acknowledged by the broker and (2) its ⊥ review records are confirmed by Redis. Batches become
committable in the order they were consumed (a contiguous prefix), so a committed offset never skips over an
unconfirmed message. Nothing here blocks for long: the loop calls :meth:`Checkpoint.progress` between polls;
failed sends are re-sent and failed Redis writes retried with backoff while the consumer stays in its group.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from service.review import ReviewItem, ReviewSink, ReviewStoreError
from workers.backoff import Backoff
from workers.metrics import WorkerMetrics
from workers.pipeline import Delivery
from workers.records import Outgoing
from workers.transport.base import (
    Consumer,
    DeliveryHandle,
    Producer,
    ProducerFactory,
    RecordRefusedError,
    TopicPartition,
)


@dataclass
class InFlight:
    seq: int
    offsets: dict[TopicPartition, int]
    #: input records per partition (sent, not committed: what a crash would deliver again)
    records: dict[TopicPartition, int]
    sends: list[Outgoing]
    handles: list[DeliveryHandle]
    reviews: list[ReviewItem]
    reviews_done: bool = False
    review_attempts: int = 0
    next_review_try: float = 0.0
    next_send_retry: float = 0.0
    send_attempts: int = 0
    input_timestamps_ms: list[int] = field(default_factory=list)
    created: float = field(default_factory=time.monotonic)
    stall_level: int = 0
    #: indices of sends already replaced after a refusal: a replacement refused again is retried, not replaced
    replaced: set[int] = field(default_factory=set)
    #: indices of sends refused together with their produce request, now being tried alone (isolated producer)
    isolated: set[int] = field(default_factory=set)
    #: every handle before this index has been seen done: acknowledged for good, or listed in ``watch``
    seen: int = 0
    #: indices below ``seen`` whose current handle is not acknowledged: failed, or replaced and not yet done
    watch: set[int] = field(default_factory=set)

    def scan(self) -> None:
        """Move ``seen`` over the handles that are done, in send order, stopping at the first one that is not (the
        client acknowledges in about that order), and forget the watched ones acknowledged since: each handle is
        asked about once while it is pending, however many times the loop calls, instead of every handle of every
        batch at every step (that was ~3 000 calls per step with a 1024-record batch in flight)."""
        hs = self.handles
        i, n = self.seen, len(hs)
        while i < n:
            h = hs[i]
            if not h.done():
                break
            if h.error() is not None:
                self.watch.add(i)
            i += 1
        self.seen = i
        if self.watch:
            self.watch = {j for j in self.watch if not (hs[j].done() and hs[j].error() is None)}

    def failed(self) -> list[int]:
        """Indices whose send is done with an error (after :meth:`scan`)."""
        hs = self.handles
        return sorted(j for j in self.watch if hs[j].done() and hs[j].error() is not None)

    def resent(self, i: int) -> None:
        """Handle ``i`` was replaced by a new send: watch it if the scan has passed it."""
        if i < self.seen:
            self.watch.add(i)

    def all_done(self) -> bool:
        """Every send is done (acknowledged or failed), after :meth:`scan`."""
        return self.seen == len(self.handles) and all(self.handles[j].done() for j in self.watch)

    def sends_acked(self) -> bool:
        """Every send acknowledged without error, after :meth:`scan`."""
        return self.seen == len(self.handles) and not self.watch


class Checkpoint:
    def __init__(
        self,
        consumer: Consumer,
        producer: Producer,
        reviews: ReviewSink,
        metrics: WorkerMetrics,
        log: Any,
        replace_refused: Callable[[Outgoing, BaseException], Outgoing],
        max_backoff_s: float = 5.0,
        producer_factory: ProducerFactory | None = None,
        stall_s: float = 5.0,
    ) -> None:
        self.consumer = consumer
        self.producer = producer
        self.reviews = reviews
        self.metrics = metrics
        self.log = log
        self.replace_refused = replace_refused
        self.refused = 0
        #: retries of Redis writes and failed sends: 0.1 s, doubling, at most ``max_backoff_s``
        self.backoff = Backoff(initial=0.1, cap=max_backoff_s)
        self.producer_factory = producer_factory
        self.stall_s = stall_s
        self._isolated: Producer | None = None
        self.pending: deque[InFlight] = deque()
        self.uncommitted: dict[TopicPartition, int] = {}
        #: input records of durable batches per partition whose offsets are not committed yet
        self.uncommitted_records: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self._seq = 0

    @property
    def in_flight(self) -> int:
        return len(self.pending)

    @property
    def records_in_flight(self) -> int:
        """Input records whose outputs were sent but whose offsets are not committed: a crash now would deliver
        them again. The worker keeps this at most ``max_in_flight_records`` (the contract's duplicate bound)."""
        return sum(sum(b.records.values()) for b in self.pending) + sum(self.uncommitted_records.values())

    @property
    def blocked_downstream(self) -> bool:
        """True while a batch waits on a retry (Redis or a failed send): the downstream is slow or down."""
        return any((b.review_attempts > 0 and not b.reviews_done) or b.send_attempts > 0 for b in self.pending)

    def submit(self, delivery: Delivery, extra: Iterable[Outgoing] = (), expedite_s: float = 0.0) -> InFlight:
        """Send everything the batch produced, then ``extra`` (its stats record), and start its Redis write.

        ``expedite_s`` > 0 (the loop has nothing else to do): the batch's own records leave at once rather than after
        the producer's linger, which may take that long (``Producer.expedite``), and ``extra`` follows in a request
        of its own (an output shared its produce request with the stats record took ~0.6 ms longer to become
        visible on tansu); otherwise returns immediately."""
        self._seq += 1
        sends = list(delivery.sends)
        # No flush otherwise: with linger_ms = 0 (the default) kafka-python sends as soon as its IO thread runs, and
        # its flush(0) would not cut a longer linger short (it drops its flush flag when the zero timeout expires;
        # measured: linger 5 ms → every ack 6.5 ms).
        handles = [self.producer.send(s.topic, s.key, s.value, s.headers) for s in sends]
        if expedite_s > 0:
            self.producer.expedite(expedite_s)
        for s in extra:
            sends.append(s)
            handles.append(self.producer.send(s.topic, s.key, s.value, s.headers))
        batch = InFlight(
            self._seq,
            dict(delivery.offsets),
            dict(delivery.records),
            sends,
            handles,
            delivery.reviews,
            input_timestamps_ms=delivery.input_timestamps_ms,
        )
        self._write_reviews(batch, time.monotonic())
        self.pending.append(batch)
        self._gauges()
        return batch

    def _gauges(self) -> None:
        self.metrics.in_flight.set(len(self.pending))
        self.metrics.in_flight_records.set(self.records_in_flight)

    def _write_reviews(self, batch: InFlight, now: float) -> None:
        if batch.reviews_done:
            return
        if not batch.reviews:
            batch.reviews_done = True
            return
        try:
            new = self.reviews.record_batch(batch.reviews)
        except ReviewStoreError as exc:
            batch.review_attempts += 1
            delay = self.backoff.delay(batch.review_attempts)
            batch.next_review_try = now + delay
            self.metrics.error("redis")
            if batch.review_attempts in (1, 2, 4) or batch.review_attempts % 20 == 0:
                self.log.error(
                    "review_write_failed", error=str(exc), attempt=batch.review_attempts, retry_in_s=round(delay, 3)
                )
            return
        if batch.review_attempts:
            self.log.info("review_write_recovered", attempts=batch.review_attempts + 1)
        batch.reviews_done = True
        self.metrics.review_new.inc(new)

    def _isolated_producer(self) -> Producer | None:
        if self._isolated is None and self.producer_factory is not None:
            try:
                self._isolated = self.producer_factory(isolated=True)
            except Exception as exc:
                self.log.error("producer_recreate_failed", error=repr(exc), isolated=True)
        return self._isolated

    def _replace_refused(self, batch: InFlight) -> None:
        """Records refused for good (too large, invalid) are final: each is replaced once by what
        ``replace_refused`` makes of it (a small DLQ record), so the batch can become durable. A refusal that may
        belong to another record of the same produce request is not final yet: the record is tried again alone,
        on an isolated producer, and replaced only if refused there too."""
        for i in batch.failed():
            if i in batch.replaced:
                continue
            h = batch.handles[i]
            err = h.error()
            if not isinstance(err, RecordRefusedError):
                continue
            if not err.certain and i not in batch.isolated:
                isolated = self._isolated_producer()
                if isolated is not None:
                    batch.isolated.add(i)
                    s = batch.sends[i]
                    batch.handles[i] = isolated.send(s.topic, s.key, s.value, s.headers)
                    batch.resent(i)
                    continue
            old = batch.sends[i]
            new = batch.sends[i] = self.replace_refused(old, err)
            batch.replaced.add(i)
            batch.handles[i] = self.producer.send(new.topic, new.key, new.value, new.headers)
            batch.resent(i)
            self.refused += 1
            self.metrics.refused.labels(old.kind).inc()
            if self.refused <= 10 or self.refused % 1000 == 0:
                self.log.error(
                    "record_refused_replaced",
                    kind=old.kind,
                    topic=old.topic,
                    source=old.source,
                    bytes=len(old.value) + len(old.key or b""),
                    replaced_by=new.topic,
                    error=str(err),
                    refused_total=self.refused,
                )

    def _retry_failed_sends(self, batch: InFlight, now: float) -> None:
        self._replace_refused(batch)
        if now < batch.next_send_retry:
            return
        failed = batch.failed()
        if not failed:
            return
        batch.send_attempts += 1
        self.metrics.error("kafka_produce")
        err = batch.handles[failed[0]].error()
        if batch.send_attempts in (1, 2, 4) or batch.send_attempts % 20 == 0:
            self.log.error("send_failed_resending", error=repr(err), records=len(failed), attempt=batch.send_attempts)
        isolated = self._isolated_producer() if batch.isolated else None
        for i in failed:
            s = batch.sends[i]
            via = isolated if isolated is not None and i in batch.isolated else self.producer
            batch.handles[i] = via.send(s.topic, s.key, s.value, s.headers)
            batch.resent(i)
        batch.next_send_retry = now + self.backoff.delay(batch.send_attempts)

    def _watch_stall(self, b: InFlight, now: float) -> None:
        """Sends unacknowledged for ``stall_s`` (the client normally answers in milliseconds): first flush,
        then replace the producer and re-send what is outstanding. Duplicates are possible, loss is not."""
        if now - b.created < self.stall_s * (b.stall_level + 1) or b.all_done():
            return
        b.stall_level += 1
        self.metrics.error("kafka_produce_stall")
        outstanding = sum(1 for p in self.pending for h in p.handles if not h.done())
        if b.stall_level == 1 or self.producer_factory is None:
            self.log.warning("producer_stalled", outstanding=outstanding, waited_s=round(now - b.created, 2))
            self.producer.flush(0.0)
            return
        self._recreate_producer("stalled", outstanding=outstanding, waited_s=round(now - b.created, 2))

    def _recreate_producer(self, reason: str, **fields: Any) -> None:
        """A fresh producer, and every record not acknowledged by the old one sent again on it (refused records
        are left to :meth:`_replace_refused`). Duplicates are possible, loss is not."""
        if self.producer_factory is None:
            return
        self.log.error("producer_recreated", reason=reason, **fields)
        old = self.producer
        try:
            self.producer = self.producer_factory()
        except Exception as exc:
            self.log.error("producer_recreate_failed", error=repr(exc))
            return
        old.close(0.0)
        for p in self.pending:
            for i, h in enumerate(p.handles):
                if i in p.isolated:
                    continue
                err = h.error() if h.done() else None
                if not h.done() or (err is not None and not isinstance(err, RecordRefusedError)):
                    s = p.sends[i]
                    p.handles[i] = self.producer.send(s.topic, s.key, s.value, s.headers)
                    p.resent(i)

    def progress(self, commit: bool = True) -> int:
        """Advance retries, move the durable prefix to ``uncommitted``, commit it. Returns batches completed."""
        now = time.monotonic()
        if self.producer.broken():
            # kafka-python's idempotent producer never sends again after a non-retriable broker error
            self._recreate_producer("fatal_client_state")
        for b in self.pending:
            if not b.reviews_done and now >= b.next_review_try:
                self._write_reviews(b, now)
            b.scan()
            if b.watch:
                self._retry_failed_sends(b, now)
        if self.pending:
            self._watch_stall(self.pending[0], now)
        done = 0
        while self.pending and self.pending[0].reviews_done and self.pending[0].sends_acked():
            b = self.pending.popleft()
            done += 1
            for tp, off in b.offsets.items():
                if off > self.uncommitted.get(tp, -1):
                    self.uncommitted[tp] = off
            for tp, n in b.records.items():
                self.uncommitted_records[tp] = self.uncommitted_records.get(tp, 0) + n
            kinds: dict[str, int] = {}
            for s in b.sends:
                kinds[s.kind] = kinds.get(s.kind, 0) + 1
            self.metrics.batch_durable(kinds, b.input_timestamps_ms, now - b.created)
        if done:
            self._gauges()
        if commit:
            self.commit()
        return done

    def commit(self) -> bool:
        offsets = {tp: off for tp, off in self.uncommitted.items() if self.committed.get(tp, -1) < off}
        if len(offsets) < len(self.uncommitted):  # already committed further (by a revoke's commit): nothing at risk
            for tp in [tp for tp in self.uncommitted if tp not in offsets]:
                del self.uncommitted[tp]
                self.uncommitted_records.pop(tp, None)
        if not offsets:
            return True
        t0 = time.perf_counter()
        try:
            self.consumer.commit(offsets)
        except Exception as exc:  # rebalance in progress, coordinator moved, broker down: retried next time
            self.metrics.error("kafka_commit")
            self.log.warning("commit_failed", error=repr(exc), partitions=len(offsets))
            return False
        self.metrics.commit_latency.observe(time.perf_counter() - t0)
        self.committed.update(offsets)
        for tp in offsets:
            if self.uncommitted.get(tp) == offsets[tp]:
                del self.uncommitted[tp]
                self.uncommitted_records.pop(tp, None)
        self._gauges()
        return True

    def drain(self, timeout_s: float, commit: bool = True) -> bool:
        """Wait (bounded) until every in-flight batch is durable; ``commit=False`` leaves committing to the
        caller (inside a rebalance, where only the transport may talk to the group coordinator)."""
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            if self.progress(commit=commit) == 0:
                self.producer.flush(min(0.05, max(0.0, deadline - time.monotonic())))
                time.sleep(0.001)
        self.progress(commit=commit)
        if self.pending:
            b = self.pending[0]
            self.log.warning(
                "drain_incomplete",
                batches=len(self.pending),
                sends_pending=sum(1 for h in b.handles if not h.done()),
                sends_failed=sum(1 for h in b.handles if h.done() and h.error() is not None),
                reviews_done=b.reviews_done,
                topics=sorted({s.topic for s, h in zip(b.sends, b.handles, strict=True) if not h.done()}),
            )
        return not self.pending

    def durable_offsets(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, int]:
        """Durable, not yet committed next-offsets of ``partitions``."""
        want = set(partitions)
        return {tp: off for tp, off in self.uncommitted.items() if tp in want and self.committed.get(tp, -1) < off}

    def forget(self, partitions: Iterable[TopicPartition]) -> int:
        """Partitions we no longer own: their uncommitted work is abandoned (the new owner redelivers it)."""
        gone = set(partitions)
        dropped = 0
        for b in self.pending:
            for tp in gone & set(b.offsets):
                del b.offsets[tp]
                b.records.pop(tp, None)
                dropped += 1
        for tp in gone:
            self.uncommitted.pop(tp, None)
            self.uncommitted_records.pop(tp, None)
            self.committed.pop(tp, None)
        return dropped

    def close(self, timeout_s: float) -> None:
        """Close the producers (unacknowledged records were never committed: they will be redelivered)."""
        try:
            self.producer.close(timeout_s)
        finally:
            if self._isolated is not None:
                self._isolated.close(min(1.0, timeout_s))
