"""The monitor: consume ``zeroproof.stats``, keep event-time windows, evaluate rules, send alerts.

Time. Windows and rate rules run on *event time*: the batches' own ``window_end``. Evaluation ticks are the
multiples of ``eval_interval``; tick ``t`` is evaluated once every active worker has reported past
``t + allowed_lateness`` (per-worker watermarks, see ``Monitor.watermark``), so that batches which other
partitions deliver later still count. The same data therefore gives the same alerts whether it is consumed
live, replayed after a restart, or replayed at 1000x speed in a test. Only "no data" needs a clock that
runs when nothing arrives: the injectable ``clock`` (wall time by default) is compared with the newest event
time, and only while the consumer has nothing left to read.

Restart. The monitor keeps no local state and joins no consumer group (every replica must see every
worker's stats): it reads the stats topic from the start of the long window (``offsets_for_times``, or from
the beginning where the broker cannot answer that) and replays it with its sinks muted, then reconciles with
the last event per alert read back from the alerts topic: an alert announced as firing stays firing (no
false resolve, no second ``firing``); one that started while the monitor was down is announced once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
import structlog
from pydantic import ValidationError

from monitoring.exporter import Exporter, Snapshot
from monitoring.rules import NO_DATA, Alert, RuleEngine, State
from monitoring.settings import MonitorSettings
from monitoring.sinks import AlertmanagerSink, AlertSink, KafkaAlertSink, LogSink
from monitoring.windows import ALL, WindowStore
from service.wire import StatsMessage

log = structlog.get_logger("zeroproof.monitor")
Clock = Callable[[], float]
#: Real seconds without a record after which a lagging worker counts as idle (not merely behind on the consumer).
_IDLE_WALL = 2.0


def _valid(msg: StatsMessage) -> str | None:
    """Reasons a parsed stats message cannot be counted (schema-valid but nonsensical)."""
    if not (math.isfinite(msg.window_end) and math.isfinite(msg.window_start)):
        return "non-finite window"
    c = msg.counts
    if min(c.total, c.bottom, c.gap, c.fallback, c.rejected, msg.dlq) < 0:
        return "negative count"
    if c.bottom + c.gap > c.total:
        return "bottom + gap > total"
    return None


class Monitor:
    """Transport-free core: ``ingest`` raw stats records, ``wall_tick`` regularly, alerts go to ``sinks``."""

    def __init__(
        self,
        settings: MonitorSettings,
        sinks: Sequence[AlertSink],
        clock: Clock = time.time,
        exporter: Exporter | None = None,
        announced: dict[str, Alert] | None = None,
        monotonic: Clock = time.monotonic,
    ) -> None:
        self.s = settings
        self.monotonic = monotonic
        self.sinks = list(sinks)
        self.clock = clock
        self.exporter = exporter or Exporter()
        self.counters = self.exporter.collector.counters
        self.started_at = clock()
        # Horizon: the long window plus what may still arrive late or be ahead of the evaluated tick.
        self.horizon = settings.long_window + settings.allowed_lateness + settings.eval_interval + settings.bucket
        self.store = WindowStore(settings.bucket, self.horizon, settings.monitor_label, settings.max_series_labels)
        self.engine = RuleEngine(settings)
        self.announced: dict[str, Alert] = dict(announced or {})
        self.replaying = True
        self.next_tick: float | None = None
        self.last_event: float | None = None
        self.emitted: list[Alert] = []
        self._dirty_at: float | None = None
        self._last_forget = -math.inf
        # worker_id → [newest window_end, monotonic time of its last record]: the per-worker watermarks.
        self._workers: dict[str, list[float]] = {}

    # -- input --------------------------------------------------------------------------------------------
    def ingest(self, raw: bytes) -> bool:
        """Count one stats record; malformed or out-of-range records are counted and skipped, never raised."""
        self.counters.records += 1
        try:
            msg = StatsMessage.model_validate_json(raw)
        except (ValidationError, ValueError) as exc:
            self._malformed(f"invalid: {str(exc).splitlines()[0][:200]}")
            return False
        reason = _valid(msg)
        now = self.clock()
        if reason is None and msg.window_end > now + self.s.max_clock_skew:
            reason = f"window_end {msg.window_end:.0f} is more than {self.s.max_clock_skew:g}s in the future"
        if reason is not None:
            self._malformed(reason)
            return False
        if self.last_event is None or msg.window_end > self.last_event:
            self.last_event = msg.window_end
        w = self._workers.get(msg.worker_id)
        if w is None:
            self._workers[msg.worker_id] = [msg.window_end, self.monotonic()]
        else:
            w[0] = max(w[0], msg.window_end)
            w[1] = self.monotonic()
        if msg.window_end < now - self.horizon or not self.store.add(msg):
            self.counters.late += 1
            return False
        self.counters.watermark = self.store.watermark
        self._advance()
        return True

    def _malformed(self, reason: str) -> None:
        self.counters.malformed += 1
        n = self.counters.malformed
        if n <= 10 or n % 1000 == 0:
            log.warning("skipping malformed stats record", reason=reason, malformed_total=n)

    # -- evaluation ---------------------------------------------------------------------------------------
    def watermark(self) -> float | None:
        """Event time up to which every worker has reported (or provably has nothing to report).

        Stats of different workers sit on different partitions, and a consumer catching up may receive one
        partition many seconds of event time ahead of another; evaluating on the newest event time would judge
        windows that still miss other workers' batches, and the result would depend on fetch interleaving.
        So the watermark is the minimum over workers, where a worker's own watermark is its newest
        ``window_end`` plus the real time since its last record (less ``allowed_lateness`` for delivery
        jitter): a live worker that had no traffic for 30 s has published nothing newer, and must not hold
        evaluation back for 30 s. A worker more than ``worker_idle_after`` behind the newest one that has sent
        nothing for a couple of seconds is gone (stopped, scaled down, or long past in a replay).
        """
        if not self._workers:
            return None
        newest = max(w[0] for w in self._workers.values())
        now = self.monotonic()
        idle_after, slack = self.s.worker_idle_after, self.s.allowed_lateness
        marks = [
            wm + max(0.0, now - seen - slack)
            for wm, seen in self._workers.values()
            if newest - wm <= idle_after or now - seen < _IDLE_WALL
        ]
        return min(min(marks), newest) if marks else newest

    def _advance(self) -> None:
        newest = self.store.watermark
        if newest is None:
            return
        step = self.s.eval_interval
        if self.next_tick is not None and newest - self.s.allowed_lateness < self.next_tick:
            return  # fast path: not even the newest worker is past the next tick
        wm = self.watermark()
        if wm is None:
            return
        due = wm - self.s.allowed_lateness
        if self.next_tick is None:
            self.next_tick = math.ceil(due / step) * step
        if due - self.next_tick > self.horizon:
            # A jump over more than the horizon (silence, or a first replay): the skipped ticks see empty
            # windows, which can only reset pending alerts; evaluate one of them so that happens, then skip.
            self._evaluate(self.next_tick)
            self.next_tick = math.floor((due - self.horizon) / step) * step
        while self.next_tick <= due:
            self._evaluate(self.next_tick)
            self.next_tick += step

    def _evaluate(self, t: float) -> None:
        self.counters.evaluations += 1
        self._publish(self.engine.evaluate(self.store, t))
        self._dirty_at = t
        if t - self._last_forget >= self.s.long_window / 4:
            self._last_forget = t
            for version in self.store.forget_idle(t):
                self._publish(self.engine.retire(version, t))
            for worker in [k for k, w in self._workers.items() if w[0] < t - self.horizon]:
                del self._workers[worker]

    def wall_tick(self, caught_up: bool = True) -> None:
        """Call after each poll: "no data", webhook re-sends, exporter snapshot.

        ``caught_up``: the last poll found nothing left to read. "No data" is judged only then, so a monitor
        that lags behind a busy topic does not mistake its own lag for silent workers.
        """
        self._advance()  # a worker that went idle may release evaluation
        now = self.clock()
        last = self.last_event if self.last_event is not None else self.started_at
        self.counters.seconds_since_data = max(0.0, now - last)
        self.counters.replaying = self.replaying
        if not self.replaying and (caught_up or now - last <= self.s.no_data_after):
            self._publish(self.engine.evaluate_no_data(last, now))
        for sink in self.sinks:
            sink.tick(now)
        if self._dirty_at is not None and not self.replaying:
            self.exporter.collector.update(self.snapshot(self._dirty_at))
            self._dirty_at = None

    def finish_replay(self) -> None:
        """End of the rebuild: reconcile the replayed alert states with what was announced before."""
        if not self.replaying:
            return
        self.replaying = False
        for alert in self.announced.values():
            if alert.state != "firing":
                continue
            tr = self.engine.tracker(alert.rule, alert.model_version)
            if tr.state is not State.FIRING:
                tr.adopt(alert)  # resolve only once the clear level is seen again, by normal evaluation
            else:
                tr.pending_since, tr.fired_at = alert.started_at, alert.fired_at
        still_firing = [
            a
            for a in self.announced.values()
            if a.state == "firing" and self.engine.tracker(a.rule, a.model_version).state is State.FIRING
        ]
        for sink in self.sinks:
            sink.restore(still_firing)
        for tr in self.engine.firing():
            key = f"{tr.rule}/{tr.model_version}"
            prev = self.announced.get(key)
            if (prev is None or prev.state != "firing") and tr.last is not None:
                assert tr.pending_since is not None
                assert tr.fired_at is not None
                now = tr.fired_at if self.next_tick is None else self.next_tick - self.s.eval_interval
                self._publish(
                    [
                        self.engine.make_alert(
                            tr, "firing", tr.last, now, tr.window, tr.window_s, tr.pending_since, tr.fired_at
                        )
                    ]
                )
        log.info(
            "state rebuilt",
            records=self.counters.records,
            event_time=self.store.watermark,
            firing=[f"{t.rule}/{t.model_version}" for t in self.engine.firing()],
        )
        self.wall_tick()

    def _publish(self, alerts: list[Alert]) -> None:
        if self.replaying:
            return
        for alert in alerts:
            prev = self.announced.get(alert.key)
            was_firing = prev is not None and prev.state == "firing"
            if (alert.state == "firing") == was_firing:
                continue  # dedup: one firing per incident, one resolved after it
            self.announced[alert.key] = alert
            self.emitted.append(alert)
            k = (alert.rule, alert.state)
            self.counters.alerts[k] = self.counters.alerts.get(k, 0) + 1
            for sink in self.sinks:
                sink.emit(alert)

    def snapshot(self, t: float) -> Snapshot:
        s = self.s
        windows = {}
        for key in self.store.series():
            windows[(key, "short")] = self.store.window(key, t, s.short_window)
            windows[(key, "long")] = self.store.window(key, t, s.long_window)
            if key.kind == ALL:
                windows[(key, "baseline")] = self.store.window(key, t, s.baseline_window, offset=s.short_window)
        states = {(r, v): int(tr.state) for (r, v), tr in self.engine.trackers.items()}
        return Snapshot(
            evaluated_at=t,
            windows=windows,
            live_thresholds=dict(self.store.live_thresholds),
            alert_states=states,
            label_name=s.monitor_label or "",
        )

    def firing_keys(self) -> list[str]:
        return sorted(f"{t.rule}/{t.model_version}" for t in self.engine.firing())


# -- Kafka transport ---------------------------------------------------------------------------------------
def _consumer(settings: MonitorSettings, suffix: str, **extra: Any) -> Any:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        **settings.kafka_python_client(),
        group_id=None,
        enable_auto_commit=False,
        client_id=f"{settings.group_id}-{suffix}",
        fetch_max_wait_ms=50,
        request_timeout_ms=int(settings.kafka_timeout * 1000),
        bootstrap_timeout_ms=int(settings.kafka_timeout * 1000),
        **extra,
    )


def read_announced(settings: MonitorSettings, idle: float = 1.0, max_wait: float = 60.0) -> dict[str, Alert]:
    """The last event per ``rule/model_version`` on the alerts topic: what earlier instances announced."""
    from kafka import TopicPartition

    consumer = _consumer(settings, "alerts-reader")
    last: dict[str, Alert] = {}
    try:
        parts = consumer.partitions_for_topic(settings.alerts_topic)
        if not parts:
            return last
        tps = [TopicPartition(settings.alerts_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + max_wait
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < idle:
            batch = consumer.poll(timeout_ms=200, max_records=5000)
            for records in batch.values():
                quiet_since = time.monotonic()
                for rec in records:
                    try:
                        alert = Alert.from_dict(orjson.loads(rec.value))
                    except (ValueError, KeyError, TypeError):
                        continue
                    last[alert.key] = alert
    finally:
        consumer.close()
    return last


class KafkaStatsSource:
    """All partitions of the stats topic by manual assignment, starting at ``since`` (epoch seconds)."""

    def __init__(self, settings: MonitorSettings, since: float) -> None:
        self.s = settings
        self.since = since
        self.consumer = _consumer(
            settings,
            "stats",
            max_partition_fetch_bytes=8 * 1024 * 1024,
            fetch_max_bytes=64 * 1024 * 1024,
            receive_buffer_bytes=4 * 1024 * 1024,
        )
        self.assigned: set[int] = set()
        self._next_refresh = 0.0
        self.refresh()

    def refresh(self) -> None:
        """Assign partitions that appeared since the last look (the topic may not exist yet at start)."""
        from kafka import TopicPartition

        self._next_refresh = time.monotonic() + (10.0 if self.assigned else 1.0)
        parts = self.consumer.partitions_for_topic(self.s.stats_topic) or set()
        new = set(parts) - self.assigned
        if not new:
            return
        topic = self.s.stats_topic
        old = {TopicPartition(topic, p): self.consumer.position(TopicPartition(topic, p)) for p in self.assigned}
        fresh = [TopicPartition(topic, p) for p in sorted(new)]
        self.consumer.assign(list(old) + fresh)
        for tp, pos in old.items():
            self.consumer.seek(tp, pos)
        try:
            found = self.consumer.offsets_for_times({tp: int(self.since * 1000) for tp in fresh})
        except Exception:  # brokers without timestamp lookup: read everything, old records are skipped
            found = {}
        for tp in fresh:
            hit = found.get(tp)
            if hit is None and tp in found:
                self.consumer.seek_to_end(tp)
            elif hit is None:
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek(tp, hit.offset)
        self.assigned |= new
        log.info("stats partitions assigned", topic=topic, partitions=sorted(self.assigned))

    def poll(self, timeout: float) -> list[bytes]:
        if time.monotonic() >= self._next_refresh:
            self.refresh()
        if not self.assigned:
            time.sleep(timeout)
            return []
        batch = self.consumer.poll(timeout_ms=int(timeout * 1000), max_records=5000)
        return [rec.value for records in batch.values() for rec in records]

    def close(self) -> None:
        self.consumer.close()


def build_sinks(settings: MonitorSettings, clock: Clock) -> list[AlertSink]:
    sinks: list[AlertSink] = [
        LogSink(),
        KafkaAlertSink(
            settings.kafka_python_client(),
            settings.alerts_topic,
            settings.group_id,
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


class MonitorService:
    """Wires the core to Kafka, the sinks and the exporter; ``run`` until ``stop`` is set."""

    def __init__(
        self,
        settings: MonitorSettings,
        clock: Clock = time.time,
        sinks: Sequence[AlertSink] | None = None,
        exporter: Exporter | None = None,
        poll_timeout: float = 0.2,
    ) -> None:
        self.s = settings
        self.clock = clock
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
        announced = read_announced(s)
        monitor = self.monitor = Monitor(s, self.sinks, self.clock, self.exporter, announced)
        since = monitor.started_at - monitor.horizon - s.allowed_lateness
        source = KafkaStatsSource(s, since)
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


__all__ = ["NO_DATA", "KafkaStatsSource", "Monitor", "MonitorService", "build_sinks", "read_announced"]
