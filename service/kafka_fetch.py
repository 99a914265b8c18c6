"""Keeps a partition whose record batch cannot be decoded from stopping a kafka-python consumer.

kafka-python 3.0 raises a decoding error (a codec the client lacks, corrupt data) once from ``poll`` and then
loops inside the client for ever (see :class:`UndecodableGuard`). Both services consume with kafka-python (the
worker as a group member, the monitor by assignment), so the guard is shared.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Any

from kafka import TopicPartition as KTopicPartition
from kafka import version as kafka_version
from kafka.errors import CorruptRecordError, UnsupportedCodecError

from service.held import UNDECODABLE_RELOG_S, HeldPartition, HeldPartitions, UndecodableMetrics
from service.kafka import TopicPartition, UndecodableInputError

__all__ = ["UNDECODABLE_RELOG_S", "HeldPartition", "UndecodableGuard", "UndecodableMetrics"]


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


class UndecodableGuard:
    """Keeps one input partition whose record batch cannot be decoded (a codec the client lacks, corrupt data)
    from stopping the others, without ever skipping its offsets.

    kafka-python 3.0 raises the decode error once from ``poll`` and keeps the broken partition buffer as its
    next one in line: the buffer's record generator is dead, so every later ``poll`` takes 0 records from it and
    loops inside the client forever (a whole core, and SIGTERM is never looked at). On such an error the guard
    takes that buffer out of the fetcher and pauses the partition. Its fetch position is still the first record
    of the undecodable batch, and nothing after it is returned or committed. What follows (one log line, the
    metrics, a retry every ``retry_s``, release once it decodes) is :class:`service.held.HeldPartitions`, shared
    with the librdkafka transport; ``retry_s`` = 0 keeps it paused until a restart or a rebalance. A partition
    that is revoked or assigned anew starts fresh.

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
        self.book = HeldPartitions(log, metrics, retry_s, relog_s, clock)
        self._rebalances: deque[tuple[str, list[TopicPartition]]] = deque()

    @property
    def held(self) -> Mapping[TopicPartition, HeldPartition]:
        return self.book.held

    # --- the caller's flow control ----------------------------------------------------------------------------
    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        self.book.caller_pauses(partitions)
        if partitions:
            self._consumer.pause(*[_k(tp) for tp in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        free = self.book.caller_resumes(partitions)
        if free:
            self._consumer.resume(*[_k(tp) for tp in free])

    # --- rebalance: queued on the client's IO thread, applied on the polling thread --------------------------
    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self._rebalances.append(("revoked", list(partitions)))

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        self._rebalances.append(("assigned", list(partitions)))

    def _apply_rebalances(self) -> None:
        while self._rebalances:
            kind, tps = self._rebalances.popleft()
            self.book.forget_caller_pauses(tps)
            for tp in tps:
                self.book.release(tp, kind)
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
        due = self.book.due()
        if not due:
            return
        owned = self._owned()
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
        if self.book:
            self.book.decoded(TopicPartition(ktp.topic, ktp.partition) for ktp in batches)

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
        self.book.hold(tp, offset, type(exc).__name__, repr(exc))
