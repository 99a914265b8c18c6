"""Start-up order: a worker started before its input topic exists waits for it, then serves it.

The integration test reproduces issue 12 §0: before the fix, a worker whose group join raced its client's first
metadata refresh got an empty assignment (kafka-python: "No partition metadata for topic") and tansu kept handing
out that empty assignment on every rejoin, so the worker never consumed (3 of 4 runs on a loaded machine).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from harness.worker import TopicReader, Topics, WorkerProc, msg, produce, worker_env
from workers.startup import StoppedError, wait_for_topic, with_backoff


class RecordingLog:
    """Collects ``(level, event, fields)`` like the structlog logger the worker passes around."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def _add(self, level: str, event: str, **kw: Any) -> None:
        self.lines.append((level, event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self._add("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._add("warning", event, **kw)

    def events(self) -> list[str]:
        return [e for _, e, _ in self.lines]


@pytest.mark.unit
def test_wait_for_topic_logs_missing_once_then_ready() -> None:
    answers = iter([0, 0, RuntimeError("UnknownTopicOrPartition"), 0, 4])
    log = RecordingLog()

    def partitions() -> int:
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    n = wait_for_topic("in", partitions, log, lambda: False, retry_s=0.001, report_every_s=60)
    assert n == 4
    assert log.events() == ["input_topic_missing", "input_topic_ready"]
    assert log.lines[1][2]["partitions"] == 4


@pytest.mark.unit
def test_wait_for_topic_reports_again_after_the_period_and_stops_on_signal() -> None:
    log = RecordingLog()
    calls = {"n": 0}

    def partitions() -> int:
        calls["n"] += 1
        return 0

    def should_stop() -> bool:
        return calls["n"] >= 5

    with pytest.raises(StoppedError):
        wait_for_topic("in", partitions, log, should_stop, retry_s=0.01, report_every_s=0.0)
    assert log.events().count("input_topic_missing") == calls["n"]


@pytest.mark.unit
def test_wait_for_topic_is_silent_when_the_topic_exists() -> None:
    log = RecordingLog()
    assert wait_for_topic("in", lambda: 2, log, lambda: False) == 2
    assert log.lines == []


@pytest.mark.unit
def test_with_backoff_doubles_up_to_the_cap_and_gives_up_after_the_timeout() -> None:
    log = RecordingLog()

    def never() -> None:
        raise ConnectionError("refused")

    with pytest.raises(ConnectionError):
        with_backoff("redis", never, log, lambda: False, max_backoff_s=0.5, timeout_s=1.2)
    delays = [kw["retry_in_s"] for _, e, kw in log.lines if e == "redis_unreachable"]
    assert delays[:3] == [0.25, 0.5, 0.5]


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_worker_started_before_its_input_topic_exists_serves_it(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    for attempt in range(3):  # the race depended on timing; three fresh workers and topics must all pass
        t = Topics()
        w = WorkerProc(worker_env(kafka_bootstrap, redis_url, bundle, t), tmp_path / f"w{attempt}.log", False)
        reader = TopicReader(kafka_bootstrap, t.outputs)
        try:
            assigned = w.wait_event("partitions_assigned", 60)
            assert assigned["partitions"], w.log_tail()
            produce(kafka_bootstrap, t.inputs, [(b"arm-1", msg(i, [0.1])) for i in range(10)])
            reader.read_until(lambda rs: len(rs) >= 10, 30)
            assert len(reader.records) == 10, f"attempt {attempt}: {w.log_tail()}"
            assert w.terminate() == 0
        finally:
            w.kill()
            reader.close()
