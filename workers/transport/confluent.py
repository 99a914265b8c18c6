"""librdkafka implementation of the transport interface (confluent-kafka), selected by
``ZEROPROOF_KAFKA_CLIENT=confluent``. Same promises as the kafka-python transport (``workers/transport/kafka.py``):

- consumer group with auto-commit and auto offset store off; ``commit`` is synchronous and takes next-offsets;
- ``pause``/``resume`` for backpressure (librdkafka drops what it prefetched for a paused partition and fetches
  again from the last record returned, so nothing is skipped);
- rebalance (eager): librdkafka runs the revoke callback inside ``poll`` on the caller's thread, where the
  listener drains and returns the durable next-offsets of the revoked partitions; they are committed there,
  synchronously, before the partitions move on, and the result is reported with ``on_revoke_committed``;
- producer: ``acks=all``, idempotence, Java-compatible key partitioning (murmur2), delivery reports served
  without blocking by polling the client when a handle is asked; a record refused for good is reported as
  :class:`RecordRefusedError` (certain for the client's own size check at ``produce()``, uncertain for a broker's
  refusal, which covers a whole record batch); ``broken()`` once librdkafka raised a fatal error;
- TLS/SASL from the shared connection settings.

Undecodable input: librdkafka decodes every codec natively and never skips a batch it cannot decode: it reports
the error as a consumed message carrying an error (``_BAD_COMPRESSION``, ``_BAD_MSG`` for a failed CRC, ...) and
fetches the same batch again after ``fetch.error.backoff.ms``. Such an error is never dropped silently: the
transport holds that partition back (paused at the failing offset, retried every ``undecodable_retry_s``) with
the same log lines and metrics as the kafka-python transport's ``UndecodableGuard``; other partitions flow on.
A consumed error without a partition (a broker connection lost: librdkafka reconnects by itself) is logged at a
low rate; a fatal client error is raised from ``poll``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Producer
from confluent_kafka import TopicPartition as CTopicPartition

from service.held import UNDECODABLE_RELOG_S, HeldPartition, HeldPartitions
from workers.settings import WorkerSettings
from workers.transport.base import (
    DeliveryHandle,
    RebalanceListener,
    Record,
    RecordRefusedError,
    TopicPartition,
)

if TYPE_CHECKING:
    from workers.metrics import WorkerMetrics

#: stdlib logger librdkafka's own log lines go to (under ``kafka``, so ZEROPROOF_KAFKA_LOG_LEVEL applies)
_LOGGER = "kafka.librdkafka"
_SYSLOG_LEVELS = {"debug": 7, "info": 6, "warning": 4, "error": 3}

#: consumed errors that mean "this partition's next record batch cannot be decoded": the partition is held back
_UNDECODABLE = {
    KafkaError._BAD_COMPRESSION,
    KafkaError._BAD_MSG,
    KafkaError.INVALID_MSG,  # CORRUPT_MESSAGE (a failed CRC found by the broker)
    KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
    KafkaError.INVALID_RECORD,
}
#: delivery errors after which re-sending the same record cannot succeed: (too_large)
_REFUSED_FOR_GOOD = {
    KafkaError.MSG_SIZE_TOO_LARGE: True,
    KafkaError.RECORD_LIST_TOO_LARGE: True,
    KafkaError.INVALID_RECORD: False,
}
#: how long ``send`` waits for room in librdkafka's queue before failing the handle (kafka-python: max_block_ms)
_MAX_BLOCK_S = 10.0
#: librdkafka's linger when ``producer_linger_ms`` is 0: with no linger librdkafka sends a worker batch's records
#: in many small produce requests; at 2 000 msg/s, 3 alternating pairs of runs gave p99 350/43/142 ms at 0 and
#: 230/34/31 ms at 1 ms, on less CPU (docs/worker.md "Transports")
_MIN_LINGER_MS = 1.0
#: librdkafka's flush() timeout is in whole milliseconds (a shorter one is 0, and a flush that ends before the client's
#: broker thread looks does not cut the linger short): ``expedite`` waits at least this long
_MIN_FLUSH_S = 0.001
#: delivery reports are asked of the client at most this often by ``done()`` (flush always serves them)
_SERVE_EVERY_S = 0.0002
#: a consumed error without a partition is logged at most this often
_ERROR_LOG_EVERY_S = 30.0


def librdkafka_config(settings: WorkerSettings, client_id: str) -> dict[str, Any]:
    """What every librdkafka client of the worker starts from: bootstrap, security, reconnect backoff capped by
    ``startup_max_backoff_s`` (as the kafka-python transport), log lines through stdlib logging."""
    cap_ms = int(min(30.0, settings.startup_max_backoff_s) * 1000)
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "client.id": client_id,
        "reconnect.backoff.ms": min(100, max(10, cap_ms)),
        "reconnect.backoff.max.ms": max(100, cap_ms),
        "socket.connection.setup.timeout.ms": max(1000, min(10_000, cap_ms)),
        # TCP_NODELAY, as kafka-python: librdkafka leaves Nagle on by default
        "socket.nagle.disable": True,
        "log_level": _SYSLOG_LEVELS.get(settings.kafka_log_level, 4),
        "logger": logging.getLogger(_LOGGER),
        **settings.librdkafka_security(),
    }


def _ctps(offsets: Mapping[TopicPartition, int]) -> list[Any]:
    return [CTopicPartition(tp.topic, tp.partition, off) for tp, off in offsets.items()]


def _ours(tps: Any) -> list[TopicPartition]:
    return sorted(TopicPartition(tp.topic, tp.partition) for tp in tps)


def _check_commit(result: Any) -> None:
    for tp in result or ():
        if tp.error is not None:
            raise KafkaException(tp.error)


class ConfluentConsumerTransport:
    """A group member with auto-commit off; ``commit`` is synchronous and takes next-offsets."""

    def __init__(
        self,
        settings: WorkerSettings,
        client_id: str | None = None,
        log: Any = None,
        metrics: WorkerMetrics | None = None,
        relog_s: float = UNDECODABLE_RELOG_S,
    ) -> None:
        self._reset = settings.auto_offset_reset
        self._log = log if log is not None else structlog.get_logger()
        self._listener: RebalanceListener | None = None
        self.book = HeldPartitions(self._log, metrics, settings.undecodable_retry_s, relog_s)
        self._assigned_now: list[TopicPartition] = []
        self._fatal: KafkaError | None = None
        self._next_error_log = 0.0
        self._consumer = Consumer(
            {
                **librdkafka_config(settings, client_id or settings.worker_id),
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": settings.auto_offset_reset,
                "session.timeout.ms": settings.session_timeout_ms,
                "heartbeat.interval.ms": settings.heartbeat_interval_ms,
                "max.poll.interval.ms": settings.max_poll_interval_ms,
                "fetch.wait.max.ms": settings.fetch_max_wait_ms,
                # as the kafka-python transport: CRCs checked, transactional records read as written
                "check.crcs": True,
                "isolation.level": "read_uncommitted",
                "error_cb": self._on_error,
            }
        )

    # --- rebalance: librdkafka calls these inside poll/consume/close, on the caller's thread ---------------------
    def subscribe(self, topic: str, listener: RebalanceListener) -> None:
        self._listener = listener
        self._consumer.subscribe([topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        tps = _ours(partitions)
        for tp in tps:
            self.book.release(tp, "assigned")
        self._assigned_now.extend(tps)
        if self._listener is not None:
            self._listener.on_assigned(tps)

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._revoked(partitions, lost=False)

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self._revoked(partitions, lost=True)

    def _revoked(self, partitions: list[Any], lost: bool) -> None:
        tps = _ours(partitions)
        for tp in tps:
            self.book.release(tp, "revoked")
        if self._listener is None:
            return
        offsets = self._listener.on_revoked(tps)
        error: BaseException | None = None
        if offsets and lost:
            # the group has moved on (session timed out): the coordinator would refuse the commit
            error = RuntimeError("partitions lost before their offsets could be committed")
        elif offsets:
            try:
                _check_commit(self._consumer.commit(offsets=_ctps(offsets), asynchronous=False))
            except Exception as exc:
                error = exc
        self._listener.on_revoke_committed(offsets, error)

    def _after_rebalance(self) -> None:
        """A partition assigned anew starts unpaused, as the caller assumes after a rebalance (a paused flag may
        survive on a partition librdkafka knew before)."""
        if not self._assigned_now:
            return
        tps, self._assigned_now = self._assigned_now, []
        self.book.forget_caller_pauses(tps)
        owned = self.assignment()
        again = [CTopicPartition(tp.topic, tp.partition) for tp in tps if tp in owned]
        if again:
            self._consumer.resume(again)

    # --- errors -----------------------------------------------------------------------------------------------
    def _on_error(self, err: Any) -> None:
        """librdkafka's client-wide errors (served inside poll): most are informational (a broker connection
        lost and being retried); a fatal one ends the client, and the next poll raises it."""
        if err.fatal():
            self._fatal = err
        self._log_client_error(err)

    def _log_client_error(self, err: Any) -> None:
        now = time.monotonic()
        if err.fatal() or now >= self._next_error_log:
            self._next_error_log = now + _ERROR_LOG_EVERY_S
            self._log.warning("kafka_client_error", client="consumer", error=str(err), fatal=bool(err.fatal()))

    # --- polling ----------------------------------------------------------------------------------------------
    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        """Records of the partitions not paused. The first record is waited for up to ``timeout_s``, the rest are
        taken from what the client has already fetched (librdkafka's batch consume would wait for the full batch
        or the timeout). A partition whose record batch cannot be decoded is held back (see the module doc)."""
        if self._fatal is not None:
            raise KafkaException(self._fatal)
        self._retry_held()
        consumer = self._consumer
        first = consumer.poll(max(0.0, timeout_s))
        self._after_rebalance()
        if first is None:
            return []
        msgs = [first]
        if max_records > 1:
            msgs.extend(consumer.consume(max_records - 1, 0))
        out: list[Record] = []
        append = out.append
        # tuple.__new__ directly: 114 ns a record where Record(...) (a Python-level __new__) takes 244 ns
        new: Any = tuple.__new__
        failed: dict[TopicPartition, int] | None = None
        for m in msgs:
            err = m.error()
            if err is not None:
                failed = self._on_consumed_error(m, err, failed)
                continue
            ts_type, ts = m.timestamp()
            h = m.headers()
            append(
                new(
                    Record,
                    (
                        m.topic(),
                        m.partition(),
                        m.offset(),
                        m.key(),
                        m.value(),
                        ts if ts_type else 0,
                        tuple((k, v if v is not None else b"") for k, v in h) if h else (),
                    ),
                )
            )
        if failed:
            # nothing at or after a failing offset of its partition is handed out (there should be none)
            out = [r for r in out if r.offset < failed.get(r.tp, r.offset + 1)]
        if self.book and out:
            self.book.decoded(r.tp for r in out)
        if self._fatal is not None:
            raise KafkaException(self._fatal)
        return out

    def _on_consumed_error(
        self, m: Any, err: Any, failed: dict[TopicPartition, int] | None
    ) -> dict[TopicPartition, int] | None:
        if err.fatal():
            self._fatal = err
            return failed
        partition, offset = m.partition(), m.offset()
        if err.code() in _UNDECODABLE and m.topic() and partition is not None and partition >= 0:
            tp = TopicPartition(m.topic(), partition)
            if offset is None or offset < 0:  # librdkafka names the offset; if not: where the partition stands
                offset = self._position(tp)
            if offset is not None and offset >= 0:
                failed = failed if failed is not None else {}
                failed[tp] = min(offset, failed.get(tp, offset))
                self._hold(tp, offset, err)
                return failed
        self._log_client_error(err)
        return failed

    def _position(self, tp: TopicPartition) -> int | None:
        with contextlib.suppress(Exception):
            pos = self._consumer.position([CTopicPartition(tp.topic, tp.partition)])
            if pos and pos[0].offset >= 0:
                return int(pos[0].offset)
        return None

    # --- undecodable batches: held partitions -------------------------------------------------------------------
    def _hold(self, tp: TopicPartition, offset: int, err: Any) -> None:
        if tp not in self.assignment():
            return  # no longer ours: its new owner reads the batch again
        ctp = CTopicPartition(tp.topic, tp.partition)
        self._consumer.pause([ctp])
        # librdkafka stays at the failing batch by itself; seeking there makes that explicit (and survives the
        # pause, which restarts fetching from the last record returned)
        with contextlib.suppress(KafkaException):
            self._consumer.seek(CTopicPartition(tp.topic, tp.partition, offset))
        self.book.hold(tp, offset, err.name() if hasattr(err, "name") else type(err).__name__, str(err))

    def _retry_held(self) -> None:
        due = self.book.due()
        if not due:
            return
        owned = self.assignment()
        again = [CTopicPartition(tp.topic, tp.partition) for tp in due if tp in owned]
        if again:
            self._consumer.resume(again)

    @property
    def undecodable(self) -> Mapping[TopicPartition, HeldPartition]:
        """Partitions held back because a record batch could not be decoded."""
        return self.book.held

    # --- the rest of the interface ------------------------------------------------------------------------------
    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self.book.caller_pauses(partitions)
        if partitions:
            self._consumer.pause([CTopicPartition(tp.topic, tp.partition) for tp in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        """Resumes ``partitions`` except those held back as undecodable."""
        free = [CTopicPartition(tp.topic, tp.partition) for tp in self.book.caller_resumes(partitions)]
        if free:
            self._consumer.resume(free)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def seek_to_committed(self, partitions: Sequence[TopicPartition]) -> None:
        owned = self.assignment()
        mine = [CTopicPartition(tp.topic, tp.partition) for tp in partitions if tp in owned]
        if not mine:
            return
        for tp in self._consumer.committed(mine, timeout=10.0):
            if tp.error is not None:
                raise KafkaException(tp.error)
            if tp.offset >= 0:
                off = tp.offset
            elif self._reset == "earliest":
                off = OFFSET_BEGINNING
            else:
                off = OFFSET_END
            self._consumer.seek(CTopicPartition(tp.topic, tp.partition, off))

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if offsets:
            _check_commit(self._consumer.commit(offsets=_ctps(offsets), asynchronous=False))

    def close(self) -> None:
        # leaves the group: librdkafka calls the revoke callback (the listener commits what is durable)
        self._consumer.close()


def _classified(err: Any, certain: bool) -> BaseException:
    code = err.code()
    if code in _REFUSED_FOR_GOOD:
        refused = RecordRefusedError(f"{err.name()}: {err.str()}", _REFUSED_FOR_GOOD[code], certain)
        refused.__cause__ = KafkaException(err)
        return refused
    exc: BaseException = KafkaException(err)
    return exc


class _Delivery:
    """A record's delivery report, filled in by librdkafka's callback (served by ``poll`` on the owning
    transport's client: ``done()`` asks for it without blocking)."""

    __slots__ = ("_done", "_error", "_owner")

    def __init__(self, owner: ConfluentProducerTransport) -> None:
        self._owner = owner
        self._done = False
        self._error: BaseException | None = None

    def __call__(self, err: Any, msg: Any) -> None:
        if err is not None:
            if err.fatal():
                self._owner.fatal = err
            self._error = _classified(err, certain=False)
        self._done = True

    def done(self) -> bool:
        if not self._done:
            self._owner.serve()
        return self._done

    def error(self) -> BaseException | None:
        return self._error if self._done else None


class _FailedHandle:
    __slots__ = ("_exc",)

    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    def done(self) -> bool:
        return True

    def error(self) -> BaseException | None:
        return self._exc


class ConfluentProducerTransport:
    """Idempotent, acks=all producer; ``send`` never raises: a refused send is a failed handle.

    ``isolated``: every record in a record batch of its own (``batch.num.messages=1``, no linger) and no
    idempotence, for trying records one by one after the broker refused a batch.
    """

    def __init__(
        self, settings: WorkerSettings, client_id: str | None = None, isolated: bool = False, log: Any = None
    ) -> None:
        self._log = log if log is not None else structlog.get_logger()
        self._isolated = isolated
        self.fatal: KafkaError | None = None
        self._served_at = 0.0
        self._last_error = ""
        cid = client_id or (f"{settings.worker_id}-isolated" if isolated else settings.worker_id)
        cfg: dict[str, Any] = {
            **librdkafka_config(settings, cid),
            "acks": "all" if settings.producer_acks == "all" else "1",
            "enable.idempotence": not isolated,
            "linger.ms": 0 if isolated else (settings.producer_linger_ms or _MIN_LINGER_MS),
            "batch.size": settings.producer_batch_size,
            "compression.type": settings.producer_compression,
            "message.max.bytes": settings.producer_max_request_bytes,
            # the Java client's (and kafka-python's) partition for a key: an entity keeps its output partition
            # whichever transport wrote it
            "partitioner": "murmur2_random",
            "message.timeout.ms": 120_000,
            "error_cb": self._on_error,
        }
        if isolated:
            cfg.update({"batch.num.messages": 1, "retries": 5})
        self._producer = Producer(cfg)
        # librdkafka connects in the background: make an unreachable broker an error here, as kafka-python's
        # constructor does, so start-up retries with a clear kafka_unreachable line
        try:
            self._producer.list_topics(timeout=max(1.0, min(10.0, settings.startup_max_backoff_s)))
        except KafkaException as exc:
            self._producer.poll(0)  # serves the client's error reports and log lines: they say why (TLS, auth...)
            why = f" ({self._last_error})" if self._last_error else ""
            raise ConnectionError(f"no Kafka broker answered at {settings.kafka_bootstrap}: {exc}{why}") from exc

    def _on_error(self, err: Any) -> None:
        if err.code() != KafkaError._ALL_BROKERS_DOWN:  # the summary; the error before it says why
            self._last_error = str(err)
        if err.fatal():
            self.fatal = err
        if err.fatal() or err.code() not in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN):
            self._log.warning("kafka_client_error", client="producer", error=str(err), fatal=bool(err.fatal()))

    def serve(self) -> None:
        """Run pending delivery callbacks, without waiting; at most once per ``_SERVE_EVERY_S``: the checkpoint asks
        every handle of a batch whether it is done (twice per step), and a client poll per unacknowledged handle
        took 6 % of the worker's CPU when draining a backlog."""
        now = time.perf_counter()
        if now - self._served_at >= _SERVE_EVERY_S:
            self._served_at = now
            self._producer.poll(0)

    def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> DeliveryHandle:
        handle = _Delivery(self)
        deadline: float | None = None
        while True:
            try:
                if headers:
                    self._producer.produce(topic, value, key, headers=list(headers), on_delivery=handle)
                else:
                    self._producer.produce(topic, value, key, on_delivery=handle)
                return handle
            except BufferError as exc:  # librdkafka's queue is full: wait for room, bounded like kafka-python
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + _MAX_BLOCK_S
                if now >= deadline:
                    return _FailedHandle(exc)
                self._producer.poll(0.05)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if not isinstance(err, KafkaError):
                    return _FailedHandle(exc)
                if err.fatal() or err.code() == KafkaError._FATAL:
                    self.fatal = err
                # the client's own size check judges this record alone
                return _FailedHandle(_classified(err, certain=True))
            except Exception as exc:  # a wrong type, a closed client...
                return _FailedHandle(exc)

    def warm(self, topics: Sequence[str], timeout_s: float = 30.0) -> dict[str, int]:
        """Fetch (and, where the broker auto-creates, create) the output topics' metadata before the first batch,
        and wait until every partition has a leader. Returns partitions per topic; raises if never ready."""
        out: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        for topic in dict.fromkeys(topics):
            while True:
                n = self._leaders(topic, max(0.5, min(5.0, deadline - time.monotonic())))
                if n > 0:
                    out[topic] = n
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no leaders for topic {topic} after {timeout_s}s")
                time.sleep(0.1)
        return out

    def topic_partitions(self, topic: str, timeout_s: float = 1.0) -> int:
        """Partitions of ``topic`` that have a leader, asking the broker (bounded by ``timeout_s``); 0 while the
        topic does not exist. Where the broker auto-creates topics, asking creates it."""
        return self._leaders(topic, timeout_s)

    def _leaders(self, topic: str, timeout_s: float) -> int:
        try:
            md = self._producer.list_topics(topic, timeout=timeout_s)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if isinstance(err, KafkaError) and err.code() == KafkaError._TIMED_OUT:
                return 0
            raise
        t = md.topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            return 0
        parts = t.partitions.values()
        return sum(1 for p in parts if p.leader >= 0) if all(p.leader >= 0 for p in parts) else 0

    def broken(self) -> bool:
        return self.fatal is not None

    def flush(self, timeout_s: float) -> None:
        # a timeout only means not everything is acknowledged yet: the handles say which
        self._producer.flush(max(0.0, timeout_s))

    def expedite(self, wait_s: float) -> None:
        """librdkafka sends a partition's records after ``linger.ms``, or at once while the application is inside
        ``flush()`` (rd_kafka_flush raises a flag its broker threads read when they wake, then waits for the
        acknowledgements and serves the delivery reports): so this flushes for ``wait_s`` (at least 1 ms). The 1 ms
        linger is what lets records close together share a produce request at 2000 msg/s (with none, p99 there went
        from 20-24 to 29-75 ms in this harness: more requests than the broker kept up with); at 120 msg/s it was 1-2
        ms of every output's latency, waiting for a linger nothing would join (docs/worker.md, "Transports"). The
        isolated producer has no linger."""
        if not self._isolated:
            self._producer.flush(max(_MIN_FLUSH_S, wait_s))

    def close(self, timeout_s: float) -> None:
        # unacknowledged records were never committed: they will be redelivered. What is still queued after the
        # timeout is purged (its handles fail), so dropping the client does not wait for it.
        left = self._producer.flush(max(0.0, timeout_s))
        if left:
            with contextlib.suppress(Exception):
                self._producer.purge(in_queue=True, in_flight=True, blocking=False)
            self._producer.poll(0)
        closer = getattr(self._producer, "close", None)
        if callable(closer):
            closer()
