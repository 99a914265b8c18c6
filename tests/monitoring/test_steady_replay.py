"""Long steady replay with the default settings (5 min / 1 h windows): the false-alarm count must be zero.

Eight busy workers with slowly drifting ⊥ and gap rates (realistic, never near a threshold) plus a canary
worker at 1 prediction/s, just above the minimum volume, where chance alone moves the windowed rates most.
"""

from __future__ import annotations

import pytest

from harness.monitor import HOURS, T0, Publisher, read_topic, start_monitor, steady_streams, unique
from harness.services import create_topics
from monitoring.settings import MonitorSettings
from monitoring.simulate import SimClock, generate

pytestmark = pytest.mark.integration


#: Measured in-memory with this seed: without the ⊥-rise significance guard 3 false alarms, with pending 0 as
#: well 4; with the defaults 0.
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_long_steady_replay_has_no_false_alarms(kafka_bootstrap: str) -> None:
    stats, alerts = unique("stats"), unique("alerts")
    create_topics(kafka_bootstrap, {stats: 4, alerts: 1})
    defaults = {name: f.default for name, f in MonitorSettings.model_fields.items()}
    s = MonitorSettings.model_validate(
        {**defaults, "kafka_bootstrap": kafka_bootstrap, "stats_topic": stats, "alerts_topic": alerts}
    )
    clock = SimClock(T0)
    mon = start_monitor(s, clock)
    pub = Publisher(kafka_bootstrap, stats, clock)
    try:
        pub.publish(generate(steady_streams(HOURS), T0, HOURS * 3600, seed=2), mon, chunk=120.0)
        assert mon.service.monitor is not None
        evaluations = mon.service.monitor.counters.evaluations
    finally:
        pub.close()
        mon.close()
    false_alarms = [a for a in read_topic(kafka_bootstrap, alerts) if a["state"] == "firing"]
    assert evaluations >= HOURS * 3600 / s.eval_interval - 10  # the monitor did judge the whole replay
    assert false_alarms == [], f"{len(false_alarms)} false alarms: {false_alarms}"
