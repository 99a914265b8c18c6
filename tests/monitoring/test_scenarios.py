"""Scenario replays against a real broker, with ground truth computed from the generated data.

One monitor consumes one stats topic carrying several model versions at once; each version is one scenario
(alerts are per rule and model version, so they do not interfere). Settings: 1-minute short window,
10-minute long window, 5 s evaluation, 30 s pending, 30 s clear_for (see ``conftest.fast_settings``).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import pytest

from harness.monitor import T0, Publisher, alerts_for, fast_settings, read_topic, start_monitor, unique
from harness.services import create_topics
from monitoring.rules import BOTTOM_RISE, COVERAGE, GAP, NO_DATA
from monitoring.settings import MonitorSettings
from monitoring.simulate import Phase, SimClock, Stream, generate
from service.wire import StatsMessage
from tests.monitoring.truth import coverage, window_sums

pytestmark = pytest.mark.integration

DURATION = 1500.0
STREAMS = [
    Stream("steady", [Phase(0, 0.005, 0.005)], label="site", label_values=["a", "b"], shadow=True),
    # Coverage 99% → 80% at 600 s → 91% (between threshold 90% and clear level 92%) at 900 s → 99% at 1100 s.
    Stream("drop", [Phase(0, 0.005, 0.005), Phase(600, 0.1, 0.1), Phase(900, 0.045, 0.045), Phase(1100, 0.005, 0.005)]),
    # Coverage square wave 87% / 93%, one minute each: the windowed value crosses 90% every minute.
    Stream("flap", [Phase(i * 60.0, 0.13 if i % 2 else 0.07) for i in range(26)]),
    # ⊥ 0.5% → 5% at 900 s (coverage stays at 95%, above its threshold).
    Stream("rise", [Phase(0, 0.005), Phase(900, 0.05)]),
    # Gap rate 0.5% → 8% at 700 s (coverage 91.5%: above its threshold).
    Stream("gap", [Phase(0, 0.005, 0.005), Phase(700, 0.005, 0.08)]),
    # Terrible, but 30 predictions per minute: below the minimum volume.
    Stream("lowvol", [Phase(0, 0.5)], workers=1, batch=5, period=10.0),
]


@dataclass
class Replay:
    settings: MonitorSettings
    messages: list[StatsMessage]
    alerts: list[dict[str, Any]]
    metrics: str

    @property
    def ticks(self) -> list[float]:
        step = self.settings.eval_interval
        return [T0 + i * step for i in range(int(DURATION / step) + 1)]


@pytest.fixture(scope="module")
def replay(kafka_bootstrap: str) -> Replay:
    from prometheus_client import generate_latest

    stats, alerts = unique("stats"), unique("alerts")
    create_topics(kafka_bootstrap, {stats: 4, alerts: 1})
    s = fast_settings(kafka_bootstrap=kafka_bootstrap, stats_topic=stats, alerts_topic=alerts, monitor_label="site")
    clock = SimClock(T0)
    mon = start_monitor(s, clock)
    pub = Publisher(kafka_bootstrap, stats, clock)
    try:
        pub.publish(generate(STREAMS, T0, DURATION, seed=7), mon)
        metrics = generate_latest(mon.service.exporter.registry).decode()
    finally:
        pub.close()
        mon.close()
    return Replay(s, pub.messages, read_topic(kafka_bootstrap, alerts), metrics)


def first_tick(r: Replay, version: str, pred: Any, after: float = 0.0, length: float | None = None) -> float:
    length = length or r.settings.short_window
    for t in r.ticks:
        c = coverage(r.messages, version, t, length)
        if t >= after and c is not None and pred(c):
            return t
    raise AssertionError("condition never holds in the ground truth")


@pytest.mark.timeout(180)
def test_steady_state_fires_nothing(replay: Replay) -> None:
    assert alerts_for(replay.alerts, "steady") == []


@pytest.mark.timeout(180)
def test_coverage_drop_fires_once_within_pending_plus_one_evaluation(replay: Replay) -> None:
    s = replay.settings
    fired = [a for a in alerts_for(replay.alerts, "drop", COVERAGE) if a["state"] == "firing"]
    assert len(fired) == 1
    t_cross = first_tick(replay, "drop", lambda c: c < s.coverage_threshold)
    assert t_cross >= T0 + 600  # sanity of the ground truth
    latency = fired[0]["fired_at"] - t_cross
    assert s.coverage_pending <= latency <= s.coverage_pending + s.eval_interval
    assert fired[0]["value"] < s.coverage_threshold
    assert fired[0]["threshold"] == s.coverage_threshold
    assert fired[0]["window"] == "1m"
    assert fired[0]["started_at"] == pytest.approx(t_cross, abs=s.eval_interval)


@pytest.mark.timeout(180)
def test_recovery_resolves_only_above_the_clear_level(replay: Replay) -> None:
    s = replay.settings
    events = alerts_for(replay.alerts, "drop", COVERAGE)
    assert [a["state"] for a in events] == ["firing", "resolved"]
    fired, resolved = events
    assert resolved["started_at"] == fired["started_at"]
    # From 900 s to 1100 s the true coverage sits at ~91%: recovered past the threshold, not past the clear
    # level. The alert must hold through it and resolve only after coverage reached 92% for clear_for.
    t_clear = first_tick(replay, "drop", lambda c: c >= s.coverage_clear, after=fired["fired_at"])
    assert t_clear > T0 + 1100
    assert s.clear_for <= resolved["ended_at"] - t_clear <= s.clear_for + s.eval_interval
    assert resolved["value"] >= s.coverage_clear


@pytest.mark.timeout(180)
def test_flapping_around_the_threshold_is_no_alert_storm(replay: Replay) -> None:
    s = replay.settings
    cov = [coverage(replay.messages, "flap", t, s.short_window) for t in replay.ticks[20:]]
    below = [c is not None and c < s.coverage_threshold for c in cov]
    crossings = sum(1 for a, b in itertools.pairwise(below) if a != b)
    assert crossings >= 20  # the ground truth does flap: a threshold-only alert would fire/resolve ~10 times
    events = alerts_for(replay.alerts, "flap")
    assert [(a["rule"], a["state"]) for a in events] == [(COVERAGE, "firing")]


@pytest.mark.timeout(180)
def test_bottom_rate_rise_fires(replay: Replay) -> None:
    s = replay.settings
    events = alerts_for(replay.alerts, "rise")
    assert [(a["rule"], a["state"]) for a in events] == [(BOTTOM_RISE, "firing")]
    # Ground truth: first tick where the short-window ⊥ rate is >= floor and >= factor x trailing baseline.
    t_cross = None
    for t in replay.ticks:
        total, bottom, _ = window_sums(replay.messages, "rise", t, s.short_window)
        btotal, bbottom, _ = window_sums(replay.messages, "rise", t - s.short_window, s.baseline_window)
        if total >= s.min_volume and btotal >= s.baseline_min_volume:
            rate, base = bottom / total, bbottom / btotal
            if rate >= max(s.bottom_rise_floor, s.bottom_rise_factor * base):
                t_cross = t
                break
    assert t_cross is not None
    assert t_cross >= T0 + 900
    assert s.bottom_rise_pending <= events[0]["fired_at"] - t_cross <= s.bottom_rise_pending + s.eval_interval
    assert events[0]["baseline"] == pytest.approx(0.005, abs=0.004)


@pytest.mark.timeout(180)
def test_gap_rate_fires_and_coverage_does_not(replay: Replay) -> None:
    events = alerts_for(replay.alerts, "gap")
    assert [(a["rule"], a["state"]) for a in events] == [(GAP, "firing")]


@pytest.mark.timeout(180)
def test_low_volume_fires_nothing(replay: Replay) -> None:
    assert alerts_for(replay.alerts, "lowvol") == []
    assert not [a for a in replay.alerts if a["rule"] == NO_DATA]


@pytest.mark.timeout(180)
def test_exporter_has_windowed_label_and_shadow_rates(replay: Replay) -> None:
    m = replay.metrics
    assert 'zeroproof_monitor_coverage{model_version="steady",window="short"}' in m
    assert 'zeroproof_monitor_bottom_rate{model_version="steady",window="baseline"}' in m
    assert 'zeroproof_monitor_label_coverage{label="site",model_version="steady",value="a",window="short"}' in m
    assert 'zeroproof_monitor_shadow_bottom_rate{model_version="steady",tau_infer="1e-05",tau_train="0.0001"' in m
    assert 'zeroproof_monitor_alert_state{model_version="flap",rule="coverage_low"} 2.0' in m
    assert 'zeroproof_monitor_alert_firing{model_version="steady",rule="coverage_low"} 0.0' in m


@pytest.mark.timeout(180)
def test_broker_replay_equals_in_memory_event_time_evaluation(replay: Replay) -> None:
    """Partition interleaving must not change the outcome: same alerts as feeding the data in event order."""
    from monitoring.core import Monitor
    from monitoring.simulate import encode
    from monitoring.sinks import MemorySink

    clock, sink = SimClock(T0), MemorySink()
    m = Monitor(replay.settings, [sink], clock)
    m.finish_replay()
    for msg in sorted(replay.messages, key=lambda x: x.window_end):
        clock.set(msg.window_end)
        m.ingest(encode(msg))
    expected = [(a.rule, a.model_version, a.state, a.started_at, a.evaluated_at) for a in sink.alerts]
    got = [(a["rule"], a["model_version"], a["state"], a["started_at"], a["evaluated_at"]) for a in replay.alerts]
    assert sorted(got) == sorted(expected)
