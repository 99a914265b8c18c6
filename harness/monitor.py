"""Drive a scenario through a real broker: publish synthetic stats in event-time order while an in-process
``MonitorService`` (real Kafka source and sinks) consumes them on a simulated clock, then read the alerts
back from the alerts topic. Also used by ``bench/monitor.py``.
"""

from __future__ import annotations

import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from monitoring.service import MonitorService
from monitoring.settings import MonitorSettings
from monitoring.simulate import Phase, SimClock, Stream, encode
from service.wire import StatsMessage


def unique(prefix: str) -> str:
    return f"{prefix}.{uuid.uuid4().hex[:10]}"


def wall_clock_monitor_env(bootstrap: str, stats: str, alerts: str, metrics_port: int, **extra: str) -> dict[str, str]:
    """Environment for a real ``python -m monitoring`` process on wall-clock time, with windows and pending
    times short enough for a test (10 s / 1 min windows, 1 s buckets and evaluation); ``extra`` adds settings
    (``min_volume="100"`` → ``ZEROPROOF_MIN_VOLUME=100``)."""
    env = dict(
        os.environ,
        ZEROPROOF_KAFKA_BOOTSTRAP=bootstrap,
        ZEROPROOF_STATS_TOPIC=stats,
        ZEROPROOF_ALERTS_TOPIC=alerts,
        ZEROPROOF_METRICS_PORT=str(metrics_port),
        ZEROPROOF_METRICS_HOST="127.0.0.1",
        ZEROPROOF_SHORT_WINDOW="10s",
        ZEROPROOF_LONG_WINDOW="1m",
        ZEROPROOF_BUCKET="1",
        ZEROPROOF_EVAL_INTERVAL="1",
        ZEROPROOF_ALLOWED_LATENESS="1",
        ZEROPROOF_COVERAGE_PENDING="2s",
    )
    env.update({"ZEROPROOF_" + k.upper(): v for k, v in extra.items()})
    return env


def read_topic(
    bootstrap: str, topic: str, idle: float = 1.0, max_wait: float = 30.0, **client: Any
) -> list[dict[str, Any]]:
    """Every record of ``topic`` (all partitions, from the beginning), decoded as JSON, in timestamp order;
    ``client`` adds kafka-python options (TLS)."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50, **client
    )
    out: list[tuple[int, dict[str, Any]]] = []
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + max_wait
        quiet = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet < idle:
            for records in consumer.poll(timeout_ms=200).values():
                quiet = time.monotonic()
                out += [(r.timestamp, orjson.loads(r.value)) for r in records]
    finally:
        consumer.close()
    return [d for _, d in sorted(out, key=lambda x: (x[0], x[1].get("evaluated_at", 0)))]


@dataclass
class RunningMonitor:
    service: MonitorService
    thread: threading.Thread
    stop: threading.Event

    @property
    def records(self) -> int:
        m = self.service.monitor
        return m.counters.records if m else 0

    def close(self, timeout: float = 30.0) -> None:
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "monitor did not stop"


def start_monitor(settings: MonitorSettings, clock: SimClock, ready_timeout: float = 60.0) -> RunningMonitor:
    service = MonitorService(settings, clock=clock, poll_timeout=0.05)
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            service.run(stop)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)
            raise

    thread = threading.Thread(target=target, name="monitor", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not service.ready.wait(0.1):
        assert not errors, errors
        assert time.monotonic() < deadline, "monitor did not finish its start-up replay"
    return RunningMonitor(service, thread, stop)


@dataclass
class Publisher:
    """Publishes stats in event-time order and moves the simulated clock along with what is on the broker."""

    bootstrap: str
    topic: str
    clock: SimClock
    sent: int = 0
    newest: float = 0.0
    messages: list[StatsMessage] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.producer = KafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5, batch_size=256 * 1024)

    def publish(
        self,
        events: Iterable[tuple[float, str, StatsMessage]],
        monitor: RunningMonitor | None = None,
        chunk: float = 30.0,
        on_chunk: Callable[[float], None] | None = None,
    ) -> None:
        """Send ``events``; every ``chunk`` simulated seconds (keep it under ``max_clock_skew``) wait until
        ``monitor`` has consumed everything sent, so that it never lags by more than one chunk."""
        next_sync: float | None = None
        for end, worker, msg in events:
            if next_sync is None:
                next_sync = end + chunk
            if end >= next_sync:
                self.sync(monitor)
                if on_chunk:
                    on_chunk(end)
                next_sync = end + chunk
            self.producer.send(self.topic, key=worker.encode(), value=encode(msg))
            self.messages.append(msg)
            self.sent += 1
            self.newest = max(self.newest, end)
        self.sync(monitor)

    def sync(self, monitor: RunningMonitor | None, timeout: float = 60.0) -> None:
        """Flush, wait for the monitor to consume everything, then move the clock to the newest event sent.

        The clock moves only once the monitor has the data: moving it earlier would let "now" run up to a
        chunk ahead of what the monitor has read, which looks like silent workers (in production the clock is
        wall time and the broker delivers within milliseconds).
        """
        self.producer.flush()
        if monitor is not None:
            deadline = time.monotonic() + timeout
            while monitor.records < self.sent:
                assert monitor.thread.is_alive(), "monitor thread died"
                assert time.monotonic() < deadline, f"monitor consumed {monitor.records}/{self.sent}"
                time.sleep(0.01)
        self.clock.set(self.newest)

    def close(self) -> None:
        self.producer.close()


def alerts_for(alerts: Sequence[dict[str, Any]], version: str, rule: str | None = None) -> list[dict[str, Any]]:
    return [a for a in alerts if a["model_version"] == version and (rule is None or a["rule"] == rule)]


#: 2026-01-15, a multiple of every window length used in the tests.
T0 = 1_768_435_200.0


def fast_settings(**overrides: Any) -> MonitorSettings:
    """Short windows so that scenarios take minutes of simulated time, not hours."""
    base: dict[str, Any] = dict(
        short_window=60,
        long_window=600,
        bucket=5,
        eval_interval=5,
        allowed_lateness=5,
        coverage_pending=30,
        gap_pending=30,
        bottom_rise_pending=30,
        clear_for=30,
        no_data_after=60,
        min_volume=200,
        baseline_min_volume=1000,
    )
    base.update(overrides)
    return MonitorSettings(**base)


HOURS = 12.0


def drifting(bottom: float, bottom_amp: float, gap: float, gap_amp: float, hours: float) -> list[Phase]:
    """Rates following a 2-hour sine, stepped every 10 minutes."""
    step, period = 600.0, 7200.0
    return [
        Phase(
            i * step,
            bottom + bottom_amp * math.sin(2 * math.pi * i * step / period),
            gap + gap_amp * math.cos(2 * math.pi * i * step / period),
        )
        for i in range(int(hours * 3600 / step) + 1)
    ]


def steady_streams(hours: float) -> list[Stream]:
    return [
        Stream("main", drifting(0.01, 0.005, 0.015, 0.005, hours), workers=8, batch=500, period=5.0),
        Stream("canary", drifting(0.005, 0.002, 0.01, 0.003, hours), workers=1, batch=5, period=5.0),
    ]
