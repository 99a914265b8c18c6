"""The monitor service wired to in-memory parts: the seams that let the core run without Kafka."""

from __future__ import annotations

import threading

import pytest

from harness.load import wait_until
from harness.monitor import T0, fast_settings
from monitoring.exporter import Exporter
from monitoring.rules import COVERAGE
from monitoring.service import MonitorService
from monitoring.simulate import Phase, SimClock, Stream, encode, generate
from monitoring.sinks import MemorySink
from monitoring.sources import MemoryStatsSource

pytestmark = pytest.mark.unit


def test_the_service_runs_on_an_in_memory_source_and_sink() -> None:
    """A restart over an incident in progress: the replayed stats say coverage is 0.7, nothing was announced
    before, so the service announces the alert once, on the in-memory sink, and closes its source at the end."""
    events = list(generate([Stream("v", [Phase(0, 0.30)])], T0, 300, seed=1))
    source = MemoryStatsSource(encode(msg) for _, _, msg in events)
    sink = MemorySink()
    svc = MonitorService(
        fast_settings(),
        clock=SimClock(events[-1][0] + 1),
        sinks=[sink],
        exporter=Exporter(),
        poll_timeout=0.01,
        source=lambda settings, since: source,
        announced=lambda settings: {},
    )
    stop = threading.Event()
    runner = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    runner.start()
    try:
        assert svc.ready.wait(30), "the service never finished its replay"
        assert [(a.rule, a.state) for a in sink.alerts if a.rule == COVERAGE] == [(COVERAGE, "firing")]
        assert f"{COVERAGE}/v" in svc.firing()
        assert svc.monitor is not None
        source.put(*(encode(msg) for _, _, msg in events[-3:]))  # records after the replay are ingested too
        assert wait_until(lambda: svc.monitor is not None and svc.monitor.counters.records == len(events) + 3, 10)
    finally:
        stop.set()
        runner.join(10)
    assert not runner.is_alive() and source.closed
