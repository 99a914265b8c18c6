"""The transport interface's promises, one body of tests run against both transports (``ZEROPROOF_KAFKA_CLIENT``
= ``kafka-python`` and ``confluent``) on the session's real broker: acknowledged sends, commits of next-offsets
and a restart from them, pause/resume without a skip or a repeat, revoke → drain → commit before the partitions
move, seek_to_committed, the refusal of a record too large, the isolated producer, Java-compatible key
partitioning. kafka-python-only internals are tested in test_kafka_transport.py and
test_kafka_transport_undecodable.py; librdkafka-only behaviour (undecodable batches, configuration) at the end.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from harness.services import TEST_CONSUMER_SETTINGS, create_topics
from harness.worker import unique
from workers.settings import WorkerSettings
from workers.transport.base import Record, RecordRefusedError, TopicPartition
from workers.transport.factory import KAFKA_CLIENTS, consumer_transport, producer_transport

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture(params=KAFKA_CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    """The transport under test (``ZEROPROOF_KAFKA_CLIENT``)."""
    return str(request.param)


@pytest.fixture
def make_settings(kafka_bootstrap: str, client: str) -> Callable[..., WorkerSettings]:
    def make(**overrides: Any) -> WorkerSettings:
        base: dict[str, Any] = {
            "kafka_bootstrap": kafka_bootstrap,
            "kafka_client": client,
            "group_id": unique("g"),
            "session_timeout_ms": TEST_CONSUMER_SETTINGS["session_timeout_ms"],
            "heartbeat_interval_ms": TEST_CONSUMER_SETTINGS["heartbeat_interval_ms"],
            "fetch_max_wait_ms": 5,
            "startup_max_backoff_s": 2.0,
        }
        base.update(overrides)
        return WorkerSettings(**base)

    return make


@pytest.fixture
def topic(kafka_bootstrap: str) -> str:
    name = unique("tt")
    create_topics(kafka_bootstrap, {name: PARTITIONS})
    return name


class Listener:
    """Records rebalance callbacks; on revoke hands back ``durable`` (the offsets the worker would return)."""

    def __init__(self) -> None:
        self.assigned: list[list[TopicPartition]] = []
        self.revoked: list[list[TopicPartition]] = []
        self.committed: list[tuple[dict[TopicPartition, int], BaseException | None]] = []
        self.durable: dict[TopicPartition, int] = {}

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        self.revoked.append(list(partitions))
        return {tp: off for tp, off in self.durable.items() if tp in partitions}

    def on_revoke_committed(self, offsets: Mapping[TopicPartition, int], error: BaseException | None) -> None:
        self.committed.append((dict(offsets), error))

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        self.assigned.append(list(partitions))


def send_all(producer: Any, topic: str, n: int, prefix: str = "v", timeout: float = 30.0) -> list[Any]:
    handles = [producer.send(topic, f"k{i % 16}".encode(), f"{prefix}{i}".encode(), [("h", b"x")]) for i in range(n)]
    deadline = time.monotonic() + timeout
    while not all(h.done() for h in handles) and time.monotonic() < deadline:
        producer.flush(0.1)
    assert all(h.done() and h.error() is None for h in handles), [h.error() for h in handles if h.done()][:3]
    return handles


def poll_until(
    consumer: Any, done: Callable[[list[Record]], bool], timeout: float = 30.0, max_records: int = 500
) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while not done(got) and time.monotonic() < deadline:
        got.extend(consumer.poll(0.1, max_records))
    return got


def joined(consumer: Any, listener: Listener, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(0.05, 1)
        consumer.pause(sorted(consumer.assignment()))  # joined: keep the records for the test
    consumer.resume(sorted(consumer.assignment()))
    assert consumer.assignment(), "never assigned"
    if listener.assigned:
        consumer.seek_to_committed(sorted(consumer.assignment()))


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    clients: list[Any] = []
    yield clients
    for c in reversed(clients):
        with contextlib.suppress(Exception):
            c.close(1.0) if hasattr(c, "flush") else c.close()


def test_sends_are_acknowledged_and_read_back_with_key_headers_and_timestamp(
    make_settings: Callable[..., WorkerSettings], topic: str, closing: list[Any]
) -> None:
    s = make_settings()
    producer = producer_transport(s)
    closing.append(producer)
    assert producer.warm([topic]) == {topic: PARTITIONS}
    assert producer.topic_partitions(topic) == PARTITIONS
    before = int(time.time() * 1000)
    send_all(producer, topic, 40)
    assert not producer.broken()
    consumer = consumer_transport(s)
    closing.append(consumer)
    listener = Listener()
    consumer.subscribe(topic, listener)
    got = poll_until(consumer, lambda rs: len(rs) >= 40)
    assert sorted(r.value for r in got) == sorted(f"v{i}".encode() for i in range(40))
    r = got[0]
    assert r.topic == topic and r.key is not None and r.key.startswith(b"k")
    assert r.headers == (("h", b"x"),)
    assert before - 5000 <= r.timestamp_ms <= int(time.time() * 1000) + 5000
    assert listener.assigned and sorted(listener.assigned[0]) == [TopicPartition(topic, p) for p in range(PARTITIONS)]


def test_commit_takes_next_offsets_and_a_new_member_starts_there(
    make_settings: Callable[..., WorkerSettings], topic: str, closing: list[Any]
) -> None:
    s = make_settings()
    producer = producer_transport(s)
    closing.append(producer)
    send_all(producer, topic, 80)
    first = consumer_transport(s)
    first.subscribe(topic, Listener())
    got = poll_until(first, lambda rs: len(rs) >= 80)
    by_part: dict[TopicPartition, list[int]] = {}
    for r in got:
        by_part.setdefault(r.tp, []).append(r.offset)
    # commit half of every partition: the next offset to read
    cut = {tp: sorted(offs)[len(offs) // 2] for tp, offs in by_part.items()}
    first.commit(cut)
    first.close()
    second = consumer_transport(s)
    closing.append(second)
    second.subscribe(topic, Listener())
    expected = sum(len([o for o in offs if o >= cut[tp]]) for tp, offs in by_part.items())
    again = poll_until(second, lambda rs: len(rs) >= expected)
    assert len(again) == expected
    assert all(r.offset >= cut[r.tp] for r in again)
    assert {tp: min(r.offset for r in again if r.tp == tp) for tp in cut} == cut


def test_pause_holds_records_back_and_resume_continues_without_a_gap_or_a_repeat(
    make_settings: Callable[..., WorkerSettings], topic: str, closing: list[Any]
) -> None:
    s = make_settings()
    producer = producer_transport(s)
    closing.append(producer)
    send_all(producer, topic, 20, "a")
    consumer = consumer_transport(s)
    closing.append(consumer)
    consumer.subscribe(topic, Listener())
    got = poll_until(consumer, lambda rs: len(rs) >= 20)
    parts = sorted(consumer.assignment())
    consumer.pause(parts)
    send_all(producer, topic, 200, "b")
    paused_for = time.monotonic() + 1.0
    while time.monotonic() < paused_for:
        assert consumer.poll(0.05, 100) == []  # keeps the membership, returns nothing
    consumer.resume(parts)
    got += poll_until(consumer, lambda rs: len(rs) >= 200)
    values = [r.value for r in got]
    assert sorted(values) == sorted([f"a{i}".encode() for i in range(20)] + [f"b{i}".encode() for i in range(200)])
    for tp in parts:  # in order, no gap, no repeat
        offs = [r.offset for r in got if r.tp == tp]
        assert offs == list(range(offs[0], offs[0] + len(offs))), tp


def test_seek_to_committed_rereads_from_the_commit(
    make_settings: Callable[..., WorkerSettings], topic: str, closing: list[Any]
) -> None:
    s = make_settings()
    producer = producer_transport(s)
    closing.append(producer)
    send_all(producer, topic, 40)
    consumer = consumer_transport(s)
    closing.append(consumer)
    consumer.subscribe(topic, Listener())
    got = poll_until(consumer, lambda rs: len(rs) >= 40)
    tp = got[0].tp
    offs = sorted(r.offset for r in got if r.tp == tp)
    consumer.commit({tp: offs[1]})
    others = sorted(consumer.assignment() - {tp})
    consumer.seek_to_committed([tp, *others])  # the others have no commit: the reset policy (earliest)
    again = poll_until(consumer, lambda rs: len(rs) >= 40 - 1)
    assert min(r.offset for r in again if r.tp == tp) == offs[1]
    assert len(again) == 40 - 1


def test_rebalance_revokes_then_commits_the_durable_offsets_before_the_partitions_move(
    make_settings: Callable[..., WorkerSettings], topic: str, closing: list[Any]
) -> None:
    s = make_settings()
    producer = producer_transport(s)
    closing.append(producer)
    send_all(producer, topic, 40)
    a_listener = Listener()
    a = consumer_transport(s, client_id="member-a")
    closing.append(a)
    a.subscribe(topic, a_listener)
    got = poll_until(a, lambda rs: len(rs) >= 40)
    # what A made durable: everything it read, per partition
    a_listener.durable = {tp: max(r.offset for r in got if r.tp == tp) + 1 for tp in {r.tp for r in got}}
    b_listener = Listener()
    b = consumer_transport(s, client_id="member-b")
    closing.append(b)
    b.subscribe(topic, b_listener)
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and not (b.assignment() and len(a.assignment()) < PARTITIONS):
        a.poll(0.05, 100)
        b.poll(0.05, 100)
    assert b.assignment() and a.assignment() and not (a.assignment() & b.assignment())
    assert a_listener.revoked, "A was never asked to give its partitions up"
    offsets, error = a_listener.committed[0]
    assert error is None and offsets == {tp: off for tp, off in a_listener.durable.items() if tp in offsets}
    assert set(offsets) == set(a_listener.revoked[0]) & set(a_listener.durable)
    # B starts from A's commits: it reads nothing A had made durable
    b.seek_to_committed(sorted(b.assignment()))
    extra = poll_until(b, lambda rs: False, timeout=1.5)
    assert [r for r in extra if r.offset < a_listener.durable.get(r.tp, 0)] == []


def test_members_busy_between_short_polls_still_join_and_share_the_partitions(
    make_settings: Callable[..., WorkerSettings], topic: str, closing: list[Any]
) -> None:
    """A member that polls briefly and then works (a worker between batches) must not lose a join that completed
    while it was away: kafka-python 3.0 dropped such a join and started over, so on a broker that holds JoinGroup
    (tansu: half the session timeout) a member polling 1 ms every 100 ms was never assigned, and the rebalance
    test above sometimes ran out of its 40 s (workers/transport/kafka.py, keep_completed_joins)."""

    def busy_until(members: list[Any], done: Callable[[], bool], timeout: float = 25.0) -> None:
        deadline = time.monotonic() + timeout
        while not done() and time.monotonic() < deadline:
            for m in members:
                m.poll(0.001, 1)
            time.sleep(0.1)

    s = make_settings()
    a = consumer_transport(s, client_id="busy-a")
    closing.append(a)
    a.subscribe(topic, Listener())
    busy_until([a], lambda: len(a.assignment()) == PARTITIONS)
    assert len(a.assignment()) == PARTITIONS, "the first member was never assigned the topic"
    b_listener = Listener()
    b = consumer_transport(s, client_id="busy-b")
    closing.append(b)
    b.subscribe(topic, b_listener)
    busy_until([a, b], lambda: bool(b.assignment()) and len(a.assignment()) + len(b.assignment()) == PARTITIONS)
    assert b.assignment() and a.assignment(), (a.assignment(), b.assignment(), b_listener.assigned)
    assert not a.assignment() & b.assignment()
    assert len(a.assignment() | b.assignment()) == PARTITIONS


def test_a_record_larger_than_the_producer_allows_is_refused_for_certain(
    make_settings: Callable[..., WorkerSettings], topic: str, closing: list[Any]
) -> None:
    s = make_settings(producer_max_request_bytes=300_000)
    producer = producer_transport(s)
    closing.append(producer)
    h = producer.send(topic, b"k", b"x" * 400_000)
    deadline = time.monotonic() + 10
    while not h.done() and time.monotonic() < deadline:
        producer.flush(0.1)
    err = h.error()
    assert isinstance(err, RecordRefusedError), repr(err)
    assert err.too_large and err.certain
    send_all(producer, topic, 5)  # and the producer goes on
    assert not producer.broken()


def test_the_isolated_producer_sends_records_one_by_one(
    make_settings: Callable[..., WorkerSettings], topic: str, closing: list[Any]
) -> None:
    s = make_settings()
    isolated = producer_transport(s, isolated=True)
    closing.append(isolated)
    handles = send_all(isolated, topic, 10)
    assert len(handles) == 10 and not isolated.broken()


def test_a_key_lands_on_the_same_partition_whichever_transport_wrote_it(
    make_settings: Callable[..., WorkerSettings], topic: str, closing: list[Any], client: str
) -> None:
    """The output partition of an entity must not move when the transport is switched: both use murmur2 (the
    Java client's partitioner)."""
    s = make_settings()
    ours = producer_transport(s)
    other = producer_transport(s.model_copy(update={"kafka_client": next(c for c in KAFKA_CLIENTS if c != client)}))
    closing += [ours, other]
    ours.warm([topic])
    other.warm([topic])
    keys = [f"robot-{i}".encode() for i in range(40)]
    for p in (ours, other):
        for k in keys:
            p.send(topic, k, k)
        p.flush(10)
    consumer = consumer_transport(s)
    closing.append(consumer)
    consumer.subscribe(topic, Listener())
    got = poll_until(consumer, lambda rs: len(rs) >= 80)
    where: dict[bytes, set[int]] = {}
    for r in got:
        assert r.key is not None
        where.setdefault(r.key, set()).add(r.partition)
    assert len(where) == 40 and all(len(parts) == 1 for parts in where.values()), where


# --- librdkafka only ----------------------------------------------------------------------------------------------


def test_librdkafka_config_carries_the_shared_security_settings(tmp_path: Path) -> None:
    from workers.transport.confluent import librdkafka_config

    files = {n: tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem")}
    for f in files.values():
        f.write_text("x")
    s = WorkerSettings(
        kafka_bootstrap="b1:9093,b2:9093",
        kafka_client="confluent",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="pw-1",
        kafka_ssl_cafile=files["ca.pem"],
        kafka_ssl_certfile=files["cert.pem"],
        kafka_ssl_keyfile=files["key.pem"],
        kafka_ssl_password="pw-2",
        kafka_ssl_check_hostname=False,
    )
    cfg = librdkafka_config(s, "cid")
    assert cfg["bootstrap.servers"] == "b1:9093,b2:9093" and cfg["client.id"] == "cid"
    assert cfg["security.protocol"] == "sasl_ssl" and cfg["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (cfg["sasl.username"], cfg["sasl.password"]) == ("svc", "pw-1")
    assert cfg["ssl.ca.location"] == str(files["ca.pem"]) and cfg["ssl.certificate.location"] == str(files["cert.pem"])
    assert cfg["ssl.key.location"] == str(files["key.pem"]) and cfg["ssl.key.password"] == "pw-2"
    assert cfg["ssl.endpoint.identification.algorithm"] == "none"
    plain = librdkafka_config(WorkerSettings(kafka_client="confluent"), "cid")
    assert plain["security.protocol"] == "plaintext" and not [k for k in plain if k.startswith(("ssl.", "sasl."))]


def test_librdkafka_delivery_errors_map_to_refusals() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from workers.transport.confluent import _Delivery

    class Owner:
        fatal = None

        def serve(self) -> None:
            return None

    for code, too_large in ((KafkaError.MSG_SIZE_TOO_LARGE, True), (KafkaError.INVALID_RECORD, False)):
        h = _Delivery(Owner())  # type: ignore[arg-type]
        assert not h.done() and h.error() is None
        h(KafkaError(code), None)
        err = h.error()
        assert isinstance(err, RecordRefusedError) and err.too_large is too_large and not err.certain
    h = _Delivery(Owner())  # type: ignore[arg-type]
    h(KafkaError(KafkaError.REQUEST_TIMED_OUT), None)
    assert isinstance(h.error(), KafkaException)  # retriable: re-sent by the checkpoint
    owner = Owner()
    h = _Delivery(owner)  # type: ignore[arg-type]
    h(KafkaError(KafkaError._FATAL, fatal=True), None)
    assert owner.fatal is not None


@pytest.mark.parametrize("client", ["confluent"])
def test_librdkafka_holds_back_an_undecodable_batch_and_lets_the_rest_flow(
    make_settings: Callable[..., WorkerSettings], kafka_bootstrap: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """librdkafka never skips a batch it cannot decode: it reports an error per fetch. The transport holds that
    partition at the batch (logged once, metrics), the other partition flows, a retry fails again, and records
    before the batch are all handed out."""
    from kafka import KafkaProducer
    from kafka.record import default_records

    from workers.metrics import WorkerMetrics

    topic = unique("tu")
    create_topics(kafka_bootstrap, {topic: 2})
    plain = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    for i in range(5):
        plain.send(topic, value=b"before%d" % i, partition=1)
    plain.flush(30)
    with monkeypatch.context() as m:
        m.setattr(default_records, "gzip_encode", lambda payload, **kw: b"\x1f\x8bnot really gzip" + bytes(32))
        bad = KafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type="gzip", linger_ms=50, acks="all")
        futures = [bad.send(topic, value=b"bad%d" % i, partition=1) for i in range(5)]
        bad.flush(30)
        base = min(f.get(30).offset for f in futures)
        bad.close(5)
    for i in range(5):
        plain.send(topic, value=b"after%d" % i, partition=1)
        plain.send(topic, value=b"p0-%d" % i, partition=0)
    plain.flush(30)
    plain.close(5)

    class Log:
        def __init__(self) -> None:
            self.events: list[tuple[str, dict[str, Any]]] = []

        def _add(self, event: str, **kw: Any) -> None:
            self.events.append((event, kw))

        error = warning = info = debug = _add

    log, metrics = Log(), WorkerMetrics()
    consumer = consumer_transport(make_settings(undecodable_retry_s=0.5), log=log, metrics=metrics)
    try:
        consumer.subscribe(topic, Listener())
        got = poll_until(consumer, lambda rs: False, timeout=8.0)
        values = sorted(r.value for r in got)
        assert values == sorted([b"before%d" % i for i in range(5)] + [b"p0-%d" % i for i in range(5)])
        held = consumer.undecodable[TopicPartition(topic, 1)]
        assert held.offset == base and held.failures >= 2  # retried, failed again
        lines = [kw for ev, kw in log.events if ev == "partition_undecodable"]
        assert len(lines) == 1 and lines[0]["offset"] == base and lines[0]["error_type"] == "_BAD_COMPRESSION"
        assert metrics.partitions_undecodable._value.get() == 1
    finally:
        consumer.close()
