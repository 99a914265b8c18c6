"""The overview's numbers are the monitor's: the same stats through the monitor core and through the console's
core give the same windows at the same evaluated tick; alerts and DLQ counts are read as published."""

from __future__ import annotations

import orjson
import pytest

from console.feeds import OverviewCore, dlq_reason
from console.settings import load_settings
from monitoring.exporter import Exporter
from monitoring.rules import Alert
from monitoring.service import Monitor
from monitoring.settings import MonitorSettings
from monitoring.simulate import Phase, SimClock, Stream, encode, generate
from monitoring.windows import SeriesKey

pytestmark = pytest.mark.unit
T0 = 1_768_435_200.0
WINDOWS = {"short_window": 60.0, "long_window": 600.0, "bucket": 5.0, "eval_interval": 5.0, "allowed_lateness": 5.0}


def test_rates_equal_the_monitors_for_the_same_stats() -> None:
    clock = SimClock(T0)
    monitor = Monitor(MonitorSettings(**WINDOWS), [], clock, exporter=Exporter(), monotonic=clock)
    monitor.finish_replay()  # a live monitor: its exporter publishes each evaluation
    console = OverviewCore(load_settings([], **WINDOWS).monitor_settings(), 3600.0, clock=clock, monotonic=clock)
    streams = [
        Stream("v1", [Phase(0, 0.01, 0.01), Phase(400, 0.2, 0.05)], workers=3, batch=40, period=2.0),
        Stream("v2", [Phase(0, 0.05, 0.0)], workers=2, batch=25, period=3.0),
    ]
    checked = 0
    for i, (end, _, msg) in enumerate(generate(streams, T0, 900.0, seed=3)):
        clock.set(end)
        raw = encode(msg)
        monitor.ingest(raw)
        monitor.wall_tick(caught_up=False)
        console.ingest_stats(raw)
        console.tick(caught_up=False)
        if i % 97 == 0 and i:
            published = monitor.exporter.collector.snapshot
            view = console.view()
            assert view.evaluated_at == published.evaluated_at is not None
            for v in view.versions:
                assert v.short == published.windows[(SeriesKey(v.model_version), "short")]
                assert v.long == published.windows[(SeriesKey(v.model_version), "long")]
                checked += 1
    assert checked > 20
    view = console.view()
    assert [v.model_version for v in view.versions] == ["v1", "v2"]
    v1 = view.versions[0]
    assert v1.short.bottom_rate is not None and v1.short.bottom_rate > 0.1  # the fault phase is in the short window
    assert v1.long.total > v1.short.total > 0
    assert v1.chart and len(v1.chart) <= 120 and view.evaluated_at is not None
    assert view.evaluated_at <= v1.chart[-1].end <= view.evaluated_at + 2 * 5.0 + 5.0  # up to the newest bucket
    assert max(p.bottom_rate or 0 for p in v1.chart) > 0.1 > min(p.bottom_rate or 1 for p in v1.chart)


def alert(state: str, started: float, evaluated: float, rule: str = "coverage") -> bytes:
    ended = evaluated if state == "resolved" else None
    a = Alert(rule, state, "v1", 0.8, 0.9, 0.92, "short", 60.0, started, started + 30, evaluated, ended_at=ended)
    return orjson.dumps(a.to_dict())


def test_firing_and_recently_resolved_alerts_with_their_start_times() -> None:
    clock = SimClock(T0 + 10_000)
    core = OverviewCore(load_settings([]).monitor_settings(), 3600.0, clock=clock)
    core.ingest_alert(alert("firing", T0 + 9000, T0 + 9030))
    core.ingest_alert(alert("firing", T0 + 9500, T0 + 9530, rule="gap_rate"))
    core.ingest_alert(alert("resolved", T0 + 9500, T0 + 9900, rule="gap_rate"))
    core.ingest_alert(alert("firing", T0, T0 + 30, rule="bottom_rise"))
    core.ingest_alert(alert("resolved", T0, T0 + 100, rule="bottom_rise"))  # resolved hours ago: not "recent"
    core.ingest_alert(b"not json")
    view = core.view()
    assert [(a.rule, a.started_at) for a in view.firing] == [("coverage", T0 + 9000)]
    assert [(a.rule, a.started_at, a.ended_at) for a in view.resolved] == [("gap_rate", T0 + 9500, T0 + 9900)]


def test_dlq_counts_by_reason_all_and_last_hour() -> None:
    now = T0 + 10_000
    core = OverviewCore(load_settings([]).monitor_settings(), 3600.0, clock=lambda: now)
    dlq = [
        ({"reason": "invalid_json", "detail": "x"}, now - 60),
        ({"reason": "wrong_feature_count: 3 != 4"}, now - 120),
        ({"reason": "invalid_json"}, now - 7200),
    ]
    for doc, t in dlq:
        core.ingest_dlq(orjson.dumps(doc), int(t * 1000))
    core.ingest_dlq(b"\xff", None)
    core.tick(caught_up=True)
    view = core.view()
    assert view.dlq_total == {"invalid_json": 2, "wrong_feature_count": 1, "unreadable": 1}
    assert view.dlq_recent == {"invalid_json": 1, "wrong_feature_count": 1}
    assert dlq_reason(b'{"no_reason": 1}') == "unknown"
