"""``zeroproof-worker`` / ``python -m workers``: settings → model → Redis and Kafka (with backoff) → loop.

Exit codes: 0 clean stop (SIGTERM/SIGINT, after draining), 2 invalid configuration (one line on stderr naming
the setting), 1 an unexpected fatal error (logged), 3 an input record batch that cannot be decoded and cannot be
held back on its own partition (only with a kafka-python other than the pinned 3.0.x; logged, after draining).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from workers.settings import SettingsError, WorkerSettings, load_settings

T = TypeVar("T")


class StoppedError(Exception):
    """A stop signal arrived while we were still starting."""


def with_backoff(
    what: str, connect: Callable[[], T], log: Any, settings: WorkerSettings, should_stop: Callable[[], bool]
) -> T:
    """Retry ``connect`` with capped exponential backoff and one clear log line per attempt; never a crash loop."""
    delay = 0.25
    attempt = 0
    started = time.monotonic()
    while True:
        attempt += 1
        try:
            result = connect()
            if attempt > 1:
                log.info(f"{what}_connected", attempts=attempt)
            return result
        except Exception as exc:
            if settings.startup_timeout_s and time.monotonic() - started > settings.startup_timeout_s:
                raise
            log.warning(
                f"{what}_unreachable",
                error=str(exc) or type(exc).__name__,
                attempt=attempt,
                retry_in_s=round(delay, 2),
                message=f"{what} not reachable; retrying in {delay:.2f}s",
            )
        end = time.monotonic() + delay
        while time.monotonic() < end:
            if should_stop():
                raise StoppedError()
            time.sleep(0.05)
        delay = min(settings.startup_max_backoff_s, delay * 2)


def _fail(msg: str) -> int:
    sys.stderr.write(f"zeroproof-worker: {msg}\n")
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        return _fail(str(exc))
    if settings.model is None:
        return _fail("invalid setting ZEROPROOF_MODEL (--model): required (a model bundle or TorchScript file)")

    import signal

    from workers import logs

    log = logs.configure(settings.log_level, worker_id=settings.worker_id, kafka_level=settings.kafka_log_level)
    stop = {"now": False}

    def early_stop(signum: int, frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, early_stop)
    signal.signal(signal.SIGINT, early_stop)

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

    from workers.review import RedisReviewStore, redis_client
    from workers.transport.kafka import KafkaConsumerTransport, KafkaProducerTransport
    from workers.worker import Worker

    try:
        store = RedisReviewStore(redis_client(settings), settings.redis_key_prefix)
        with_backoff("redis", lambda: store.ping(), log, settings, lambda: stop["now"])
        producer = with_backoff("kafka", lambda: KafkaProducerTransport(settings), log, settings, lambda: stop["now"])
        out_topics = [settings.output_topic, settings.dlq_topic, settings.fallback_topic, settings.stats_topic]
        parts = with_backoff("kafka", lambda: producer.warm(out_topics), log, settings, lambda: stop["now"])
        log.info("output_topics_ready", partitions=parts)
        consumer = with_backoff(
            "kafka",
            lambda: KafkaConsumerTransport(settings, log=log, metrics=metrics),
            log,
            settings,
            lambda: stop["now"],
        )
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
        producer_factory=lambda: KafkaProducerTransport(settings),
    )
    worker.install_signal_handlers()
    if stop["now"]:
        worker.stopping = True
    try:
        return worker.run()
    except Exception as exc:
        log.exception("worker_crashed", error=repr(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
