"""``zeroproof-worker`` / ``python -m workers``: settings → model → Redis and Kafka (with backoff) → loop.

Exit codes: 0 clean stop (SIGTERM/SIGINT, after draining), 2 invalid configuration (one line on stderr naming
the setting), 1 an unexpected fatal error (logged), 3 an input record batch that cannot be decoded and cannot be
held back on its own partition (only with a kafka-python other than the pinned 3.0.x; logged, after draining).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from service import secrets
from workers.settings import SettingsError, load_settings
from workers.startup import StoppedError, wait_for_topic, with_backoff

T = TypeVar("T")


def _fail(msg: str) -> int:
    sys.stderr.write(f"zeroproof-worker: {secrets.scrub(msg)}\n")
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        return _fail(str(exc))
    if settings.model is None:
        return _fail("invalid setting ZEROPROOF_MODEL (--model): required (a model bundle or TorchScript file)")
    secrets.register(settings.secrets())

    from service import logs
    from workers.signals import Signals

    log = logs.configure(
        "zeroproof-worker", settings.log_level, kafka_level=settings.kafka_log_level, worker_id=settings.worker_id
    )
    signals = Signals(log).install()  # from here on, a stop or reload request is never lost

    from workers.fallback import build_chain
    from workers.metrics import WorkerMetrics
    from workers.model import ModelLoadError, load_runtime

    if settings.torch_threads > 0:
        # A micro-batch of small vectors is far too small to gain from intra-op parallelism, and idle OpenMP
        # threads spin: with torch's default (one per core) the forward took 2x longer and the latency at half
        # load doubled, the spinning threads taking the cores the Kafka client threads and the broker need.
        import torch

        torch.set_num_threads(settings.torch_threads)
    try:
        runtime = load_runtime(settings)
    except ModelLoadError as exc:
        return _fail(str(exc))
    metrics = WorkerMetrics()
    try:
        metrics.serve(settings.metrics_port, settings.metrics_host)
    except OSError as exc:
        return _fail(f"invalid setting ZEROPROOF_METRICS_PORT (--metrics-port): cannot listen: {exc}")
    log.info("starting", settings=settings.redacted())

    from service.review import RedisReviewStore
    from workers.transport.factory import consumer_transport, producer_transport
    from workers.worker import Worker

    def should_stop() -> bool:
        return signals.stop

    def retrying(what: str, connect: Callable[[], T]) -> T:
        return with_backoff(what, connect, log, should_stop, settings.startup_max_backoff_s, settings.startup_timeout_s)

    try:
        store = RedisReviewStore(settings.redis_client(), settings.redis_key_prefix)
        retrying("redis", store.ping)
        policy = retrying("redis", store.memory_policy)
        risk = store.eviction_risk() if policy is not None else None
        if risk is not None and not settings.redis_allow_eviction:
            return _fail(
                f"redis {settings.redis_url_redacted()}: {risk}; set maxmemory-policy "
                "noeviction (or ZEROPROOF_REDIS_ALLOW_EVICTION=true to accept losing them)"
            )
        if risk is not None or policy is None:
            log.warning("redis_eviction_unchecked" if policy is None else "redis_may_evict", risk=risk)
        store.allow_eviction = settings.redis_allow_eviction
        moved = retrying("redis", store.migrate_legacy)
        if moved:
            log.info("review_records_migrated", records=moved, layout="source-keyed")
        producer = retrying("kafka", lambda: producer_transport(settings))
        out_topics = [settings.output_topic, settings.dlq_topic, settings.fallback_topic, settings.stats_topic]
        parts = retrying("kafka", lambda: producer.warm(out_topics))
        log.info("output_topics_ready", partitions=parts)
        wait_for_topic(settings.input_topic, lambda: producer.topic_partitions(settings.input_topic), log, should_stop)
        consumer = retrying("kafka", lambda: consumer_transport(settings, log=log, metrics=metrics))
    except StoppedError:
        log.info("stopped_during_startup")
        return 0
    except Exception as exc:
        log.error("startup_failed", error=str(exc) or type(exc).__name__)
        return 1

    worker = Worker(
        settings,
        consumer,
        producer,
        store,
        runtime,
        build_chain(settings),
        metrics,
        log,
        producer_factory=lambda isolated=False: producer_transport(settings, isolated=isolated),
        signals=signals,
    )
    try:
        return worker.run()
    except Exception as exc:
        log.exception("worker_crashed", error=repr(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
