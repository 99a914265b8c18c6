"""Monitor restart mid-incident and silent workers, against a real broker."""

from __future__ import annotations

import time

import pytest

from harness.monitor import T0, Publisher, alerts_for, fast_settings, read_topic, start_monitor, unique
from harness.services import create_topics
from monitoring.rules import BOTTOM_RISE, COVERAGE, FLEET, GAP, NO_DATA
from monitoring.simulate import Phase, SimClock, Stream, generate

pytestmark = pytest.mark.integration

#: Coverage 99% → 80% (⊥ 10%, gap 10%) from 600 s to 1000 s: fires coverage, gap and ⊥-rise alerts.
INCIDENT = sorted(f"{rule}/drop" for rule in (COVERAGE, GAP, BOTTOM_RISE))
DROP = Stream("drop", [Phase(0, 0.005, 0.005), Phase(600, 0.1, 0.1), Phase(1000, 0.005, 0.005)])


@pytest.mark.timeout(180)
def test_restart_mid_incident_keeps_one_firing_alert(kafka_bootstrap: str) -> None:
    stats, alerts = unique("stats"), unique("alerts")
    create_topics(kafka_bootstrap, {stats: 4, alerts: 1})
    s = fast_settings(kafka_bootstrap=kafka_bootstrap, stats_topic=stats, alerts_topic=alerts)
    events = list(generate([DROP], T0, 1300, seed=3))
    clock = SimClock(T0)
    pub = Publisher(kafka_bootstrap, stats, clock)
    first = start_monitor(s, clock)
    try:
        pub.publish([e for e in events if e[0] < T0 + 800], first)
        assert first.service.firing() == INCIDENT
    finally:
        first.close()
    # The incident goes on while no monitor runs.
    pub.publish([e for e in events if T0 + 800 <= e[0] < T0 + 850])
    second = start_monitor(s, clock)
    try:
        # Rebuilt from the stats topic and reconciled with the alerts topic: firing, nothing new announced.
        assert second.service.firing() == INCIDENT
        assert second.service.monitor is not None
        assert second.service.monitor.emitted == []
        pub.publish([e for e in events if e[0] >= T0 + 850], second)
        emitted = [(a.rule, a.state) for a in second.service.monitor.emitted]
    finally:
        second.close()
        pub.close()
    everything = read_topic(kafka_bootstrap, alerts)
    for rule in (COVERAGE, GAP, BOTTOM_RISE):
        history = alerts_for(everything, "drop", rule)
        assert [a["state"] for a in history] == ["firing", "resolved"], rule
        assert history[0]["started_at"] == history[1]["started_at"]
        assert history[1]["ended_at"] > T0 + 1000
        assert (rule, "resolved") in emitted
    assert len(everything) == 6


@pytest.mark.timeout(180)
def test_incident_that_started_while_down_is_announced_once(kafka_bootstrap: str) -> None:
    stats, alerts = unique("stats"), unique("alerts")
    create_topics(kafka_bootstrap, {stats: 4, alerts: 1})
    s = fast_settings(kafka_bootstrap=kafka_bootstrap, stats_topic=stats, alerts_topic=alerts)
    clock = SimClock(T0)
    pub = Publisher(kafka_bootstrap, stats, clock)
    pub.publish(list(generate([DROP], T0, 800, seed=4)))  # no monitor running at all
    mon = start_monitor(s, clock)
    try:
        assert mon.service.firing() == INCIDENT
    finally:
        mon.close()
        pub.close()
    everything = read_topic(kafka_bootstrap, alerts)
    assert len(everything) == 3
    history = alerts_for(everything, "drop", COVERAGE)
    assert [a["state"] for a in history] == ["firing"]
    assert T0 + 600 <= history[0]["started_at"] < T0 + 700


@pytest.mark.timeout(180)
def test_silent_workers_fire_no_data_then_resolve(kafka_bootstrap: str) -> None:
    stats, alerts = unique("stats"), unique("alerts")
    create_topics(kafka_bootstrap, {stats: 4, alerts: 1})
    s = fast_settings(kafka_bootstrap=kafka_bootstrap, stats_topic=stats, alerts_topic=alerts, no_data_after=60)
    steady = Stream("v1", [Phase(0, 0.005, 0.005)])
    events = list(generate([steady], T0, 600, seed=5))
    clock = SimClock(T0)
    pub = Publisher(kafka_bootstrap, stats, clock)
    mon = start_monitor(s, clock)
    try:
        pub.publish([e for e in events if e[0] < T0 + 300], mon)
        assert mon.service.monitor is not None
        last = mon.service.monitor.last_event
        assert last is not None
        # Workers go silent; simulated wall time moves on in 10 s steps while the monitor keeps polling.
        fired_by: float | None = None
        t = last
        while t < last + 150:
            t += 10
            clock.set(t)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and fired_by is None:
                if any(a.rule == NO_DATA for a in mon.service.monitor.emitted):
                    fired_by = t
                if mon.service.monitor.counters.seconds_since_data == pytest.approx(t - last):
                    break
                time.sleep(0.02)
            if fired_by is None and any(a.rule == NO_DATA for a in mon.service.monitor.emitted):
                fired_by = t
        assert fired_by is not None
        assert last + s.no_data_after < fired_by <= last + s.no_data_after + 10
        # They come back.
        pub.publish([e for e in events if e[0] >= T0 + 450], mon)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len([a for a in mon.service.monitor.emitted if a.rule == NO_DATA]) < 2:
            time.sleep(0.05)
    finally:
        mon.close()
        pub.close()
    history = [a for a in read_topic(kafka_bootstrap, alerts) if a["rule"] == NO_DATA]
    assert [a["state"] for a in history] == ["firing", "resolved"]
    assert history[0]["model_version"] == FLEET
    assert history[0]["threshold"] == s.no_data_after
    assert alerts_for(read_topic(kafka_bootstrap, alerts), "v1") == []  # silence is not a coverage problem


@pytest.mark.timeout(120)
def test_monitor_started_before_the_topics_exist(kafka_bootstrap: str) -> None:
    """First deployment: the monitor comes up before any worker has created the stats topic."""
    stats, alerts = unique("stats"), unique("alerts")
    s = fast_settings(kafka_bootstrap=kafka_bootstrap, stats_topic=stats, alerts_topic=alerts)
    clock = SimClock(T0)
    mon = start_monitor(s, clock)
    pub = Publisher(kafka_bootstrap, stats, clock)
    try:
        pub.publish(list(generate([DROP], T0, 800, seed=6)), mon)
        assert mon.service.firing() == INCIDENT
    finally:
        mon.close()
        pub.close()
    assert len(read_topic(kafka_bootstrap, alerts)) == 3
