"""The worker loop against the in-memory transport: commit order, backpressure, retries, revoke, reload."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog

from harness.worker import known_pole_bundle, msg
from service.review import ReviewItem, ReviewStoreError
from workers.fallback import build_chain
from workers.metrics import WorkerMetrics
from workers.model import load_runtime
from workers.settings import WorkerSettings
from workers.transport.base import UndecodableInputError
from workers.transport.memory import InMemoryBroker, InMemoryConsumer, InMemoryProducer
from workers.worker import Worker

pytestmark = pytest.mark.unit


class FakeReviews:
    """Same interface as RedisReviewStore.record_batch; idempotent by source record; can fail on demand."""

    def __init__(self) -> None:
        self.records: dict[str, ReviewItem] = {}  # by source record
        self.fail = False
        self.calls = 0

    def record_batch(self, items: Sequence[ReviewItem]) -> int:
        self.calls += 1
        if self.fail:
            raise ReviewStoreError("redis down (injected)")
        new = 0
        for it in items:
            if it.source not in self.records:
                self.records[it.source] = it
                new += 1
        return new

    def ids(self) -> set[str]:
        return {it.input_id for it in self.records.values()}

    def ping(self) -> None:
        return None

    def close(self) -> None:
        return None


def make(tmp_path: Path, **kw: Any) -> tuple[Worker, InMemoryBroker, InMemoryConsumer, FakeReviews]:
    s = WorkerSettings(
        model=known_pole_bundle(tmp_path / "kp.zpb"),
        input_topic="in",
        max_batch_size=kw.pop("max_batch_size", 8),
        max_batch_delay_ms=kw.pop("max_batch_delay_ms", 5),
        reload_check_s=0,
        **kw,
    )
    broker = InMemoryBroker(partitions=2)
    consumer = InMemoryConsumer(broker, "g")
    reviews = FakeReviews()
    log = structlog.get_logger("test")
    w = Worker(
        s,
        consumer,
        InMemoryProducer(broker),
        reviews,
        load_runtime(s),
        build_chain(s),
        WorkerMetrics(),
        log,
        producer_factory=lambda isolated=False: InMemoryProducer(broker, isolated),
    )
    consumer.subscribe("in", w)
    return w, broker, consumer, reviews


def feed(broker: InMemoryBroker, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        x = 0.5 if i % 5 == 0 else 0.1
        broker.append("in", f"r{i % 3}".encode(), msg(i, [x]))


def spin(w: Worker, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        w.step()


def committed_total(broker: InMemoryBroker) -> int:
    return sum(off for (g, tp), off in broker.committed.items() if tp.topic == "in")


def output_ids(broker: InMemoryBroker) -> list[str]:
    return [json.loads(v)["id"] for v in broker.values("zeroproof.outputs")]


def test_every_input_gets_one_output_and_offsets_commit(tmp_path: Path) -> None:
    w, broker, _, reviews = make(tmp_path)
    feed(broker, 50)
    spin(w)
    assert sorted(output_ids(broker), key=int) == [str(i) for i in range(50)]
    assert committed_total(broker) == 50
    assert reviews.ids() == {str(i) for i in range(0, 50, 5)}
    stats = [json.loads(v) for v in broker.values("zeroproof.stats")]
    assert sum(s["counts"]["total"] for s in stats) == 50 and sum(s["counts"]["bottom"] for s in stats) == 10


def test_no_commit_before_broker_ack_and_backpressure_pauses(tmp_path: Path) -> None:
    w, broker, consumer, _ = make(tmp_path)
    broker.hold_sends = True
    feed(broker, 40)
    spin(w)
    assert committed_total(broker) == 0  # outputs not acknowledged → nothing committed
    assert w.checkpoint.in_flight == 1 and w.flow.paused  # bounded: one batch in flight, the next one buffered
    assert w.batcher.buffered == 8
    gaps = [b - a for a, b in zip(consumer.poll_times, consumer.poll_times[1:], strict=False)]
    assert max(gaps) < 0.5  # still polling (group session healthy) while paused
    broker.hold_sends = False
    broker.release()
    spin(w)
    assert committed_total(broker) == 40 and len(set(output_ids(broker))) == 40


def test_next_batch_is_computed_but_not_sent_while_one_is_in_flight(tmp_path: Path) -> None:
    w, broker, _, _ = make(tmp_path)
    broker.hold_sends = True
    feed(broker, 24)
    spin(w, 0.2)
    assert w.checkpoint.in_flight == 1
    assert w.prepared is not None and len(w.prepared.records) == 8  # computed while waiting
    first = {json.loads(h.payload[2])["id"] for h in broker.pending if h.payload[0] == "zeroproof.outputs"}
    assert len(first) == 8  # only the in-flight batch was sent: one uncommitted batch at most
    broker.hold_sends = False
    broker.release()
    spin(w, 0.3)
    assert committed_total(broker) == 24 and len(set(output_ids(broker))) == 24


def test_redis_down_blocks_commit_then_recovers(tmp_path: Path) -> None:
    w, broker, consumer, reviews = make(tmp_path)
    reviews.fail = True
    feed(broker, 20)
    spin(w, 0.4)
    assert committed_total(broker) == 0 and reviews.calls >= 2 and w.flow.paused
    reviews.fail = False
    spin(w, 1.0)
    assert committed_total(broker) == 20
    assert reviews.ids() == {"0", "5", "10", "15"}


def test_failed_sends_are_resent(tmp_path: Path) -> None:
    w, broker, _, _ = make(tmp_path)
    broker.fail_next_sends = 3
    feed(broker, 16)
    spin(w, 0.6)
    assert committed_total(broker) == 16
    assert sorted(set(output_ids(broker)), key=int) == [str(i) for i in range(16)]


def test_revoke_drops_buffer_and_redelivers_from_commit(tmp_path: Path) -> None:
    w, broker, consumer, _ = make(tmp_path, max_batch_delay_ms=10_000, max_batch_size=1000, dispatch_when_idle=False)
    feed(broker, 10)
    spin(w, 0.1)  # all 10 buffered, waiting for the (long) deadline
    assert w.batcher.buffered == 10 and not output_ids(broker)
    consumer.revoke_all()
    assert w.batcher.batch is None
    w.batcher.max_delay_s = 0.005
    spin(w, 0.3)
    assert sorted(output_ids(broker), key=int) == [str(i) for i in range(10)]
    assert committed_total(broker) == 10


def test_deadline_mode_waits_for_size_or_deadline(tmp_path: Path) -> None:
    w, broker, _, _ = make(tmp_path, max_batch_delay_ms=150, max_batch_size=1000, dispatch_when_idle=False)
    feed(broker, 5)
    spin(w, 0.05)
    assert not output_ids(broker) and w.batcher.batch is not None  # neither full nor due
    spin(w, 0.25)
    assert sorted(output_ids(broker), key=int) == [str(i) for i in range(5)]


def test_idle_worker_dispatches_without_waiting_for_the_deadline(tmp_path: Path) -> None:
    w, broker, _, _ = make(tmp_path, max_batch_delay_ms=10_000, max_batch_size=1000)
    w.step()  # joins (partitions assigned)
    feed(broker, 5)
    w.step()  # one poll: the worker has nothing in progress, so the batch starts now
    assert sorted(output_ids(broker), key=int) == [str(i) for i in range(5)]


def test_busy_worker_batches_what_arrives_meanwhile(tmp_path: Path) -> None:
    """While the sent-but-uncommitted records fill the duplicate bound, the next batch is computed from what
    has arrived and later arrivals queue behind it: batches grow with load, and nothing more is sent before
    the records ahead are committed."""
    w, broker, _, _ = make(tmp_path, max_batch_delay_ms=10_000, max_batch_size=4)
    broker.hold_sends = True
    w.step()  # joins (partitions assigned)
    feed(broker, 3)
    w.step()
    assert w.checkpoint.in_flight == 1 and w.prepared is None
    feed(broker, 3, start=3)
    w.step()
    assert w.prepared is not None and len(w.prepared.records) == 3  # computed, not sent: 3 + 3 > 4
    feed(broker, 4, start=6)
    spin(w, 0.05)
    assert w.batcher.buffered == 4 and w.checkpoint.in_flight == 1 and w.checkpoint.records_in_flight == 3
    broker.hold_sends = False
    broker.release()
    spin(w, 0.1)
    assert sorted(output_ids(broker), key=int) == [str(i) for i in range(10)]
    assert committed_total(broker) == 10
    sizes = [json.loads(v)["counts"]["total"] for v in broker.values("zeroproof.stats")]
    assert sizes == [3, 3, 4]


def test_small_batches_pipeline_within_the_record_bound(tmp_path: Path) -> None:
    """Issue 15: the duplicate bound counts records, not batches. At low rate, batches of one record each go
    out while earlier ones await their acknowledgements, instead of queueing behind each other's commits."""
    w, broker, _, _ = make(tmp_path, max_batch_delay_ms=10_000, max_batch_size=1000, max_in_flight_records=1000)
    broker.hold_sends = True
    w.step()  # joins (partitions assigned)
    for i in range(5):
        feed(broker, 1, start=i)
        w.step()
    assert w.checkpoint.in_flight == 5 and w.checkpoint.records_in_flight == 5 and w.prepared is None
    sent = {json.loads(h.payload[2])["id"] for h in broker.pending if h.payload[0] == "zeroproof.outputs"}
    assert sent == {str(i) for i in range(5)}
    assert committed_total(broker) == 0  # nothing acknowledged, nothing committed
    broker.hold_sends = False
    broker.release()
    spin(w, 0.1)
    assert committed_total(broker) == 5 and w.checkpoint.records_in_flight == 0


@pytest.mark.parametrize("bound", [8, 13])
def test_records_sent_but_uncommitted_never_exceed_the_bound(tmp_path: Path, bound: int) -> None:
    """Whatever the arrivals and acknowledgements do, the records a crash would deliver again (sent, offsets
    not committed) stay within ``max_in_flight_records``; everything is answered and committed in the end."""
    import random

    rng = random.Random(bound)
    w, broker, _, _ = make(tmp_path, max_batch_size=8, max_batch_delay_ms=1, max_in_flight_records=bound)
    w.step()
    fed, peak = 0, 0
    for _ in range(400):
        if rng.random() < 0.3:
            n = rng.randint(1, 6)
            feed(broker, n, start=fed)
            fed += n
        broker.hold_sends = rng.random() < 0.7
        if not broker.hold_sends and rng.random() < 0.5:
            broker.release()
        w.step()
        at_risk = w.checkpoint.records_in_flight
        assert at_risk <= bound
        assert at_risk == sum(1 for _ in _sent_uncommitted(broker, w))
        peak = max(peak, at_risk)
    # the bound was reached, and where it allows more than one batch, across batch boundaries
    assert peak > 8 if bound > 8 else peak == 8
    broker.hold_sends = False
    broker.release()
    spin(w, 0.3)
    assert sorted(set(output_ids(broker)), key=int) == [str(i) for i in range(fed)]
    assert committed_total(broker) == fed


def _sent_uncommitted(broker: InMemoryBroker, w: Worker) -> list[str]:
    """Ids whose output was handed to the producer (acknowledged or not) but whose offset is not committed."""
    committed = {tp.partition: off for (g, tp), off in broker.committed.items() if tp.topic == "in"}
    sent = [json.loads(v)["id"] for v in broker.values("zeroproof.outputs")]
    sent += [json.loads(h.payload[2])["id"] for h in broker.pending if h.payload[0] == "zeroproof.outputs"]
    at = {json.loads(r.value or b"{}")["id"]: r for part in broker.topic("in") for r in part}
    return [i for i in sent if at[i].offset >= committed.get(at[i].partition, 0)]


def test_reload_between_batches(tmp_path: Path) -> None:
    w, broker, _, _ = make(tmp_path)
    feed(broker, 8)
    spin(w, 0.2)
    known_pole_bundle(tmp_path / "kp.zpb", pole=2.0, version="known-pole-2")
    w.signals.request_reload()
    spin(w, 0.1)
    feed(broker, 8, start=8)
    spin(w, 0.2)
    outs = {json.loads(v)["id"]: json.loads(v) for v in broker.values("zeroproof.outputs")}
    assert {outs[str(i)]["model_version"] for i in range(8)} == {"known-pole-1"}
    assert {outs[str(i)]["model_version"] for i in range(8, 16)} == {"known-pole-2"}
    assert outs["10"]["status"] == "ok"  # 0.5 is not a pole of the new model


def test_reload_under_continuous_load(tmp_path: Path) -> None:
    """A reload request is honoured even when there is always a batch in flight or buffered."""
    w, broker, _, _ = make(tmp_path)
    broker.hold_sends = True
    feed(broker, 20)
    spin(w, 0.1)
    assert w.checkpoint.in_flight == 1 and w.batcher.batch is not None
    known_pole_bundle(tmp_path / "kp.zpb", pole=2.0, version="known-pole-2")
    w.signals.request_reload()
    spin(w, 0.05)
    assert w.runtime.model_version == "known-pole-2"
    broker.hold_sends = False
    broker.release()
    spin(w, 0.3)
    outs = [json.loads(v) for v in broker.values("zeroproof.outputs")]
    assert len({o["id"] for o in outs}) == 20
    assert {o["model_version"] for o in outs} == {"known-pole-1", "known-pole-2"}  # first batch kept its version


def test_shutdown_commits_only_durable(tmp_path: Path) -> None:
    w, broker, _, _ = make(tmp_path, drain_timeout_s=0.2)
    feed(broker, 8)
    spin(w, 0.2)
    broker.hold_sends = True
    feed(broker, 8, start=8)
    spin(w, 0.2)
    w.signals.stop = True
    t0 = time.monotonic()
    assert w.shutdown() == 0
    assert time.monotonic() - t0 < 2.0  # bounded drain
    assert committed_total(broker) == 8  # the held batch was never acknowledged, so it is not committed
    assert w.consumer.closed  # type: ignore[attr-defined]


def test_input_that_cannot_be_held_back_stops_the_worker_with_exit_code_3(tmp_path: Path) -> None:
    """A transport that cannot tell on which partition an undecodable batch is (UndecodableInputError): the
    worker drains, commits what it processed and exits 3, instead of skipping the batch or polling into it."""
    w, broker, consumer, _ = make(tmp_path)
    feed(broker, 6)
    deadline = time.monotonic() + 30
    while committed_total(broker) < 6 and time.monotonic() < deadline:
        w.step()
    assert committed_total(broker) == 6

    def undecodable(timeout_s: float, max_records: int) -> list[Any]:
        raise UndecodableInputError("a record batch could not be decoded (test)")

    consumer.poll = undecodable  # type: ignore[method-assign]
    w.step()
    assert w.stopping and w.exit_code == 3
    assert w.shutdown() == 3 and consumer.closed


def test_a_prepared_batch_goes_out_before_the_next_poll_waits(tmp_path: Path) -> None:
    """Issue 15: a batch computed while its predecessor awaited its acks then waited out the next poll's idle
    timeout (100 ms) once the predecessor was committed. It must be sent first, and the poll then only waits
    for acknowledgements (a few ms)."""
    w, broker, consumer, _ = make(tmp_path, max_batch_size=1, max_batch_delay_ms=10_000)
    broker.hold_sends = True
    w.step()  # joins
    feed(broker, 1)
    w.step()  # batch 1 sent, unacknowledged
    feed(broker, 1, start=1)
    w.step()  # batch 2 computed, waiting for room
    assert w.checkpoint.in_flight == 1 and w.prepared is not None
    broker.hold_sends = False
    broker.release()
    timeouts: list[tuple[float, int]] = []
    real_poll = consumer.poll

    def poll(timeout_s: float, max_records: int) -> list[Any]:
        timeouts.append((timeout_s, w.checkpoint.in_flight))
        return real_poll(timeout_s, max_records)

    consumer.poll = poll  # type: ignore[method-assign]
    w.step()
    assert w.prepared is None
    assert timeouts == [(0.002, 1)]  # batch 2 in flight before the poll, which waits only for its acks


def test_every_batch_leaves_its_stage_trace(tmp_path: Path) -> None:
    """The histograms that explain the latency (docs/benchmarks.md): one observation per batch and stage."""
    w, broker, _, _ = make(tmp_path)
    feed(broker, 20)
    spin(w)
    registry = w.metrics.registry
    batches = registry.get_sample_value("zeroproof_worker_batch_size_count")
    assert batches and batches >= 3
    for stage in ("fetch_lag", "queue", "process", "ack"):
        assert registry.get_sample_value(f"zeroproof_worker_{stage}_seconds_count") == batches, stage
    assert registry.get_sample_value("zeroproof_worker_in_flight_records") == 0
