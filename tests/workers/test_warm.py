"""KeepWarm: the idle worker runs its model on a row of zeros now and then, and touches nothing it serves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import structlog
from structlog.testing import capture_logs

from harness.worker import known_pole_bundle
from tests.workers.test_worker_loop import feed, make, output_ids, spin
from workers.model import load_runtime
from workers.settings import WorkerSettings
from workers.warm import KeepWarm

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class CountingRuntime:
    """The real runtime, counting forwards (and able to raise like a model that rejects zeros)."""

    def __init__(self, inner: Any, fail: bool = False) -> None:
        self.inner, self.fail, self.rows = inner, fail, 0
        self.in_features, self.config = inner.in_features, inner.config

    def forward(self, x: np.ndarray) -> Any:
        if self.fail:
            raise RuntimeError("zeros rejected")
        self.rows += x.shape[0]
        assert not x.any() and x.shape == (1, self.in_features)
        return self.inner.forward(x)


def runtime(tmp_path: Path) -> Any:
    return load_runtime(WorkerSettings(model=known_pole_bundle(tmp_path / "kp.zpb")))


def test_runs_once_per_interval_after_the_last_real_forward(tmp_path: Path) -> None:
    rt, clock = CountingRuntime(runtime(tmp_path)), Clock()
    warm = KeepWarm(lambda: rt, 1.0, structlog.get_logger("t"), clock)
    assert not warm.maybe_run() and rt.rows == 0  # just started: nothing is cold yet
    clock.now += 1.0
    assert warm.maybe_run() and rt.rows == 1
    clock.now += 0.5
    assert not warm.maybe_run()
    clock.now += 0.4
    warm.touch()  # a real batch ran: the next warm-up is an interval after it
    clock.now += 0.9
    assert not warm.maybe_run()
    clock.now += 0.1
    assert warm.maybe_run() and rt.rows == 2 and warm.runs == 2


def test_interval_zero_is_off(tmp_path: Path) -> None:
    rt, clock = CountingRuntime(runtime(tmp_path)), Clock()
    warm = KeepWarm(lambda: rt, 0.0, structlog.get_logger("t"), clock)
    clock.now += 3600
    assert not warm.maybe_run() and rt.rows == 0


def test_a_model_that_raises_on_zeros_turns_it_off_with_one_warning(tmp_path: Path) -> None:
    rt, clock = CountingRuntime(runtime(tmp_path), fail=True), Clock()
    warm = KeepWarm(lambda: rt, 1.0, structlog.get_logger("t"), clock)
    with capture_logs() as logs:
        for _ in range(3):
            clock.now += 1.0
            assert not warm.maybe_run()
    assert warm.disabled and [e["event"] for e in logs] == ["keep_warm_disabled"]


def test_the_idle_worker_warms_up_and_serves_exactly_what_it_would_without(tmp_path: Path) -> None:
    served: dict[int, tuple[list[str], list[bytes], list[bytes]]] = {}
    for interval in (0, 1):
        w, broker, _, _ = make(tmp_path / str(interval), idle_warm_interval_ms=interval)
        feed(broker, 20)
        spin(w, 0.2)
        idle_before = w.warm.runs
        spin(w, 0.2)  # nothing to do: with a 1 ms interval the loop warms up while it waits
        assert (w.warm.runs > idle_before) == (interval == 1)
        feed(broker, 20, start=20)
        spin(w, 0.3)
        stats = [v for v in broker.values("zeroproof.stats")]
        served[interval] = (output_ids(broker), broker.values("zeroproof.outputs"), stats)
        assert w.batches == len(stats)  # a warm-up is no batch: no stats record, no metrics
    assert served[0][0] == served[1][0] == [str(i) for i in range(40)]
    assert served[0][1] == served[1][1]  # the same outputs, fallback state included


def test_no_warm_up_while_a_batch_is_in_flight(tmp_path: Path) -> None:
    w, broker, _, _ = make(tmp_path, idle_warm_interval_ms=1)
    broker.hold_sends = True
    feed(broker, 8)
    spin(w, 0.1)
    assert w.checkpoint.in_flight == 1
    runs = w.warm.runs
    spin(w, 0.2)
    assert w.warm.runs == runs
