"""``MonitorService``: the core (``monitoring.core``) wired to a stats source, the sinks and the exporter.

The Kafka plumbing is in ``monitoring.sources`` (the stats source, the announced alerts) and ``monitoring.sinks``;
tests and embedders hand the service an in-memory source and sinks instead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from monitoring.core import Clock, Monitor
from monitoring.exporter import Exporter
from monitoring.rules import Alert
from monitoring.settings import MonitorSettings
from monitoring.sinks import AlertmanagerSink, AlertSink, KafkaAlertSink, LogSink
from monitoring.sources import KafkaStatsSource, StatsSource, read_announced

log = structlog.get_logger("zeroproof.monitor")


def build_sinks(settings: MonitorSettings, clock: Clock) -> list[AlertSink]:
    sinks: list[AlertSink] = [
        LogSink(),
        KafkaAlertSink(
            settings.kafka_python_client(),
            settings.alerts_topic,
            settings.monitor_client_id,
            settings.kafka_timeout,
            settings.producer_compression,
        ),
    ]
    endpoint = settings.alertmanager_endpoint()
    if endpoint:
        sinks.append(
            AlertmanagerSink(
                endpoint,
                settings.alertmanager_resend,
                settings.alertmanager_timeout,
                clock,
                headers=settings.alertmanager_headers(),
                ssl_context=settings.alertmanager_ssl_context(),
            )
        )
    return sinks


#: Makes the stats source once the core knows from when to read (epoch seconds).
SourceFactory = Callable[[MonitorSettings, float], StatsSource]


class MonitorService:
    """Wires the core to a stats source, the sinks and the exporter; ``run`` until ``stop`` is set.

    Defaults are the production ones (Kafka stats source, alerts read back from the alerts topic, the log, Kafka
    and Alertmanager sinks); each can be replaced (``MemoryStatsSource``, an ``announced`` mapping, list sinks)."""

    def __init__(
        self,
        settings: MonitorSettings,
        clock: Clock = time.time,
        sinks: Sequence[AlertSink] | None = None,
        exporter: Exporter | None = None,
        poll_timeout: float = 0.2,
        source: SourceFactory = KafkaStatsSource,
        announced: Callable[[MonitorSettings], Mapping[str, Alert]] = read_announced,
    ) -> None:
        self.s = settings
        self.clock = clock
        self.source_factory = source
        self.read_announced = announced
        self.sinks = list(sinks) if sinks is not None else build_sinks(settings, clock)
        self.exporter = exporter or Exporter()
        self.poll_timeout = poll_timeout
        self.monitor: Monitor | None = None
        self.metrics_port: int | None = None
        self.ready = threading.Event()

    def run(self, stop: threading.Event) -> None:
        s = self.s
        if s.metrics_port:
            self.metrics_port = self.exporter.start(s.metrics_port, s.metrics_host)
            log.info("metrics endpoint up", port=self.metrics_port)
        announced = dict(self.read_announced(s))
        monitor = self.monitor = Monitor(s, self.sinks, self.clock, self.exporter, announced)
        since = monitor.started_at - monitor.horizon - s.allowed_lateness
        source = self.source_factory(s, since)
        log.info(
            "monitor started",
            stats_topic=s.stats_topic,
            alerts_topic=s.alerts_topic,
            announced_firing=sorted(k for k, a in announced.items() if a.state == "firing"),
        )
        empty_polls = 0
        try:
            while not stop.is_set():
                records = source.poll(self.poll_timeout)
                for raw in records:
                    monitor.ingest(raw)
                if monitor.replaying:
                    empty_polls = 0 if records else empty_polls + 1
                    caught_up = (
                        monitor.last_event is not None and monitor.last_event >= self.clock() - s.allowed_lateness
                    )
                    if caught_up or empty_polls >= 2:
                        monitor.finish_replay()
                        self.ready.set()
                monitor.wall_tick(caught_up=not records)
        finally:
            source.close()
            for sink in self.sinks:
                sink.close()
            self.exporter.stop()
            log.info("monitor stopped", records=monitor.counters.records, alerts=len(monitor.emitted))

    def firing(self) -> list[str]:
        return self.monitor.firing_keys() if self.monitor else []


__all__ = ["MonitorService", "SourceFactory", "build_sinks"]
