"""The transport-free core (``Monitor``): input hygiene, determinism, restart reconciliation, dedup."""

from __future__ import annotations

import random

import pytest
from prometheus_client import generate_latest

from harness.monitor import T0, fast_settings
from monitoring.core import Monitor
from monitoring.rules import COVERAGE, Alert, State
from monitoring.simulate import Phase, SimClock, Stream, encode, generate
from monitoring.sinks import MemorySink
from service.wire import Counts, StatsMessage

pytestmark = pytest.mark.unit

DROP = Stream("drop", [Phase(0, 0.005, 0.005), Phase(300, 0.1, 0.1)])


def feed(m: Monitor, clock: SimClock, events: list[tuple[float, str, StatsMessage]]) -> None:
    for end, _, msg in events:
        clock.set(end)
        m.ingest(encode(msg))
        m.wall_tick(caught_up=False)


def live_monitor(sink: MemorySink, clock: SimClock, announced: dict[str, Alert] | None = None, **kw: object) -> Monitor:
    # The simulated clock also stands in for real time (worker idleness): the test runs faster than real time.
    return Monitor(fast_settings(**kw), [sink], clock, announced=announced, monotonic=clock)


def test_malformed_records_are_counted_and_skipped() -> None:
    clock, sink = SimClock(T0), MemorySink()
    m = live_monitor(sink, clock)
    m.finish_replay()
    good = StatsMessage(
        worker_id="w",
        model_version="v",
        tau_infer=1e-6,
        tau_train=None,
        window_start=T0,
        window_end=T0 + 1,
        counts=Counts(total=10, bottom=1),
    )
    bad_records = [
        b"\xff\xfe not json",
        b"{}",
        b'{"schema": "zeroproof.stats/1"}',
        b"[1, 2, 3]",
        encode(good).replace(b'"total":10', b'"total":"ten"'),
        encode(good.model_copy(update={"counts": Counts(total=1, bottom=5)})),
        encode(good.model_copy(update={"counts": Counts(total=5, bottom=-1)})),
        encode(good.model_copy(update={"window_end": T0 + 10 * 86400})),  # a worker clock ten days ahead
        encode(good).replace(b'"window_end":', b'"window_end":NaN,"x":'),
    ]
    for raw in bad_records:
        assert m.ingest(raw) is False
    assert m.ingest(encode(good)) is True
    assert m.counters.malformed == len(bad_records)
    assert m.counters.records == len(bad_records) + 1
    assert m.store.watermark == T0 + 1


def test_out_of_order_arrival_within_lateness_gives_the_same_alerts() -> None:
    events = list(generate([DROP], T0, 900, seed=11))
    runs = []
    for shuffle in (False, True):
        ev = list(events)
        if shuffle:
            # Workers' batches arrive up to 4 s out of order (allowed lateness is 5 s).
            rnd = random.Random(1)
            ev.sort(key=lambda e: e[0] + rnd.uniform(0, 4))
        clock, sink = SimClock(T0), MemorySink()
        m = live_monitor(sink, clock)
        m.finish_replay()
        feed(m, clock, ev)
        runs.append([(a.rule, a.state, a.started_at, a.fired_at, a.value) for a in sink.alerts])
    assert runs[0]
    assert runs[0] == runs[1]


def test_replay_is_muted_and_reconciles_with_announced_state() -> None:
    events = list(generate([DROP], T0, 700, seed=12))
    # First instance, live from the start.
    clock, sink1 = SimClock(T0), MemorySink()
    m1 = live_monitor(sink1, clock)
    m1.finish_replay()
    feed(m1, clock, events)
    announced = {a.key: a for a in sink1.alerts}
    assert any(a.rule == COVERAGE for a in sink1.alerts)
    # Second instance replays the same history: nothing is announced again.
    sink2 = MemorySink()
    m2 = live_monitor(sink2, clock, announced=announced)
    feed(m2, clock, events)
    assert sink2.alerts == []
    m2.finish_replay()
    assert sink2.alerts == []
    assert m2.firing_keys() == m1.firing_keys()


def test_announced_firing_is_adopted_when_replay_cannot_judge() -> None:
    """The stats topic lost its history (retention, broker wipe): no false resolve at start."""
    clock, sink = SimClock(T0 + 10_000), MemorySink()
    started = Alert(COVERAGE, "firing", "v", 0.8, 0.9, 0.92, "1m", 60, T0 + 9000, T0 + 9030, T0 + 9030)
    m = live_monitor(sink, clock, announced={started.key: started})
    m.finish_replay()
    assert m.engine.tracker(COVERAGE, "v").state is State.FIRING
    assert sink.restored == [started]  # e.g. the webhook keeps re-sending it
    # Healthy but thin data: still cannot judge, so still firing.
    thin = Stream("v", [Phase(0, 0.0)], workers=1, batch=1, period=5)
    feed(m, clock, list(generate([thin], T0 + 10_000, 120, seed=1)))
    assert sink.alerts == []
    # Healthy data with volume: resolves once, carrying the original start time.
    healthy = Stream("v", [Phase(0, 0.001)])
    feed(m, clock, list(generate([healthy], T0 + 10_200, 300, seed=2)))
    assert [(a.rule, a.state, a.started_at) for a in sink.alerts] == [(COVERAGE, "resolved", T0 + 9000)]


def test_sink_boundary_never_repeats_a_state() -> None:
    clock, sink = SimClock(T0), MemorySink()
    m = live_monitor(sink, clock)
    m.finish_replay()
    a = Alert(COVERAGE, "firing", "v", 0.8, 0.9, 0.92, "1m", 60, T0, T0, T0)
    m._publish([a, a])
    m._publish([Alert(COVERAGE, "resolved", "v", 0.95, 0.9, 0.92, "1m", 60, T0, T0, T0 + 60, T0 + 60)] * 2)
    assert [x.state for x in sink.alerts] == ["firing", "resolved"]


def test_silence_beyond_the_horizon_does_not_replay_hours_of_empty_ticks() -> None:
    clock, sink = SimClock(T0), MemorySink()
    m = live_monitor(sink, clock)
    m.finish_replay()
    steady = Stream("v", [Phase(0, 0.005)])
    feed(m, clock, list(generate([steady], T0, 120, seed=1)))
    before = m.counters.evaluations
    feed(m, clock, list(generate([steady], T0 + 86_400, 60, seed=2)))
    assert m.counters.evaluations - before < 2 * (m.horizon / m.s.eval_interval) + 20


def test_exporter_snapshot_after_evaluation() -> None:
    clock, sink = SimClock(T0), MemorySink()
    m = live_monitor(sink, clock, monitor_label="site")
    m.finish_replay()
    st = Stream("v7", [Phase(0, 0.01, 0.02)], label="site", label_values=["eu", "us"], shadow=True)
    feed(m, clock, list(generate([st], T0, 700, seed=3)))
    m.wall_tick()
    text = generate_latest(m.exporter.registry).decode()
    line = next(
        x for x in text.splitlines() if x.startswith('zeroproof_monitor_coverage{model_version="v7",window="long"}')
    )
    assert float(line.split()[-1]) == pytest.approx(0.97, abs=0.01)
    assert 'zeroproof_monitor_label_bottom_rate{label="site",model_version="v7",value="eu",window="short"}' in text
    assert (
        'zeroproof_monitor_shadow_coverage{model_version="v7",tau_infer="1e-05",tau_train="0.0001",window="long"}'
        in text
    )
    assert 'zeroproof_monitor_live_thresholds{model_version="v7",tau_infer="1e-06",tau_train="0.0001"} 1.0' in text
    assert "zeroproof_monitor_stats_records_total" in text
    assert "zeroproof_monitor_seconds_since_data" in text


def test_evaluation_waits_for_lagging_workers_until_they_are_idle() -> None:
    mono = SimClock(0.0)
    clock, sink = SimClock(T0), MemorySink()
    m = Monitor(fast_settings(), [sink], clock, monotonic=mono)
    m.finish_replay()

    def batch(worker: str, end: float) -> bytes:
        return encode(
            StatsMessage(
                worker_id=worker,
                model_version="v",
                tau_infer=1e-6,
                tau_train=None,
                window_start=end - 1,
                window_end=end,
                counts=Counts(total=10),
            )
        )

    m.ingest(batch("a", T0 + 1))
    m.ingest(batch("b", T0 + 1))
    evaluations = m.counters.evaluations
    for t in range(2, 40):  # worker a runs ahead (its partition is delivered first); b is behind
        m.ingest(batch("a", T0 + t))
    assert m.watermark() == T0 + 1
    assert m.counters.evaluations == evaluations  # nothing judged on a's data alone
    m.ingest(batch("b", T0 + 39))
    assert m.watermark() == T0 + 39
    assert m.counters.evaluations > evaluations
    # b stops for good: once it is far behind in event time and silent in real time, it no longer holds back.
    for t in range(40, 140):
        m.ingest(batch("a", T0 + t))
    assert m.watermark() == T0 + 39
    mono.set(10.0)
    assert m.watermark() == T0 + 139


def test_a_replaced_model_version_resolves_its_alerts_and_is_forgotten() -> None:
    clock, sink = SimClock(T0), MemorySink()
    m = live_monitor(sink, clock)
    m.finish_replay()
    old = Stream("old", [Phase(0, 0.3, 0.0)])
    new = Stream("new", [Phase(0, 0.005, 0.0)])
    feed(m, clock, list(generate([old, new], T0, 300, seed=1)))
    assert m.firing_keys() == [f"{COVERAGE}/old"]
    feed(m, clock, list(generate([new], T0 + 300, 1200, seed=2)))  # the rollout is done; "old" is gone
    retired = [a for a in sink.alerts if a.model_version == "old" and a.state == "resolved"]
    assert len(retired) == 1
    assert "retired" in retired[0].summary
    assert retired[0].evaluated_at >= T0 + 300 + m.s.long_window
    assert "old" not in m.store.model_versions()
    assert not [k for k in m.engine.trackers if k[1] == "old"]


def test_a_sparse_live_worker_does_not_delay_evaluation() -> None:
    """Live: event time runs with real time. A worker with a batch every 30 s must not hold ticks for 30 s."""
    clock, sink = SimClock(T0), MemorySink()
    m = Monitor(fast_settings(), [sink], clock, monotonic=clock)
    m.finish_replay()

    def batch(worker: str, end: float) -> bytes:
        return encode(
            StatsMessage(
                worker_id=worker,
                model_version="v",
                tau_infer=1e-6,
                tau_train=None,
                window_start=end - 1,
                window_end=end,
                counts=Counts(total=10),
            )
        )

    for t in range(0, 200):
        clock.set(T0 + t)
        if t % 30 == 0:
            m.ingest(batch("sparse", T0 + t))
        m.ingest(batch("busy", T0 + t))
        wm = m.watermark()
        assert wm is not None
        assert wm >= T0 + t - m.s.allowed_lateness - 1
