"""Prometheus exporter: the windowed rates and alert states of the latest evaluation.

A custom collector renders an immutable snapshot built at each evaluation, so series of retired model
versions or label values disappear instead of lingering as stale gauges, and a scrape never sees half an
evaluation.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from monitoring.windows import ALL, LABEL, SHADOW, SeriesKey, WindowCounts

PREFIX = "zeroproof_monitor_"
#: (metric suffix, help) for the per-model-version rates; label and shadow series export subsets.
RATES: tuple[tuple[str, str], ...] = (
    ("coverage", "1 - bottom_rate - gap_rate over the window: share of predictions accepted as they are"),
    ("bottom_rate", "share of predictions whose status is bottom (no value)"),
    ("gap_rate", "share of predictions in the gap (finite but risky)"),
    ("fallback_rate", "share of predictions served by a fallback controller"),
    ("rejected_rate", "share of predictions rejected"),
    ("dlq_rate", "share of incoming messages sent to the DLQ"),
    ("element_bottom_rate", "share of output elements that are bottom"),
    ("element_gap_rate", "share of output elements in the gap"),
    ("throughput", "predictions per second over the window"),
)
LABEL_RATES = ("coverage", "bottom_rate", "gap_rate", "fallback_rate", "throughput")
SHADOW_RATES = ("coverage", "bottom_rate", "gap_rate")


@dataclass(frozen=True)
class Snapshot:
    """What one evaluation saw. ``windows``: (series, window name) → counts."""

    evaluated_at: float | None = None
    windows: dict[tuple[SeriesKey, str], WindowCounts] = field(default_factory=dict)
    live_thresholds: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    alert_states: dict[tuple[str, str], int] = field(default_factory=dict)
    label_name: str = ""


@dataclass
class Counters:
    records: int = 0
    malformed: int = 0
    late: int = 0
    evaluations: int = 0
    alerts: dict[tuple[str, str], int] = field(default_factory=dict)
    watermark: float | None = None
    seconds_since_data: float | None = None
    replaying: bool = True


class MonitorCollector(Collector):
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.snapshot = Snapshot()
        self.counters = Counters()

    def update(self, snapshot: Snapshot) -> None:
        with self._lock:
            self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap, c = self.snapshot, self.counters
        yield from self._rates(snap)
        states = GaugeMetricFamily(
            PREFIX + "alert_state", "0 inactive, 1 pending, 2 firing", labels=["rule", "model_version"]
        )
        firing = GaugeMetricFamily(PREFIX + "alert_firing", "1 while the alert fires", labels=["rule", "model_version"])
        for (rule, version), st in sorted(snap.alert_states.items()):
            states.add_metric([rule, version], float(st))
            firing.add_metric([rule, version], 1.0 if st == 2 else 0.0)
        yield states
        yield firing
        live = GaugeMetricFamily(
            PREFIX + "live_thresholds",
            "thresholds the workers act on (1 per pair)",
            labels=["model_version", "tau_infer", "tau_train"],
        )
        for version, (ti, tt) in sorted(snap.live_thresholds.items()):
            live.add_metric([version, f"{ti:g}", "none" if tt is None else f"{tt:g}"], 1.0)
        yield live
        yield CounterMetricFamily(PREFIX + "stats_records", "stats messages consumed", value=c.records)
        yield CounterMetricFamily(PREFIX + "stats_malformed", "stats messages skipped as malformed", value=c.malformed)
        yield CounterMetricFamily(PREFIX + "stats_late", "stats messages older than the long window", value=c.late)
        yield CounterMetricFamily(PREFIX + "evaluations", "rule evaluations (event-time ticks)", value=c.evaluations)
        alerts = CounterMetricFamily(PREFIX + "alerts", "alert events emitted", labels=["rule", "state"])
        for (rule, state), n in sorted(c.alerts.items()):
            alerts.add_metric([rule, state], n)
        yield alerts
        if c.watermark is not None:
            yield GaugeMetricFamily(PREFIX + "event_time_seconds", "newest stats window_end seen", value=c.watermark)
        if c.seconds_since_data is not None:
            yield GaugeMetricFamily(
                PREFIX + "seconds_since_data", "wall time since the newest stats event", value=c.seconds_since_data
            )
        yield GaugeMetricFamily(PREFIX + "replaying", "1 while rebuilding state after start", value=float(c.replaying))
        if snap.evaluated_at is not None:
            yield GaugeMetricFamily(
                PREFIX + "last_evaluation_timestamp_seconds",
                "event time of the last evaluation",
                value=snap.evaluated_at,
            )

    def _rates(self, snap: Snapshot) -> Iterable[Metric]:
        volume = GaugeMetricFamily(
            PREFIX + "predictions", "predictions in the window", labels=["model_version", "window"]
        )
        fams = {name: GaugeMetricFamily(PREFIX + name, doc, labels=["model_version", "window"]) for name, doc in RATES}
        lvol = GaugeMetricFamily(
            PREFIX + "label_predictions",
            "predictions in the window, per label value",
            labels=["model_version", "window", "label", "value"],
        )
        lfams = {
            name: GaugeMetricFamily(
                PREFIX + "label_" + name,
                f"{name} per value of the monitored input label",
                labels=["model_version", "window", "label", "value"],
            )
            for name in LABEL_RATES
        }
        svol = GaugeMetricFamily(
            PREFIX + "shadow_predictions",
            "predictions in the window seen by the shadow thresholds",
            labels=["model_version", "window", "tau_infer", "tau_train"],
        )
        sfams = {
            name: GaugeMetricFamily(
                PREFIX + "shadow_" + name,
                f"{name} the shadow (candidate) thresholds would give",
                labels=["model_version", "window", "tau_infer", "tau_train"],
            )
            for name in SHADOW_RATES
        }
        for (key, window), w in sorted(
            snap.windows.items(), key=lambda kv: (kv[0][0].model_version, kv[0][0].kind, kv[0][0].value, kv[0][1])
        ):
            if key.kind == ALL:
                volume.add_metric([key.model_version, window], w.total)
                names = [n for n, _ in RATES] if window != "baseline" else ["bottom_rate", "coverage", "gap_rate"]
                for name in names:
                    v = getattr(w, name)
                    if v is not None:
                        fams[name].add_metric([key.model_version, window], v)
            elif key.kind == LABEL:
                label_name = snap.label_name
                lvol.add_metric([key.model_version, window, label_name, key.value], w.total)
                for name in LABEL_RATES:
                    v = getattr(w, name)
                    if v is not None:
                        lfams[name].add_metric([key.model_version, window, label_name, key.value], v)
            elif key.kind == SHADOW:
                ti, _, tt = key.value.partition(":")
                svol.add_metric([key.model_version, window, ti, tt], w.total)
                for name in SHADOW_RATES:
                    v = getattr(w, name)
                    if v is not None:
                        sfams[name].add_metric([key.model_version, window, ti, tt], v)
        yield volume
        yield from fams.values()
        yield lvol
        yield from lfams.values()
        yield svol
        yield from sfams.values()


class Exporter:
    """Owns the registry and, when ``port`` > 0, the HTTP endpoint."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.collector = MonitorCollector()
        self.registry.register(self.collector)
        self._server: object | None = None

    def start(self, port: int, host: str = "0.0.0.0") -> int:
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        return int(server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            shutdown = getattr(self._server, "shutdown", None)
            if shutdown is not None:
                shutdown()
            self._server = None
