"""The consume → batch → infer → deliver → commit loop, with backpressure, rebalance handling, drain and reload.

Single-threaded by design: kafka-python's consumer is not thread-safe and rebalance callbacks run inside
``poll``. Every wait is short (poll timeouts ≤ the batch deadline, sends and Redis writes are checked without
blocking), so the time between polls stays far below ``max_poll_interval_ms`` even while Redis or the broker
is down: the loop pauses the input partitions and keeps polling.
"""

from __future__ import annotations

import gc
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from service.review import ReviewSink
from workers.checkpoint import Checkpoint
from workers.fallback import FallbackChain
from workers.metrics import WorkerMetrics
from workers.model import ModelLoadError, ModelRuntime, changed_on_disk, load_runtime
from workers.pipeline import (
    BatchOutcome,
    BottomEvent,
    Outgoing,
    PipelineConfig,
    Routing,
    dlq_original_limit,
    process_batch,
    replace_refused,
    stats_message,
)
from workers.settings import WorkerSettings
from workers.transport.base import Consumer, Producer, ProducerFactory, Record, TopicPartition, UndecodableInputError


class BottomLogLimiter:
    """Log each ⊥ input as a structured event, at most ``rate`` per second; count the rest and report the
    count periodically, so a burst of ⊥ never floods the log (and never hides that it happened)."""

    def __init__(self, log: Any, metrics: WorkerMetrics, rate: float, report_every_s: float = 10.0) -> None:
        self.log = log
        self.metrics = metrics
        self.rate = rate
        self.tokens = rate
        self.last = time.monotonic()
        self.suppressed = 0
        self.report_every_s = report_every_s
        self.last_report = self.last

    def __call__(self, events: Sequence[BottomEvent], model_version: str) -> None:
        now = time.monotonic()
        self.tokens = min(max(self.rate, 1.0), self.tokens + (now - self.last) * self.rate)
        self.last = now
        for ev in events:
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                self.log.warning(
                    "bottom_input",
                    input_id=ev.input_id,
                    entity=ev.entity,
                    source=f"{ev.topic}:{ev.partition}:{ev.offset}",
                    bottom_elements=ev.elements,
                    model_version=model_version,
                )
            else:
                self.suppressed += 1
                self.metrics.bottom_log_suppressed.inc()
        self.tick(now)

    def tick(self, now: float | None = None) -> None:
        """Report the suppressed count once per period even when no new ⊥ arrives."""
        now = time.monotonic() if now is None else now
        if self.suppressed and now - self.last_report >= self.report_every_s:
            self.log.warning(
                "bottom_inputs_suppressed", count=self.suppressed, window_s=round(now - self.last_report, 1)
            )
            self.suppressed = 0
            self.last_report = now


class ModelErrorLog:
    """``model_output_invalid`` errors: the first of each (model version, error) is logged at once, then at most
    one line per ``every_s`` with the number of inputs sent to the DLQ since, so a broken model is said clearly
    without one line per batch."""

    def __init__(self, log: Any, every_s: float = 60.0) -> None:
        self.log = log
        self.every_s = every_s
        self.last: dict[tuple[str, str], float] = {}
        self.pending: dict[tuple[str, str], int] = {}

    def __call__(self, errors: Sequence[tuple[str, int]], model_version: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for error, inputs in errors:
            key = (model_version, error)
            self.pending[key] = self.pending.get(key, 0) + inputs
            last = self.last.get(key)
            if last is None or now - last >= self.every_s:
                self.log.error(
                    "model_output_invalid",
                    model_version=model_version,
                    error=error,
                    inputs_to_dlq=self.pending.pop(key),
                    first=last is None,
                    message="the model's output breaks the serving contract: its inputs go to the DLQ "
                    "(reason model_output_invalid); deploy a fixed model (hot reload) and replay them",
                )
                self.last[key] = now


@dataclass
class _Prepared:
    records: list[Record]
    out: BatchOutcome
    extra: list[Outgoing]
    queue_s: float
    process_s: float


@dataclass
class _Buffer:
    records: list[Record]
    first_at: float  # monotonic time the first record was polled
    first_wall: float


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
        reloader: Callable[[], ModelRuntime] | None = None,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        self.s = settings
        self.consumer = consumer
        self.producer = producer
        self.runtime = runtime
        self.metrics = metrics
        self.log = log
        self.routing = Routing(settings.policy_ok, settings.policy_gap, settings.policy_bottom, chain)
        self.pcfg = PipelineConfig(
            output_topic=settings.output_topic,
            dlq_topic=settings.dlq_topic,
            fallback_topic=settings.fallback_topic,
            worker_id=settings.worker_id,
            stats_labels=settings.stats_label_names,
            shadow_pairs=settings.shadow_pairs,
            max_message_bytes=settings.max_message_bytes,
            stats_max_label_values=settings.stats_max_label_values,
            dlq_max_original_bytes=dlq_original_limit(settings.producer_max_request_bytes),
        )
        self.checkpoint = Checkpoint(
            consumer,
            producer,
            reviews,
            metrics,
            log,
            lambda out, err: replace_refused(out, err, settings.dlq_topic, settings.worker_id),
            producer_factory=producer_factory,
            stall_s=settings.producer_stall_s,
        )
        self.bottom_log = BottomLogLimiter(log, metrics, settings.bottom_log_rate)
        # a reload probes the new model at the width being served (a TorchScript file stores none)
        self.reloader = reloader or (
            lambda: load_runtime(settings, device=self.runtime.device, width_hint=self.runtime.in_features)
        )
        self.model_error_log = ModelErrorLog(log)
        self.buffer: _Buffer | None = None
        self.prepared: _Prepared | None = None
        self.seek_pending: set[TopicPartition] = set()
        self.paused = False
        self.stopping = False
        self.exit_code = 0
        self.reload_requested = False
        self.next_reload_check = time.monotonic() + settings.reload_check_s
        self.batches = 0
        self.metrics.set_model(runtime.model_version, runtime.config.tau_infer, runtime.config.tau_train)

    # --- signals -------------------------------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hup)

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self.reload_requested = True

    # --- rebalance (called inside consumer.poll) -----------------------------------------------------------
    def on_revoked(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        """Bounded drain of in-flight batches; returns the durable offsets of the revoked partitions for the
        transport to commit. Buffered (not yet processed) records of those partitions are dropped: they are
        uncommitted, so their new owner reads them again. Never raises (it runs inside the client)."""
        gone = set(partitions)
        if not gone:
            return {}
        try:
            dropped = 0
            if self.buffer is not None:
                keep = [r for r in self.buffer.records if r.tp not in gone]
                dropped = len(self.buffer.records) - len(keep)
                self.buffer = _Buffer(keep, self.buffer.first_at, self.buffer.first_wall) if keep else None
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
            self.paused = False
            self.metrics.paused.set(0)
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
        self.paused = False
        self.metrics.paused.set(0)

    # --- flow control ----------------------------------------------------------------------------------------
    def _set_paused(self, want: bool) -> None:
        if want == self.paused:
            return
        parts = sorted(self.consumer.assignment())
        if want:
            self.consumer.pause(parts)
        else:
            self.consumer.resume(parts)
        self.paused = want
        self.metrics.paused.set(1 if want else 0)
        self.log.debug("backpressure", paused=want, in_flight=self.checkpoint.in_flight)

    def _can_dispatch(self) -> bool:
        return self.checkpoint.in_flight < self.s.max_in_flight_batches

    # --- reload ---------------------------------------------------------------------------------------------
    def maybe_reload(self) -> None:
        now = time.monotonic()
        due = False
        if self.s.reload_check_s > 0 and now >= self.next_reload_check:
            self.next_reload_check = now + self.s.reload_check_s
            due = changed_on_disk(self.runtime, self.s)
        if not (due or self.reload_requested):
            return
        trigger = "sighup" if self.reload_requested else "file_change"
        self.reload_requested = False
        old = self.runtime
        try:
            new = self.reloader()
        except (ModelLoadError, OSError, ValueError) as exc:
            self.metrics.reloads.labels("failed").inc()
            self.log.error("reload_failed", trigger=trigger, error=str(exc), keeping=old.model_version)
            # don't retry a broken file every check: remember what we saw
            try:
                from workers.model import fingerprint

                if self.s.model is not None:
                    old.file_fingerprint = fingerprint(self.s.model)
                if self.s.thresholds_file is not None:
                    old.thresholds_fingerprint = fingerprint(self.s.thresholds_file)
            except OSError:
                pass
            return
        self.runtime = new
        self.metrics.reloads.labels("ok").inc()
        self.metrics.set_model(new.model_version, new.config.tau_infer, new.config.tau_train)
        self.log.info(
            "model_reloaded",
            trigger=trigger,
            old_version=old.model_version,
            model_version=new.model_version,
            tau_infer=new.config.tau_infer,
            tau_train=new.config.tau_train,
        )

    # --- the loop ------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Process the buffered batch (CPU only, nothing sent): runs while the previous batch awaits its acks
        and commit, so compute overlaps I/O without a second batch being sent-but-uncommitted."""
        buf = self.buffer
        if buf is None or self.prepared is not None:
            return
        self.buffer = None
        t_start = time.monotonic()
        out: BatchOutcome = process_batch(buf.records, self.runtime, self.routing, self.pcfg)
        self.batches += 1
        stats = stats_message(out, self.s.worker_id, buf.first_wall, time.time(), self.batches)
        extra = [Outgoing(self.s.stats_topic, self.s.worker_id.encode(), stats, (), "stats")]
        self.prepared = _Prepared(buf.records, out, extra, t_start - buf.first_at, time.monotonic() - t_start)

    def submit_prepared(self) -> None:
        p = self.prepared
        if p is None:
            return
        self.prepared = None
        self.checkpoint.submit(p.out, p.extra)
        out = p.out
        self.metrics.batch_processed(len(p.records), out, p.queue_s, p.process_s)
        if out.fallback_by:
            self.metrics.fallbacks(out.model_version, out.fallback_by)
        if out.bottoms:
            self.bottom_log(out.bottoms, out.model_version)
        if out.model_output_errors:
            self.model_error_log(out.model_output_errors, out.model_version)

    def dispatch(self) -> None:
        """Process and send the buffered batch now (tests and shutdown paths)."""
        self.prepare()
        self.submit_prepared()

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
        if self.buffer is not None:
            keep = [r for r in self.buffer.records if r.tp not in gone]
            self.buffer = _Buffer(keep, self.buffer.first_at, self.buffer.first_wall) if keep else None
        return [r for r in recs if r.tp not in gone]

    def step(self) -> None:
        """One iteration: progress deliveries, maybe reload, poll, maybe dispatch a batch."""
        self.checkpoint.progress()
        if self.checkpoint.in_flight == 0:
            self.metrics.last_progress.set(time.time())
        # The runtime is only read when a batch is dispatched (atomically, in this thread), so swapping it here
        # is "between batches" even under load; in-flight batches keep the version they were served with.
        self.maybe_reload()
        self.bottom_log.tick()
        max_batch = self.s.max_batch_size
        buffered = len(self.buffer.records) if self.buffer is not None else 0
        # Backpressure: stop fetching when the next batch is full and cannot be dispatched, or a downstream
        # is failing; keep polling (paused) so the group membership and max_poll_interval stay healthy.
        self._set_paused((buffered >= max_batch and self.prepared is not None) or self.checkpoint.blocked_downstream)
        now = time.monotonic()
        timeout = max(0.0, self.buffer.first_at + self.s.max_batch_delay_s - now) if self.buffer is not None else 0.1
        if self.checkpoint.in_flight:
            timeout = min(max(timeout, 0.001), 0.002)  # wake often for acks, but never spin
        want = max_batch - buffered
        try:
            if self.paused:
                recs = self.consumer.poll(0.002, 1)  # keeps the group session; paused → no records
            elif want > 0:
                recs = self.consumer.poll(timeout, want)
            else:
                recs = []
        except UndecodableInputError as exc:  # cannot be held back on its own: stop rather than skip or spin
            self.log.error("input_undecodable_stopping", error=str(exc), exit_code=3)
            self.stopping = True
            self.exit_code = 3
            recs = []
        except Exception as exc:  # broker gone, coordinator moved...: the client reconnects; we keep going
            self.metrics.error("kafka_consume")
            self.log.warning("poll_failed", error=repr(exc))
            time.sleep(0.2)
            recs = []
        if self.seek_pending:
            recs = self._apply_seeks(recs)
        if recs:
            if self.buffer is None:
                self.buffer = _Buffer(list(recs), time.monotonic(), time.time())
            else:
                self.buffer.records.extend(recs)
        buf = self.buffer
        due = buf is not None and (
            self.s.dispatch_when_idle
            or len(buf.records) >= max_batch
            or time.monotonic() >= buf.first_at + self.s.max_batch_delay_s
        )
        if due and self.prepared is None and (self.s.prepare_ahead or self._can_dispatch()):
            self.prepare()
        if self.prepared is not None and self._can_dispatch():
            self.submit_prepared()

    def run(self) -> int:
        # Everything loaded so far (torch, the model, clients) lives for the whole run: freezing it keeps the
        # cyclic GC's full collections short, which is where the latency tail otherwise comes from.
        gc.collect()
        gc.freeze()
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
            self.step()
        return self.shutdown()

    def shutdown(self) -> int:
        """Bounded drain: abandon the not-yet-dispatched buffer (it is uncommitted, so it will be redelivered),
        wait up to ``drain_timeout_s`` for in-flight batches, commit what is durable, leave the group."""
        abandoned = len(self.buffer.records) if self.buffer is not None else 0
        abandoned += len(self.prepared.records) if self.prepared is not None else 0
        self.buffer = None
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


__all__ = ["BottomLogLimiter", "ModelErrorLog", "Worker"]
