"""What the overview shows from Kafka: the monitor's windows over the stats topic, alerts, DLQ counts.

:class:`OverviewCore` is transport-free (tests feed it bytes). Its rates come from ``monitoring.core.Monitor``
itself, fed the same stats records from the same start (the long window before start-up, as the monitor replays
it), and are read at the monitor's last evaluated tick: the console's numbers are the monitor's numbers, not a
second implementation that could drift. :class:`KafkaFeeds` is the thread that feeds it from the broker.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from console.settings import ConsoleSettings
from monitoring.core import Monitor
from monitoring.rules import Alert
from monitoring.settings import MonitorSettings
from monitoring.windows import ALL, SeriesKey, WindowCounts, WindowStore
from service import secrets
from service.wire import StatsMessage

log = structlog.get_logger("zeroproof.console")
Clock = Callable[[], float]
#: Points of the overview chart (each one window of the chart store's buckets).
CHART_POINTS = 120
#: Resolved alerts kept for the overview, newest first.
MAX_RESOLVED = 50


@dataclass(frozen=True)
class ChartPoint:
    end: float
    coverage: float | None
    gap_rate: float | None
    bottom_rate: float | None
    total: int


@dataclass(frozen=True)
class VersionView:
    model_version: str
    tau_infer: float | None
    tau_train: float | None
    short: WindowCounts
    long: WindowCounts
    chart: list[ChartPoint]


@dataclass(frozen=True)
class OverviewData:
    """One consistent read of the overview state (taken under the core's lock)."""

    evaluated_at: float | None
    short_window: float
    long_window: float
    chart_window: float
    versions: list[VersionView]
    firing: list[Alert]
    resolved: list[Alert]
    dlq_total: dict[str, int]
    dlq_recent: dict[str, int]
    stats_records: int
    malformed: int
    caught_up: bool
    error: str | None = None
    connected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def dlq_reason(raw: bytes) -> str:
    """The DLQ record's reason, without its detail after ``:``; ``unreadable`` for a record we cannot parse."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "unreadable"
    reason = doc.get("reason") if isinstance(doc, dict) else None
    return str(reason).split(":")[0][:64] if reason else "unknown"


class OverviewCore:
    """The monitor core (rates, windows) plus a one-hour chart store, the alerts and the DLQ counts."""

    def __init__(
        self,
        monitor_settings: MonitorSettings,
        chart_window: float = 3600.0,
        clock: Clock = time.time,
        recent: float | None = None,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.ms = monitor_settings
        self.clock = clock
        self.lock = threading.Lock()
        # No sinks and never out of "replay": the console reads alerts from the alerts topic, it never emits any.
        self.monitor = Monitor(monitor_settings, sinks=[], clock=clock, monotonic=monotonic)
        self.chart_window = chart_window
        self.chart = WindowStore(monitor_settings.bucket, chart_window + 2 * monitor_settings.bucket)
        self.recent = recent if recent is not None else chart_window
        self.alerts: dict[str, Alert] = {}
        self.resolved: list[Alert] = []
        self.dlq_total: Counter[str] = Counter()
        self._dlq_minutes: dict[int, Counter[str]] = {}
        self.caught_up = False
        self._first_seen: dict[str, float] = {}

    @property
    def since(self) -> float:
        """Where a (re)start reads the stats topic from: the monitor's replay start, or the chart's if earlier."""
        replay = self.monitor.started_at - self.monitor.horizon - self.ms.allowed_lateness
        return min(replay, self.monitor.started_at - self.chart_window)

    # -- input -----------------------------------------------------------------------------------------------
    def ingest_stats(self, raw: bytes) -> None:
        with self.lock:
            self.monitor.ingest(raw)
            try:
                msg = StatsMessage.model_validate_json(raw)
            except (ValidationError, ValueError):
                return  # counted as malformed by the monitor core
            if math.isfinite(msg.window_end) and self.chart.add(msg):
                seen = self._first_seen.get(msg.model_version)
                if seen is None or msg.window_end < seen:
                    self._first_seen[msg.model_version] = msg.window_end

    def ingest_alert(self, raw: bytes) -> None:
        try:
            alert = Alert.from_dict(orjson.loads(raw))
        except (ValueError, KeyError, TypeError):
            return
        with self.lock:
            prev = self.alerts.get(alert.key)
            if prev is not None and prev.evaluated_at > alert.evaluated_at:
                return
            self.alerts[alert.key] = alert
            if alert.state == "resolved":
                self.resolved = [a for a in self.resolved if a.alert_id != alert.alert_id]
                self.resolved.insert(0, alert)
                del self.resolved[MAX_RESOLVED:]

    def ingest_dlq(self, raw: bytes, timestamp_ms: int | None) -> None:
        reason = dlq_reason(raw)
        with self.lock:
            self.dlq_total[reason] += 1
            if timestamp_ms is not None and timestamp_ms > 0:
                minute = int(timestamp_ms // 60_000)
                self._dlq_minutes.setdefault(minute, Counter())[reason] += 1

    def tick(self, caught_up: bool) -> None:
        """After each poll: let the monitor core evaluate what became due (its watermark logic decides)."""
        with self.lock:
            self.monitor.wall_tick(caught_up=caught_up)
            if caught_up:
                self.caught_up = True
            oldest = int((self.clock() - self.recent) // 60)
            for minute in [m for m in self._dlq_minutes if m < oldest]:
                del self._dlq_minutes[minute]

    # -- output ----------------------------------------------------------------------------------------------
    def evaluated_at(self) -> float | None:
        """The monitor's last evaluated tick: its exporter publishes the windows ending there."""
        nxt = self.monitor.next_tick
        return None if nxt is None else nxt - self.ms.eval_interval

    def _chart(self, version: str, end: float) -> list[ChartPoint]:
        first = self._first_seen.get(version)
        if first is None:
            return []
        bucket = self.chart.bucket
        start = max(end - self.chart_window, math.floor(first / bucket) * bucket)
        width = max(bucket, math.ceil((end - start) / CHART_POINTS / bucket) * bucket)
        points: list[ChartPoint] = []
        t = end
        while t > start + 1e-9 and len(points) < CHART_POINTS:
            w = self.chart.window(SeriesKey(version), t, width)
            points.append(ChartPoint(t, w.coverage, w.gap_rate, w.bottom_rate, w.total))
            t -= width
        points.reverse()
        return points

    def view(self) -> OverviewData:
        with self.lock:
            t = self.evaluated_at()
            snap = self.monitor.snapshot(t) if t is not None else None
            versions = []
            for version in self.monitor.store.model_versions():
                key = SeriesKey(version, ALL)
                empty = WindowCounts()
                short = snap.windows.get((key, "short"), empty) if snap else empty
                long = snap.windows.get((key, "long"), empty) if snap else empty
                ti, tt = self.monitor.store.live_thresholds.get(version, (None, None))
                # the chart shows everything received, up to the end of the newest batch's bucket (the tables
                # show the monitor's numbers at its last evaluated tick, which may be a bucket or so behind)
                newest = self.chart.watermark if self.chart.watermark is not None else (t or self.clock())
                chart_end = (self.chart.slot(newest) + 1) * self.chart.bucket
                versions.append(VersionView(version, ti, tt, short, long, self._chart(version, chart_end)))
            now = self.clock()
            firing = sorted((a for a in self.alerts.values() if a.state == "firing"), key=lambda a: -a.started_at)
            resolved = [a for a in self.resolved if (a.ended_at or a.evaluated_at) >= now - self.recent]
            recent: Counter[str] = Counter()
            for counts in self._dlq_minutes.values():
                recent.update(counts)
            return OverviewData(
                evaluated_at=t,
                short_window=self.ms.short_window,
                long_window=self.ms.long_window,
                chart_window=self.chart_window,
                versions=versions,
                firing=firing,
                resolved=resolved,
                dlq_total=dict(self.dlq_total.most_common()),
                dlq_recent=dict(recent.most_common()),
                stats_records=self.monitor.counters.records,
                malformed=self.monitor.counters.malformed,
                caught_up=self.caught_up,
            )


class _EventsSource:
    """Every partition of the alerts and DLQ topics from the beginning, by manual assignment (no group: each
    console sees everything, and nothing waits for a group join)."""

    def __init__(self, settings: ConsoleSettings) -> None:
        from kafka import KafkaConsumer

        self.topics = (settings.alerts_topic, settings.dlq_topic)
        timeout_ms = int(settings.kafka_timeout * 1000)
        self.consumer = KafkaConsumer(
            **settings.kafka_python_client(),
            group_id=None,
            enable_auto_commit=False,
            client_id="zeroproof-console-events",
            fetch_max_wait_ms=50,
            request_timeout_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
        )
        self.assigned: set[Any] = set()
        self._next_refresh = 0.0

    def refresh(self) -> None:
        from kafka import TopicPartition

        self._next_refresh = time.monotonic() + (10.0 if self.assigned else 1.0)
        found = {TopicPartition(t, p) for t in self.topics for p in self.consumer.partitions_for_topic(t) or ()}
        new = found - self.assigned
        if not new:
            return
        positions = {tp: self.consumer.position(tp) for tp in self.assigned}
        self.consumer.assign(sorted(self.assigned | new))
        for tp, pos in positions.items():
            self.consumer.seek(tp, pos)
        self.consumer.seek_to_beginning(*sorted(new))
        self.assigned |= new

    def poll(self) -> list[Any]:
        if time.monotonic() >= self._next_refresh:
            self.refresh()
        if not self.assigned:
            return []
        batch = self.consumer.poll(timeout_ms=0, max_records=5000)
        return [rec for records in batch.values() for rec in records]

    def close(self) -> None:
        self.consumer.close()


class KafkaFeeds(threading.Thread):
    """Feeds an :class:`OverviewCore` from the broker; on an error it starts over with a fresh core (a re-read
    from the replay start must not count twice) after a pause, and the overview says why meanwhile."""

    def __init__(self, settings: ConsoleSettings, poll_timeout: float = 0.2) -> None:
        super().__init__(name="console-kafka", daemon=True)
        self.s = settings
        self.poll_timeout = poll_timeout
        self.stop_event = threading.Event()
        self.core = self._new_core()
        self.error: str | None = None
        self.connected = False

    def _new_core(self) -> OverviewCore:
        return OverviewCore(self.s.monitor_settings(), self.s.console_chart_window)

    def view(self) -> OverviewData:
        data = self.core.view()
        return OverviewData(**{**data.__dict__, "error": self.error, "connected": self.connected})

    def run(self) -> None:
        backoff = 1.0
        while not self.stop_event.is_set():
            try:
                self._follow()
                return
            except Exception as exc:  # the broker is down or refused us: say so on the page, try again
                self.connected = False
                self.error = f"kafka: {secrets.scrub(type(exc).__name__ + ': ' + str(exc))[:300]}"
                log.warning("kafka feed failed; retrying", error=self.error, retry_in_s=backoff)
                self.stop_event.wait(backoff)
                backoff = min(backoff * 2, 30.0)
                self.core = self._new_core()

    def _follow(self) -> None:
        from monitoring.sources import KafkaStatsSource

        core = self.core
        stats = KafkaStatsSource(core.ms, core.since)
        events: _EventsSource | None = None
        try:
            events = _EventsSource(self.s)
            self.connected, self.error = True, None
            log.info("following kafka", stats_topic=self.s.stats_topic, alerts_topic=self.s.alerts_topic)
            while not self.stop_event.is_set():
                records = stats.poll(self.poll_timeout)
                for raw in records:
                    core.ingest_stats(raw)
                for rec in events.poll():
                    if rec.topic == self.s.alerts_topic:
                        core.ingest_alert(rec.value)
                    else:
                        core.ingest_dlq(rec.value, rec.timestamp)
                core.tick(caught_up=not records)
        finally:
            stats.close()
            if events is not None:
                events.close()

    def stop(self) -> None:
        self.stop_event.set()
