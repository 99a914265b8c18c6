"""Keeps a partition whose record batch cannot be decoded from stopping a kafka-python consumer.

kafka-python 3.0 raises a decoding error (a codec the client lacks, corrupt data) once from ``poll`` and then
loops inside the client for ever (see :class:`UndecodableGuard`). Both services consume with kafka-python (the
worker as a group member, the monitor by assignment), so the guard is shared.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from kafka import TopicPartition as KTopicPartition
from kafka import version as kafka_version
from kafka.errors import CorruptRecordError, UnsupportedCodecError

from service.kafka import TopicPartition, UndecodableInputError


class UndecodableMetrics(Protocol):
    """The metrics the guard keeps (a service's own registry provides them)."""

    @property
    def undecodable_fetches(self) -> Any: ...

    @property
    def undecodable_offset(self) -> Any: ...

    @property
    def partitions_undecodable(self) -> Any: ...


#: A held partition is logged when found undecodable, then at most this often while it stays undecodable.
UNDECODABLE_RELOG_S = 600.0


def _k(tp: TopicPartition) -> Any:
    return KTopicPartition(tp.topic, tp.partition)


def _from_record_decoding(exc: BaseException) -> bool:
    """Was ``exc`` raised while kafka-python decoded a fetched record batch (decompression, CRC check, record
    parsing, deserialisation)? Those all run inside the fetcher's per-partition record generator."""
    if isinstance(exc, UnsupportedCodecError | CorruptRecordError):
        return True
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith(("kafka.record", "kafka.codec")) or (
            module == "kafka.consumer.fetcher" and frame.f_code.co_name == "_unpack_records"
        ):
            return True
        tb = tb.tb_next
    return False


@dataclass
class HeldPartition:
    """An input partition held back at ``offset``, the first record of a batch that could not be decoded."""

    offset: int
    error: str
    error_type: str
    failures: int
    #: monotonic time of the next try (``inf``: never); ``None`` while resumed for that try
    retry_at: float | None


class UndecodableGuard:
    """Keeps one input partition whose record batch cannot be decoded (a codec the client lacks, corrupt data)
    from stopping the others, without ever skipping its offsets.

    kafka-python 3.0 raises the decode error once from ``poll`` and keeps the broken partition buffer as its
    next one in line: the buffer's record generator is dead, so every later ``poll`` takes 0 records from it and
    loops inside the client forever (a whole core, and SIGTERM is never looked at). On such an error the guard
    takes that buffer out of the fetcher and pauses the partition. Its fetch position is still the first record
    of the undecodable batch, and nothing after it is returned or committed. The guard logs the partition once
    (``partition_undecodable``, then at most every ``relog_s``) and exposes it as metrics. Every ``retry_s`` the
    partition is resumed to fetch that batch again (a transient corruption heals, a persistent one is held again
    and counted); ``retry_s`` = 0 keeps it paused until a restart or a rebalance. A partition that is revoked or
    assigned anew starts fresh.

    The caller's own pause/resume (the worker's backpressure) goes through :meth:`pause`/:meth:`resume`, which
    never resume a held partition. Rebalance callbacks only queue events (they run on the client's IO thread);
    everything else runs on the polling thread.
    """

    def __init__(
        self,
        consumer: Any,
        log: Any,
        metrics: UndecodableMetrics | None = None,
        retry_s: float = 30.0,
        relog_s: float = UNDECODABLE_RELOG_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._consumer = consumer
        self._log = log
        self._metrics = metrics
        self.retry_s = retry_s
        self.relog_s = relog_s
        self._clock = clock
        self.held: dict[TopicPartition, HeldPartition] = {}
        self._caller_paused: set[TopicPartition] = set()
        self._rebalances: deque[tuple[str, list[TopicPartition]]] = deque()
        #: last log line per partition: (offset, error type, when); kept across rebalances so a partition that
        #: comes back and fails at the same batch is not logged again before ``relog_s``
        self._logged: dict[TopicPartition, tuple[int, str, float]] = {}

    # --- the caller's flow control ----------------------------------------------------------------------------
    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self._caller_paused.update(partitions)
        if partitions:
            self._consumer.pause(*[_k(tp) for tp in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        self._caller_paused.difference_update(partitions)
        free = [tp for tp in partitions if not self._held_paused(tp)]
        if free:
            self._consumer.resume(*[_k(tp) for tp in free])

    def _held_paused(self, tp: TopicPartition) -> bool:
        h = self.held.get(tp)
        return h is not None and h.retry_at is not None

    # --- rebalance: queued on the client's IO thread, applied on the polling thread --------------------------
    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self._rebalances.append(("revoked", list(partitions)))

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        self._rebalances.append(("assigned", list(partitions)))

    def _apply_rebalances(self) -> None:
        while self._rebalances:
            kind, tps = self._rebalances.popleft()
            self._caller_paused.difference_update(tps)
            for tp in tps:
                self._release(tp, kind)
            if kind == "assigned":
                # A partition assigned anew starts unpaused, as the caller assumes after a rebalance (kafka-python
                # keeps the paused flag of a partition it keeps across an eager rebalance).
                owned = self._owned()
                again = [_k(tp) for tp in tps if tp in owned]
                if again:
                    self._consumer.resume(*again)

    def _owned(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    # --- around each client poll --------------------------------------------------------------------------------
    def before_poll(self) -> None:
        self._apply_rebalances()
        if not self.held:
            return
        now = self._clock()
        due = [
            tp
            for tp, h in self.held.items()
            if h.retry_at is not None and now >= h.retry_at and tp not in self._caller_paused
        ]
        if not due:
            return
        owned = self._owned()
        for tp in due:
            self.held[tp].retry_at = None
        again = [_k(tp) for tp in due if tp in owned]
        if again:
            self._consumer.resume(*again)

    def on_poll_error(self, exc: BaseException) -> bool:
        """``poll`` raised ``exc``. True: it was an undecodable record batch, now held (poll again); False: the
        caller handles it (not a decoding error, or one that left nothing stuck in the client). Raises
        :class:`UndecodableInputError` when it was one but the client does not look as expected, so neither the
        partition nor the absence of a spin can be told (a kafka-python other than the pinned 3.0.x)."""
        self._apply_rebalances()
        if not _from_record_decoding(exc):
            return False
        broken = self._take_broken()
        if broken is None:
            fetcher = getattr(self._consumer, "_fetcher", None)
            if hasattr(fetcher, "_next_partition_records") and hasattr(fetcher, "_next_in_line_exception_metadata"):
                return False  # the client as expected, and no broken buffer left in it: nothing can spin
            raise UndecodableInputError(
                f"a record batch could not be decoded ({exc!r}) and kafka-python "
                f"{getattr(kafka_version, '__version__', '?')} does not say on which partition"
            ) from exc
        self._hold(*broken, exc)
        return True

    def after_poll(self, batches: Mapping[Any, Sequence[Any]]) -> None:
        """``poll`` returned ``batches``: hold a partition whose decoding error kafka-python deferred to the next
        poll (it returned other partitions' records first), release retried partitions that decoded."""
        self._apply_rebalances()
        fetcher = getattr(self._consumer, "_fetcher", None)
        deferred = getattr(fetcher, "_next_in_line_exception_metadata", None)
        exc = getattr(deferred, "exception", None)
        if isinstance(exc, BaseException) and _from_record_decoding(exc):
            broken = self._take_broken()
            if broken is not None:  # else kafka-python raises it from the next poll: on_poll_error
                self._hold(*broken, exc)
        if any(h.retry_at is None for h in self.held.values()):
            for ktp in batches:
                tp = TopicPartition(ktp.topic, ktp.partition)
                h = self.held.get(tp)
                if h is not None and h.retry_at is None:
                    self._release(tp, "decoded")

    # --- internals ---------------------------------------------------------------------------------------------
    def _take_broken(self) -> tuple[TopicPartition, int] | None:
        """Take the partition buffer whose decoding failed out of kafka-python's fetcher (it would spin on it):
        ``(partition, offset of its undecodable batch)``, or None if the fetcher does not look as expected."""
        fetcher: Any = getattr(self._consumer, "_fetcher", None)
        part = getattr(fetcher, "_next_partition_records", None)
        ktp = getattr(part, "topic_partition", None)
        offset = getattr(part, "next_fetch_offset", None)
        drain = getattr(part, "drain", None)
        if not part or ktp is None or not isinstance(offset, int) or not callable(drain):
            return None
        drain()
        fetcher._next_partition_records = None
        deferred = getattr(fetcher, "_next_in_line_exception_metadata", None)
        if deferred is not None and getattr(deferred, "partition", None) == ktp:
            fetcher._next_in_line_exception_metadata = None
        return TopicPartition(ktp.topic, ktp.partition), offset

    def _hold(self, tp: TopicPartition, offset: int, exc: BaseException) -> None:
        if tp not in self._owned():
            return  # no longer ours: its new owner reads the batch again
        self._consumer.pause(_k(tp))
        now = self._clock()
        prev = self.held.get(tp)
        failures = prev.failures + 1 if prev is not None and prev.offset == offset else 1
        error_type = type(exc).__name__
        error = repr(exc)[:500]
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

    def _release(self, tp: TopicPartition, why: str) -> None:
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
