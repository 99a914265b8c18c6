"""The consume → batch → infer → deliver → commit loop.

``Worker.step`` orchestrates named collaborators, each with one job:

- ``Checkpoint`` (workers/checkpoint.py): sends, Redis writes, retries, and the commit order;
- ``Reloader`` (workers/reload.py): swaps the model between batches on SIGHUP or a file change;
- ``FlowControl`` (workers/flow.py): pauses input while the next batch cannot go or a downstream fails;
- ``Batcher`` (workers/batching.py): gathers records until a batch is due;
- ``process_batch`` (workers/pipeline.py): the batch itself, pure; ``workers/records.py`` encodes what it sends;
- ``Signals`` (workers/signals.py): stop and reload requests;
- ``KeepWarm`` (workers/warm.py): keeps the model's code path warm while the input is idle.

Single-threaded by design: kafka-python's consumer is not thread-safe and rebalance callbacks run inside
``poll``. Every wait is short (poll timeouts ≤ the batch deadline, sends and Redis writes are checked without
blocking), so the time between polls stays far below ``max_poll_interval_ms`` even while Redis or the broker
is down: the loop pauses the input partitions and keeps polling.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.review import ReviewSink
from workers.batching import Batch, Batcher
from workers.checkpoint import Checkpoint
from workers.events import BottomLogLimiter, ModelErrorLog
from workers.fallback import FallbackChain
from workers.flow import FlowControl
from workers.metrics import WorkerMetrics
from workers.model import ModelRuntime, load_runtime
from workers.pipeline import BatchOutcome, PipelineConfig, Routing, process_batch
from workers.records import Outgoing, dlq_original_limit, replace_refused, stats_record
from workers.reload import Reloader
from workers.settings import WorkerSettings
from workers.signals import Signals
from workers.transport.base import Consumer, Producer, ProducerFactory, Record, TopicPartition, UndecodableInputError
from workers.warm import KeepWarm

#: Poll timeout while nothing is buffered (the loop also wakes for acks, reloads and signals).
_IDLE_POLL_S = 0.1
#: After a batch, with nothing else to process: how long the loop may wait for the batch to leave the client at once
#: rather than after its linger (``Producer.expedite``; librdkafka's shortest flush)
_EXPEDITE_S = 0.001


@dataclass
class Prepared:
    """A batch computed while the previous one awaits its acknowledgements: sent when the checkpoint has room."""

    records: list[Record]
    out: BatchOutcome
    stats: Outgoing
    queue_s: float
    process_s: float


@contextlib.contextmanager
def no_collection() -> Iterator[None]:
    """No cyclic garbage collection inside a step of the loop. A 1024-record batch allocates ~10 container objects
    per record (parsed inputs, rows, output documents), so the collector ran ~15 times inside every batch over
    everything the batch had made so far (a paired microbenchmark of ``prepare``: 0.92-0.95x the time without it).
    Those objects are freed by reference counting when the batch is done; a collection that falls due runs at the
    first allocation after the step, when the batch's outputs are already sent (not between computing and sending
    them). Measured in a worker draining 300 000 inputs: ~0.2 s of collections in all, the start-up included."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def pipeline_config(s: WorkerSettings) -> PipelineConfig:
    return PipelineConfig(
        output_topic=s.output_topic,
        dlq_topic=s.dlq_topic,
        fallback_topic=s.fallback_topic,
        worker_id=s.worker_id,
        stats_labels=s.stats_label_names,
        shadow_pairs=s.shadow_pairs,
        max_message_bytes=s.max_message_bytes,
        stats_max_label_values=s.stats_max_label_values,
        dlq_max_original_bytes=dlq_original_limit(s.producer_max_request_bytes),
    )


class Worker:
    def __init__(
        self,
        settings: WorkerSettings,
        consumer: Consumer,
        producer: Producer,
        reviews: ReviewSink,
        runtime: ModelRuntime,
        chain: FallbackChain,
        metrics: WorkerMetrics,
        log: Any,
        reloader: Callable[[ModelRuntime], ModelRuntime] | None = None,
        producer_factory: ProducerFactory | None = None,
        signals: Signals | None = None,
    ) -> None:
        s = self.s = settings
        self.consumer = consumer
        self.metrics = metrics
        self.log = log
        self.signals = signals or Signals(log)
        self.routing = Routing(s.policy_ok, s.policy_gap, s.policy_bottom, chain)
        self.pcfg = pipeline_config(s)
        self.checkpoint = Checkpoint(
            consumer,
            producer,
            reviews,
            metrics,
            log,
            lambda out, err: replace_refused(out, err, s.dlq_topic, s.worker_id),
            producer_factory=producer_factory,
            stall_s=s.producer_stall_s,
        )

        def reload_model(old: ModelRuntime) -> ModelRuntime:
            # probed at the width being served (a TorchScript file stores none)
            return load_runtime(s, device=old.device, width_hint=old.in_features)

        self.reloader = Reloader(
            runtime, reloader or reload_model, s.model, s.thresholds_file, s.reload_check_s, metrics, log
        )
        self.flow = FlowControl(consumer, metrics, log)
        self.batcher = Batcher(s.max_batch_size, s.max_batch_delay_s, s.dispatch_when_idle)
        self.prepared: Prepared | None = None
        self.bottom_log = BottomLogLimiter(log, metrics, s.bottom_log_rate)
        self.model_error_log = ModelErrorLog(log)
        #: partitions assigned by the last rebalance, to restart from their commits in the loop's thread
        self.seek_pending: set[TopicPartition] = set()
        self.batches = 0
        #: the last poll returned fewer records than it could take: no backlog waits in the client
        self.caught_up = True
        self.exit_code = 0
        self.warm = KeepWarm(lambda: self.runtime, s.idle_warm_interval_ms / 1000.0, log)

    @property
    def runtime(self) -> ModelRuntime:
        return self.reloader.runtime

    @property
    def stopping(self) -> bool:
        return self.signals.stop

    # --- rebalance (called inside consumer.poll) -----------------------------------------------------------
    def on_revoked(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        """Bounded drain of in-flight batches; returns the durable offsets of the revoked partitions for the
        transport to commit. Buffered (not yet processed) records of those partitions are dropped: they are
        uncommitted, so their new owner reads them again. Never raises (it runs inside the client)."""
        gone = set(partitions)
        if not gone:
            return {}
        try:
            dropped = self.batcher.drop(gone)
            if self.prepared is not None:
                # processed but never sent: drop it; its other partitions restart from their commits
                dropped += len(self.prepared.records)
                self.seek_pending.update(r.tp for r in self.prepared.records if r.tp not in gone)
                self.prepared = None
            drained = self.checkpoint.drain(self.s.drain_timeout_s, commit=False)
            offsets = self.checkpoint.durable_offsets(gone)
            abandoned = self.checkpoint.forget(gone)
            self.log.info(
                "partitions_revoked",
                partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in gone),
                drained=drained,
                abandoned_batches=abandoned,
                dropped_buffered=dropped,
                committing={f"{tp.topic}:{tp.partition}": off for tp, off in sorted(offsets.items())},
            )
            self.flow.rebalanced()
            return offsets
        except Exception as exc:  # a listener that raises would take the consumer down with it
            self.log.error("revoke_failed", error=repr(exc))
            self.checkpoint.forget(gone)
            return {}

    def on_revoke_committed(self, offsets: Mapping[TopicPartition, int], error: BaseException | None) -> None:
        if error is not None:
            self.metrics.error("kafka_commit")
            self.log.warning("revoke_commit_failed", error=repr(error), partitions=len(offsets))

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> None:
        # A client may keep the fetch position of a partition it gets back, past records we dropped from the
        # buffer or abandoned in flight: the main loop re-seeks every new assignment to its committed offset.
        self.seek_pending.update(partitions)
        self.log.info("partitions_assigned", partitions=sorted(f"{tp.topic}:{tp.partition}" for tp in partitions))
        self.flow.rebalanced()

    @property
    def idle(self) -> bool:
        """Nothing buffered, prepared or in flight: the loop only waits for input."""
        return self.prepared is None and self.batcher.buffered == 0 and self.checkpoint.in_flight == 0

    # --- stages ------------------------------------------------------------------------------------------------
    def _can_dispatch(self, records: int) -> bool:
        """Room to send ``records`` more: records sent but not committed stay within the duplicate bound,
        however many batches they form (small batches at low rate pipeline rather than queue behind commits)."""
        in_flight = self.checkpoint.records_in_flight
        return in_flight == 0 or in_flight + records <= self.s.in_flight_record_limit

    def prepare(self, batch: Batch) -> Prepared:
        """Process a batch (CPU only, nothing sent): runs while earlier batches await their acks and commit, so
        compute overlaps I/O even when the duplicate bound leaves no room to send it yet."""
        t_start = time.monotonic()
        first_ts_ms = batch.records[0].timestamp_ms
        if first_ts_ms > 0:
            self.metrics.fetch_lag.observe(max(0.0, batch.first_wall - first_ts_ms / 1000.0))
        out = process_batch(batch.records, self.runtime, self.routing, self.pcfg)
        self.warm.touch()
        self.batches += 1
        stats = stats_record(
            self.s.stats_topic, out.stats, self.s.worker_id, batch.first_wall, time.time(), self.batches
        )
        return Prepared(batch.records, out, stats, t_start - batch.first_at, time.monotonic() - t_start)

    def submit(self, p: Prepared) -> None:
        # Caught up with the input (the last poll returned less than it could take), nothing buffered or prepared: the
        # loop would only wait, so the batch need not wait out the producer's linger. Not while draining a backlog:
        # there a poll returns a full batch, and the wait would come out of the throughput.
        idle = self.caught_up and self.batcher.buffered == 0 and self.prepared is None
        self.checkpoint.submit(p.out.delivery, [p.stats], expedite_s=_EXPEDITE_S if idle else 0.0)
        out = p.out
        self.metrics.batch_processed(len(p.records), out.stats, p.queue_s, p.process_s)
        if out.bottoms:
            self.bottom_log(out.bottoms, out.stats.model_version)
        if out.model_output_errors:
            self.model_error_log(out.model_output_errors, out.stats.model_version)

    def dispatch(self) -> None:
        """Process and send the buffered batch now (tests and shutdown paths)."""
        batch = self.batcher.take()
        if batch is not None:
            self.submit(self.prepare(batch))

    def _poll(self, now: float) -> list[Record]:
        timeout = self.batcher.wait_s(now, _IDLE_POLL_S)
        if self.checkpoint.in_flight:
            timeout = min(max(timeout, 0.001), 0.002)  # wake often for acks, but never spin
        try:
            if self.flow.paused:
                return self.consumer.poll(0.002, 1)  # keeps the group session; paused → no records
            if self.batcher.room > 0:
                return self.consumer.poll(timeout, self.batcher.room)
            return []
        except UndecodableInputError as exc:  # cannot be held back on its own: stop rather than skip or spin
            self.log.error("input_undecodable_stopping", error=str(exc), exit_code=3)
            self.signals.stop = True
            self.exit_code = 3
        except Exception as exc:  # broker gone, coordinator moved...: the client reconnects; we keep going
            self.metrics.error("kafka_consume")
            self.log.warning("poll_failed", error=repr(exc))
            time.sleep(0.2)
        return []

    def _apply_seeks(self, recs: list[Record]) -> list[Record]:
        """Main thread, after the poll that completed a rebalance: restart new partitions from their commits
        and drop whatever that poll already returned for them (it is read again)."""
        tps = sorted(self.seek_pending)
        try:
            self.consumer.seek_to_committed(tps)
        except Exception as exc:
            self.metrics.error("kafka_consume")
            self.log.warning("seek_failed", error=repr(exc))
            return [r for r in recs if r.tp not in self.seek_pending]
        self.seek_pending.clear()
        gone = set(tps)
        self.batcher.drop(gone)
        return [r for r in recs if r.tp not in gone]

    # --- the loop ------------------------------------------------------------------------------------------
    def step(self) -> None:
        """One iteration: progress deliveries, maybe reload, poll, maybe dispatch a batch."""
        self.checkpoint.progress()
        if self.checkpoint.in_flight == 0:
            self.metrics.last_progress.set(time.time())
        # A batch computed while its predecessor awaited its acknowledgements goes out as soon as there is room,
        # before the poll: polled first, it waited out the poll's idle timeout (100 ms at low load).
        self._submit_ready()
        self.reloader.maybe_reload(self.signals.take_reload())
        self.bottom_log.tick()
        # Backpressure: stop fetching when the next batch is full and cannot be dispatched, or a downstream
        # is failing; keep polling (paused) so the group membership and max_poll_interval stay healthy.
        full = self.batcher.room <= 0 and self.prepared is not None
        self.flow.set(full or self.checkpoint.blocked_downstream, self.checkpoint.in_flight)
        room = self.batcher.room
        recs = self._poll(time.monotonic())
        self.caught_up = len(recs) < room
        if not recs and not self.warm.disabled and self.idle:
            self.warm.maybe_run()
        if self.seek_pending:
            recs = self._apply_seeks(recs)
        self.batcher.add(recs)
        if (
            self.prepared is None
            and self.batcher.due(time.monotonic())
            and (self.s.prepare_ahead or self._can_dispatch(self.batcher.buffered))
        ):
            batch = self.batcher.take()
            assert batch is not None
            self.prepared = self.prepare(batch)
        self._submit_ready()

    def _submit_ready(self) -> None:
        if self.prepared is not None and self._can_dispatch(len(self.prepared.records)):
            p, self.prepared = self.prepared, None
            self.submit(p)

    def run(self) -> int:
        # Everything loaded so far (torch, the model, clients) lives for the whole run: freezing it keeps the
        # cyclic GC's full collections short, which is where the latency tail otherwise comes from.
        gc.collect()
        gc.freeze()
        self.signals.serving = True
        self.consumer.subscribe(self.s.input_topic, self)
        self.log.info(
            "worker_started",
            input_topic=self.s.input_topic,
            group_id=self.s.group_id,
            model_version=self.runtime.model_version,
            tau_infer=self.runtime.config.tau_infer,
            tau_train=self.runtime.config.tau_train,
            device=str(self.runtime.device),
            max_batch_size=self.s.max_batch_size,
            max_batch_delay_ms=self.s.max_batch_delay_ms,
        )
        while not self.stopping:
            with no_collection():  # a collection that falls due in a step runs after it, once its sends are out
                self.step()
        return self.shutdown()

    def shutdown(self) -> int:
        """Bounded drain: abandon the not-yet-dispatched buffer (it is uncommitted, so it will be redelivered),
        wait up to ``drain_timeout_s`` for in-flight batches, commit what is durable, leave the group."""
        abandoned = self.batcher.clear()
        abandoned += len(self.prepared.records) if self.prepared is not None else 0
        self.prepared = None
        t0 = time.monotonic()
        drained = self.checkpoint.drain(self.s.drain_timeout_s)
        self.checkpoint.commit()
        self.log.info(
            "worker_stopping",
            drained=drained,
            in_flight_abandoned=self.checkpoint.in_flight,
            buffered_abandoned=abandoned,
            drain_s=round(time.monotonic() - t0, 3),
            committed={f"{tp.topic}:{tp.partition}": off for tp, off in sorted(self.checkpoint.committed.items())},
        )
        try:
            self.consumer.close()
        finally:
            self.checkpoint.close(min(5.0, self.s.drain_timeout_s))
        return self.exit_code


__all__ = ["BottomLogLimiter", "ModelErrorLog", "Prepared", "Worker", "no_collection", "pipeline_config"]
