"""kafka-python implementation of the transport interface (consumer group, manual commits, acked sends)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import structlog
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.errors import (
    InvalidRecordError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.future import Future
from kafka.partitioner.default import murmur2
from kafka.structs import OffsetAndMetadata

try:  # kafka-python >= 3: listeners run on the client's IO thread and must not block on consumer APIs
    from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
except ImportError:  # kafka-python 2.x: listeners run inside poll() on the caller's thread
    AsyncConsumerRebalanceListener = None

from service.kafka_fetch import HeldPartition, UndecodableGuard
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

#: kafka-python >= 3 bounds each bootstrap attempt; 2.x has no such setting (and refuses unknown ones).
_HAS_BOOTSTRAP_TIMEOUT = "bootstrap_timeout_ms" in KafkaConsumer.DEFAULT_CONFIG

#: The longest single wait inside kafka-python's poll (see KafkaConsumerTransport.poll).
_POLL_SLICE_MS = 5
#: With no records for this long the consumer counts as quiet and polls unsliced (see KafkaConsumerTransport.poll).
_QUIET_AFTER_S = 1.0


def connection_config(settings: WorkerSettings) -> dict[str, Any]:
    """Keep kafka-python's own reconnect backoff under ``startup_max_backoff_s`` and each bootstrap attempt
    short: with its defaults (backoff growing to 30 s, 30 s per bootstrap) a client constructor blocked the
    worker's retry loop, so no ``kafka_unreachable`` line was logged during a short outage and a returning
    broker was noticed up to ~30 s late."""
    cap_ms = int(min(30.0, settings.startup_max_backoff_s) * 1000)
    cfg: dict[str, Any] = {"reconnect_backoff_max_ms": max(50, cap_ms)}
    if _HAS_BOOTSTRAP_TIMEOUT:
        cfg["bootstrap_timeout_ms"] = max(1000, min(10_000, cap_ms))
    return cfg


def _k_offsets(offsets: Mapping[TopicPartition, int]) -> dict[Any, Any]:
    return {KTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}


def _ours(tps: Any) -> list[TopicPartition]:
    return sorted(TopicPartition(tp.topic, tp.partition) for tp in tps)


class _MembershipTracker:
    """Passes rebalance callbacks through and remembers whether the group is stable (partitions assigned and no
    rebalance under way): revocation starts a rebalance, assignment ends it."""

    def __init__(self, inner: RebalanceListener, guard: UndecodableGuard | None = None) -> None:
        self.inner = inner
        self.guard = guard
        self.stable = False

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        self.stable = False
        if self.guard is not None:
            self.guard.on_revoked(partitions)
        return self.inner.on_revoked(partitions)

    def on_revoke_committed(self, offsets: Mapping[TopicPartition, int], error: BaseException | None) -> None:
        self.inner.on_revoke_committed(offsets, error)

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        if self.guard is not None:
            self.guard.on_assigned(partitions)
        self.inner.on_assigned(partitions)
        self.stable = True


class _SyncListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """kafka-python 2.x: commit the revoked partitions' durable offsets with the ordinary blocking commit."""

    def __init__(self, inner: RebalanceListener, consumer: Any) -> None:
        self.inner = inner
        self.consumer = consumer

    def on_partitions_revoked(self, revoked: Any) -> None:
        offsets = self.inner.on_revoked(_ours(revoked))
        error: BaseException | None = None
        if offsets:
            try:
                self.consumer.commit(_k_offsets(offsets))
            except Exception as exc:
                error = exc
        self.inner.on_revoke_committed(offsets, error)

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.inner.on_assigned(_ours(assigned))


def _async_listener(inner: RebalanceListener, consumer: Any) -> Any:
    """kafka-python 3: the listener runs on the IO thread, so the commit is awaited, not blocked on."""
    assert AsyncConsumerRebalanceListener is not None

    class _AsyncListener(AsyncConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            offsets = inner.on_revoked(_ours(revoked))
            error: BaseException | None = None
            if offsets:
                try:
                    await consumer._coordinator._commit_offsets_sync_async(_k_offsets(offsets), 10_000)
                except Exception as exc:
                    error = exc
            inner.on_revoke_committed(offsets, error)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            inner.on_assigned(_ours(assigned))

    return _AsyncListener()


def keep_completed_joins(coordinator: Any) -> bool:
    """Make kafka-python 3.0 keep a group join that completed between two polls instead of starting over.

    ``join_group_async`` runs inside ``poll`` and awaits its JoinGroup → SyncGroup task for at most the poll's
    timeout, leaving the task in flight when that runs out. When the next poll finds the task *done*, it does not
    take the result: it sends a new JoinGroup (3.0.12 and kafka-python's main branch as of 2026-12). A broker that
    holds a JoinGroup (tansu: for half the session timeout; Apache Kafka: ``group.initial.rebalance.delay.ms`` for
    a new group) answers it, and the SyncGroup right after, while the caller is between polls more often than
    not, so a member with short polls joins, throws the assignment away and rejoins, again and again: measured
    on tansu, a consumer polling 1 ms every 100 ms was never assigned in 30 s (3.3 s with this fix), and a test
    member polling 50 ms in turn with another sometimes held its old partitions for 40 s. Here a task that
    succeeded unawaited is handed to ``join_group_async`` as a future it has not seen done, resolved with the same
    assignment on the client's next loop tick, so the join completes exactly as if the poll had waited for it.
    Returns False (and changes nothing) where the client has no such task."""
    original = getattr(coordinator, "join_group_async", None)
    if original is None or not hasattr(coordinator, "_join_task") or not hasattr(coordinator, "_manager"):
        return False

    async def join_group_async(timeout_ms: Any = None) -> Any:
        task = coordinator._join_task
        if task is not None and task.is_done and task.succeeded():
            handover = Future()
            coordinator._join_task = handover
            coordinator._manager.call_soon(lambda: handover.success(task.value))
        return await original(timeout_ms=timeout_ms)

    coordinator.join_group_async = join_group_async
    return True


class KafkaConsumerTransport:
    """A group member with auto-commit off; ``commit`` is synchronous and takes next-offsets."""

    def __init__(
        self,
        settings: WorkerSettings,
        client_id: str | None = None,
        log: Any = None,
        metrics: WorkerMetrics | None = None,
        *,
        client: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``client``: a kafka-python ``KafkaConsumer`` to use instead of building one from ``settings`` (tests pass
        a stand-in); ``clock``: the monotonic clock of the poll slicing and the undecodable retries (tests pass a
        simulated one, so both are tested without real time)."""
        self._clock = clock
        self._reset = settings.auto_offset_reset
        self._membership: _MembershipTracker | None = None  # set by subscribe
        self._last_records_at = 0.0  # monotonic time of the last poll that returned records
        self._topic: str | None = None  # set by subscribe
        self._next_metadata_nudge = 0.0
        self._fetch_wait_ms = {False: settings.fetch_max_wait_ms, True: settings.idle_fetch_max_wait_ms}
        self._quiet = False
        self._consumer = (
            client
            if client is not None
            else KafkaConsumer(
                bootstrap_servers=settings.kafka_bootstrap_list,
                group_id=settings.group_id,
                client_id=client_id or settings.worker_id,
                enable_auto_commit=False,
                auto_offset_reset=settings.auto_offset_reset,
                session_timeout_ms=settings.session_timeout_ms,
                heartbeat_interval_ms=settings.heartbeat_interval_ms,
                max_poll_interval_ms=settings.max_poll_interval_ms,
                fetch_max_wait_ms=settings.fetch_max_wait_ms,
                max_poll_records=settings.max_poll_records,
                **connection_config(settings),
                **settings.kafka_security(),
            )
        )
        coordinator = getattr(self._consumer, "_coordinator", None)
        if coordinator is not None:
            keep_completed_joins(coordinator)
        self._guard = UndecodableGuard(
            self._consumer,
            log if log is not None else structlog.get_logger(),
            metrics,
            settings.undecodable_retry_s,
            clock=clock,
        )

    def subscribe(self, topic: str, listener: RebalanceListener) -> None:
        use_async = AsyncConsumerRebalanceListener is not None and hasattr(
            getattr(self._consumer, "_coordinator", None), "_commit_offsets_sync_async"
        )
        self._topic = topic
        self._membership = tracked = _MembershipTracker(listener, self._guard)
        wrapped = _async_listener(tracked, self._consumer) if use_async else _SyncListener(tracked, self._consumer)
        self._consumer.subscribe(topics=[topic], listener=wrapped)

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        """Records of the partitions not paused. A record batch that cannot be decoded holds back its partition
        only (see :class:`UndecodableGuard`); other client errors are raised."""
        guard = self._guard
        guard.before_poll()
        try:
            batches = self._poll_client(timeout_s, max_records)
        except Exception as exc:
            if not guard.on_poll_error(exc):
                raise
            return []
        guard.after_poll(batches)
        if batches:
            self._last_records_at = self._clock()
        out: list[Record] = []
        append = out.append
        for recs in batches.values():
            for r in recs:
                append(Record(r.topic, r.partition, r.offset, r.key, r.value, r.timestamp or 0, tuple(r.headers or ())))
        return out

    def _poll_client(self, timeout_s: float, max_records: int) -> Mapping[Any, Sequence[Any]]:
        # Once the group is stable and records are flowing, wait in short slices: when kafka-python finds no fetch
        # in flight at the wrong moment (its IO thread has not yet cleared the previous fetch) it sleeps
        # min(timeout, retry_backoff_ms = 100 ms) instead of waiting for data, which showed up as 100 ms latency
        # spikes at low load. Not while joining: short polls made kafka-python's join take 3-12 s against tansu
        # instead of 3 s (each gap between slices was a chance to lose a completed join: keep_completed_joins).
        # Not when quiet (no records for _QUIET_AFTER_S): each kafka-python 3 poll that waits costs
        # ~1.1 ms of CPU across the caller and the client's IO thread, and 5 ms slices kept an idle worker at
        # ~22 % of a core (unsliced: ~11 %); the first record after a quiet spell may meet that 100 ms sleep.
        timeout_ms = max(0, int(timeout_s * 1000))
        now = self._clock()
        stable = self._membership is not None and self._membership.stable
        if not stable:
            self._nudge_topic_metadata(now)
        sliced = stable and now - self._last_records_at < _QUIET_AFTER_S
        self._set_quiet(stable and not sliced)
        if not sliced:
            batches = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
        else:
            deadline = now + timeout_ms / 1000
            while True:
                remaining_ms = max(0, int((deadline - self._clock()) * 1000))
                batches = self._consumer.poll(timeout_ms=min(remaining_ms, _POLL_SLICE_MS), max_records=max_records)
                if batches or remaining_ms <= _POLL_SLICE_MS:
                    break
        return batches  # type: ignore[no-any-return]

    def _set_quiet(self, quiet: bool) -> None:
        """A quiet consumer lets the broker hold its fetches for ``idle_fetch_max_wait_ms`` instead of
        ``fetch_max_wait_ms``: a fetch answered empty every 5 ms kept an idle worker at ~11 % of a core, and a
        broker answers a held fetch as soon as a record arrives (measured on tansu: the first record after a
        quiet spell came 5.2 ms after it was sent with 5 ms fetches, 6.5 ms with 500 ms ones). The next fetch after
        records arrive uses the short wait again."""
        if quiet == self._quiet:
            return
        fetcher = getattr(self._consumer, "_fetcher", None)
        config = getattr(fetcher, "config", None)
        if isinstance(config, dict) and "fetch_max_wait_ms" in config:
            config["fetch_max_wait_ms"] = self._fetch_wait_ms[quiet]
        self._quiet = quiet

    def _nudge_topic_metadata(self, now: float) -> None:
        """While joining, make sure the client has the subscribed topic's partitions before the group leader
        assigns them. kafka-python 3.0 drops the metadata update that ``subscribe`` requests when a refresh is in
        flight at that moment (the response clears the pending flag), and the next periodic refresh is 5 min
        away: the leader then assigns nothing ("No partition metadata"), and tansu keeps handing out that empty
        assignment on every rejoin. Asking again every 200 ms until the partitions are known closes the race."""
        cluster = getattr(self._consumer, "_cluster", None)
        if cluster is None or self._topic is None or now < self._next_metadata_nudge:
            return
        self._next_metadata_nudge = now + 0.2
        if not cluster.partitions_for_topic(self._topic):
            cluster.request_update()

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._guard.pause(partitions)

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        """Resumes ``partitions`` except those held back as undecodable (see :class:`UndecodableGuard`)."""
        self._guard.resume(partitions)

    @property
    def undecodable(self) -> Mapping[TopicPartition, HeldPartition]:
        """Partitions held back because a record batch could not be decoded."""
        return self._guard.held

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def seek_to_committed(self, partitions: Sequence[TopicPartition]) -> None:
        owned = self._consumer.assignment()
        for tp in partitions:
            ktp = KTopicPartition(tp.topic, tp.partition)
            if ktp not in owned:
                continue
            off = self._consumer.committed(ktp)
            if off is not None:
                self._consumer.seek(ktp, off)
            elif self._reset == "earliest":
                self._consumer.seek_to_beginning(ktp)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if offsets:
            self._consumer.commit(_k_offsets(offsets))

    def close(self) -> None:
        self._consumer.close(autocommit=False)


#: kafka-python errors after which re-sending the same record cannot succeed.
_REFUSED_FOR_GOOD = (MessageSizeTooLargeError, RecordListTooLargeError, InvalidRecordError)


def _classified(exc: BaseException, certain: bool) -> BaseException:
    """``certain``: the client judged this record alone (its own size check); a broker refusal may be about
    another record of the same produce request, and kafka-python fails them all with the same error."""
    if isinstance(exc, _REFUSED_FOR_GOOD):
        too_large = not isinstance(exc, InvalidRecordError)
        refused = RecordRefusedError(f"{type(exc).__name__}: {exc}", too_large, certain)
        refused.__cause__ = exc
        return refused
    return exc


class _KafkaHandle:
    __slots__ = ("_future",)

    def __init__(self, future: Any) -> None:
        self._future = future

    def done(self) -> bool:
        return bool(self._future.is_done)

    def error(self) -> BaseException | None:
        if not self._future.is_done:
            return None
        exc = self._future.exception
        return _classified(exc, certain=False) if isinstance(exc, BaseException) else None


class _FailedHandle:
    __slots__ = ("_exc",)

    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    def done(self) -> bool:
        return True

    def error(self) -> BaseException | None:
        return self._exc


class KeyPartitioner:
    """The client's default partition for a keyed record (murmur2 of the key, as the Java client), remembered
    per key: the worker sends one output per input with a handful of entity keys, and kafka-python spent about
    a fifth of each ``send`` hashing the key and looking up metadata. Partition counts are re-read at most once
    per ``refresh_s``; a topic whose metadata is not known yet is left to the client (``None``)."""

    def __init__(self, producer: Any, refresh_s: float = 1.0, max_keys: int = 100_000) -> None:
        self._producer = producer
        self._refresh_s = refresh_s
        self._max_keys = max_keys
        self._partitions: dict[str, tuple[tuple[int, ...], float]] = {}
        self._cache: dict[tuple[str, bytes], int] = {}

    def _all_partitions(self, topic: str) -> tuple[int, ...]:
        now = time.monotonic()
        known = self._partitions.get(topic)
        if known is not None and now < known[1]:
            return known[0]
        meta = self._producer._metadata  # no public accessor that never blocks
        parts = tuple(sorted(meta.partitions_for_topic(topic) or ()))
        self._partitions[topic] = (parts, now + self._refresh_s)
        if known is not None and known[0] != parts:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != topic}
        return parts

    def __call__(self, topic: str, key: bytes) -> int | None:
        parts = self._all_partitions(topic)
        if not parts:
            return None
        ck = (topic, key)
        p = self._cache.get(ck)
        if p is None:
            if len(self._cache) >= self._max_keys:
                self._cache.clear()
            p = self._cache[ck] = parts[(murmur2(key) & 0x7FFFFFFF) % len(parts)]
        return p


class KafkaProducerTransport:
    """Idempotent, acks=all producer; ``send`` never raises: a refused send is a failed handle.

    ``isolated``: every record in a record batch of its own and no idempotence, for trying records one by one
    after the broker refused a batch. kafka-python 3.0 puts an idempotent producer into a fatal state after any
    non-retriable broker error (every later send fails with it), and a broker refuses a partition's batch as a
    whole, so neither the refused record nor its neighbours can be told apart on the main producer.
    """

    def __init__(self, settings: WorkerSettings, client_id: str | None = None, isolated: bool = False) -> None:
        self._producer = KafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap_list,
            client_id=client_id or (f"{settings.worker_id}-isolated" if isolated else settings.worker_id),
            acks="all" if settings.producer_acks == "all" else 1,
            linger_ms=0 if isolated else settings.producer_linger_ms,
            batch_size=1 if isolated else settings.producer_batch_size,
            enable_idempotence=not isolated,
            max_block_ms=10_000,
            retries=5,
            max_request_size=settings.producer_max_request_bytes,
            compression_type=None if settings.producer_compression == "none" else settings.producer_compression,
            **connection_config(settings),
            **settings.kafka_security(),
        )
        self._partitioner = KeyPartitioner(self._producer)

    def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> DeliveryHandle:
        try:
            partition = self._partitioner(topic, key) if key is not None else None
            fut = self._producer.send(topic, value=value, key=key, headers=list(headers) or None, partition=partition)
        except Exception as exc:  # too large, buffer full past max_block_ms, serialization, closed producer...
            return _FailedHandle(_classified(exc, certain=True))
        return _KafkaHandle(fut)

    def warm(self, topics: Sequence[str], timeout_s: float = 30.0) -> dict[str, int]:
        """Fetch (and, where the broker auto-creates, create) the output topics' metadata before the first batch,
        and wait until every partition has a leader: a first send racing a topic's creation can otherwise sit
        on "unknown leader" for a long time. Returns partitions per topic; raises if the broker never answers."""
        out: dict[str, int] = {}
        deadline = time.monotonic() + timeout_s
        for topic in dict.fromkeys(topics):
            while True:
                parts = self._producer.partitions_for(topic) or set()
                meta = getattr(self._producer, "_metadata", None)
                leaders_known = meta is None or all(
                    (meta.leader_for_partition(KTopicPartition(topic, p)) or -1) >= 0 for p in parts
                )
                if parts and leaders_known:
                    out[topic] = len(parts)
                    break
                if time.monotonic() > deadline:
                    raise KafkaTimeoutError(f"no leaders for topic {topic} after {timeout_s}s")
                time.sleep(0.1)
        return out

    def topic_partitions(self, topic: str, timeout_s: float = 1.0) -> int:
        """Partitions of ``topic`` that have a leader, asking the broker (bounded by ``timeout_s``); 0 while the
        topic does not exist. Where the broker auto-creates topics, asking creates it."""
        try:
            wait = getattr(self._producer, "_wait_on_metadata", None)  # bounded; partitions_for waits max_block_ms
            parts = wait(topic, int(timeout_s * 1000)) if wait is not None else self._producer.partitions_for(topic)
        except KafkaTimeoutError:
            return 0
        meta = self._producer._metadata
        return sum(1 for p in parts or () if (meta.leader_for_partition(KTopicPartition(topic, p)) or -1) >= 0)

    def broken(self) -> bool:
        manager = getattr(self._producer, "_transaction_manager", None)
        return bool(manager is not None and manager.has_fatal_error())

    def flush(self, timeout_s: float) -> None:
        # a timeout only means not everything is acknowledged yet: the handles say which
        with contextlib.suppress(KafkaTimeoutError):
            self._producer.flush(timeout=timeout_s)

    def expedite(self, wait_s: float) -> None:
        """Nothing to do: kafka-python's sender takes a record at once with ``producer_linger_ms`` 0 (the default),
        and its ``flush(0)`` does not cut a longer linger short (Checkpoint.submit)."""

    def close(self, timeout_s: float) -> None:
        # unacknowledged records were never committed: they will be redelivered
        with contextlib.suppress(KafkaTimeoutError):
            self._producer.close(timeout=timeout_s)
