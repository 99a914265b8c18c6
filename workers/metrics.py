"""Prometheus metrics, fed from a few hook points (batch processed, batch durable, commit, error).

The loop calls these hooks with whole batches, so the metric code stays out of the hot path's per-message
loop. Each ``WorkerMetrics`` has its own registry (tests can run several in one process).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from workers.records import BatchStats

_LAT = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE = (1, 4, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        p = "zeroproof_worker_"
        self.messages_in = Counter(p + "messages_in", "Input records consumed", registry=r)
        self.messages_out = Counter(p + "messages_out", "Records acknowledged by the broker", ["kind"], registry=r)
        self.dlq = Counter(p + "dlq", "Inputs sent to the DLQ", ["reason"], registry=r)
        self.outputs = Counter(p + "outputs", "Outputs by status", ["model_version", "status"], registry=r)
        self.fallback = Counter(p + "fallback", "Fallback actions", ["model_version", "controller"], registry=r)
        self.rejected = Counter(p + "rejected", "Outputs with action reject", ["model_version"], registry=r)
        self.review_new = Counter(p + "review_records_new", "New ⊥ review records written to Redis", registry=r)
        self.refused = Counter(
            p + "records_refused",
            "Produced records the broker refused for good (too large), replaced by a DLQ record",
            ["kind"],
            registry=r,
        )
        self.batch_size = Histogram(p + "batch_size", "Records per micro-batch", buckets=_SIZE, registry=r)
        self.queue_time = Histogram(
            p + "queue_seconds", "First record polled to batch processing start", buckets=_LAT, registry=r
        )
        self.compute_time = Histogram(
            p + "compute_seconds", "Model forward + decode per batch", buckets=_LAT, registry=r
        )
        self.process_time = Histogram(
            p + "process_seconds", "Whole batch processing (parse..encode)", buckets=_LAT, registry=r
        )
        self.e2e = Histogram(
            p + "e2e_latency_seconds", "Input timestamp to output acknowledged", buckets=_LAT, registry=r
        )
        self.commit_latency = Histogram(p + "commit_seconds", "Offset commit latency", buckets=_LAT, registry=r)
        # the stage trace (docs/benchmarks.md): input timestamp → fetched → queued → processed → acknowledged
        self.fetch_lag = Histogram(
            p + "fetch_lag_seconds",
            "Producer timestamp of a batch's first input to the poll that returned it",
            buckets=_LAT,
            registry=r,
        )
        self.ack_time = Histogram(
            p + "ack_seconds",
            "Batch sent to every send acknowledged and its review records confirmed (seen by the loop)",
            buckets=_LAT,
            registry=r,
        )
        self.last_progress = Gauge(
            p + "last_progress_timestamp_seconds",
            "Last time a batch became durable or the loop was idle-healthy",
            registry=r,
        )
        self.errors = Counter(p + "errors", "Errors talking to Redis/Kafka", ["component"], registry=r)
        self.in_flight = Gauge(p + "in_flight_batches", "Batches sent but not yet committed", registry=r)
        self.in_flight_records = Gauge(
            p + "in_flight_records",
            "Input records sent but not yet committed (at most the duplicate bound)",
            registry=r,
        )
        self.paused = Gauge(p + "paused", "1 while input partitions are paused (backpressure)", registry=r)
        self.model_info = Gauge(
            p + "model_info",
            "Model version and thresholds in use",
            ["model_version", "tau_infer", "tau_train"],
            registry=r,
        )
        self.reloads = Counter(p + "reloads", "Hot reloads", ["result"], registry=r)
        self.bottom_log_suppressed = Counter(p + "bottom_log_suppressed", "⊥ log events not logged", registry=r)
        self.partitions_undecodable = Gauge(
            p + "partitions_undecodable",
            "Input partitions held back at a record batch that cannot be decoded (codec missing, corrupt data)",
            registry=r,
        )
        self.undecodable_offset = Gauge(
            p + "undecodable_offset",
            "Offset of the undecodable record batch a held input partition waits at",
            ["topic", "partition"],
            registry=r,
        )
        self.undecodable_fetches = Counter(
            p + "undecodable_fetches", "Fetched record batches that could not be decoded", ["error"], registry=r
        )
        self.last_progress.set(time.time())

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        if port:
            start_http_server(port, addr=host, registry=self.registry)

    def set_model(self, version: str, tau_infer: float, tau_train: float | None) -> None:
        self.model_info.clear()
        self.model_info.labels(version, repr(tau_infer), repr(tau_train)).set(1)

    def batch_processed(self, n_records: int, out: BatchStats, queue_s: float, process_s: float) -> None:
        self.messages_in.inc(n_records)
        self.batch_size.observe(n_records)
        self.queue_time.observe(queue_s)
        self.compute_time.observe(out.compute_s)
        self.process_time.observe(process_s)
        mv = out.model_version
        c = out.counts
        ok = c.total - c.bottom - c.gap
        if ok:
            self.outputs.labels(mv, "ok").inc(ok)
        if c.gap:
            self.outputs.labels(mv, "gap").inc(c.gap)
        if c.bottom:
            self.outputs.labels(mv, "bottom").inc(c.bottom)
        if c.rejected:
            self.rejected.labels(mv).inc(c.rejected)
        for reason, n in out.dlq.items():
            self.dlq.labels(reason).inc(n)
        for controller, n in out.fallback_by.items():
            self.fallback.labels(mv, controller).inc(n)

    def batch_durable(self, sent_by_kind: dict[str, int], input_timestamps_ms: Sequence[int], ack_s: float) -> None:
        self.ack_time.observe(ack_s)
        for kind, n in sent_by_kind.items():
            self.messages_out.labels(kind).inc(n)
        now_ms = time.time() * 1000.0
        obs = self.e2e.observe
        # an evenly spaced sample of at most 64 per batch: the distribution is kept, the per-message cost is not
        step = max(1, len(input_timestamps_ms) // 64)
        for ts in input_timestamps_ms[::step]:
            if ts > 0:
                obs(max(0.0, (now_ms - ts) / 1000.0))
        self.last_progress.set(time.time())

    def error(self, component: str) -> None:
        self.errors.labels(component).inc()
