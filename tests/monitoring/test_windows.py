from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.monitor import T0
from monitoring.windows import LABEL, OTHER_VALUE, SHADOW, SeriesKey, WindowCounts, WindowStore, shadow_value
from service.wire import Counts, ShadowCounts, StatsMessage

pytestmark = pytest.mark.unit


def msg(end: float, total: int = 100, bottom: int = 0, gap: int = 0, version: str = "v1", **kw: object) -> StatsMessage:
    return StatsMessage(
        worker_id="w",
        model_version=version,
        tau_infer=1e-6,
        tau_train=1e-4,
        window_start=end - 1,
        window_end=end,
        counts=Counts(total=total, bottom=bottom, gap=gap),
        **kw,  # type: ignore[arg-type]
    )


def test_rates_come_from_the_window_not_lifetime() -> None:
    store = WindowStore(bucket=5, horizon=700)
    for i in range(60):  # 5 minutes of clean traffic
        store.add(msg(T0 + i * 5, total=100))
    for i in range(60, 72):  # then one minute at 50% ⊥
        store.add(msg(T0 + i * 5, total=100, bottom=50))
    now = T0 + 72 * 5
    short = store.window(SeriesKey("v1"), now, 60)
    assert short.total == 1200
    assert short.bottom_rate == pytest.approx(0.5)
    assert short.coverage == pytest.approx(0.5)
    long = store.window(SeriesKey("v1"), now, 600)
    assert long.bottom_rate == pytest.approx(600 / 7200)


def test_coverage_is_one_minus_bottom_minus_gap() -> None:
    w = WindowCounts(total=1000, bottom=30, gap=20)
    assert w.coverage == pytest.approx(0.95)
    assert w.bottom_rate == pytest.approx(0.03)
    assert w.gap_rate == pytest.approx(0.02)
    assert WindowCounts().coverage is None  # no predictions: unknown, not 0 or 1
    assert WindowCounts(total=90, dlq=10).dlq_rate == pytest.approx(0.1)


def test_half_open_window_boundaries() -> None:
    store = WindowStore(bucket=5, horizon=700)
    store.add(msg(T0 - 60, total=1))  # exactly at the start: inside
    store.add(msg(T0 - 0.001, total=10))  # just before the end: inside
    store.add(msg(T0, total=100))  # at the end: next window
    assert store.window(SeriesKey("v1"), T0, 60).total == 11


def test_late_data_beyond_horizon_is_dropped_and_counted() -> None:
    store = WindowStore(bucket=5, horizon=100)
    store.add(msg(T0 + 1000))
    assert not store.add(msg(T0 + 800))
    assert store.late_dropped == 1
    assert store.add(msg(T0 + 950))  # late but within the horizon: counted
    assert store.window(SeriesKey("v1"), T0 + 1005, 100).total == 200


def test_ring_reuse_does_not_leak_old_counts() -> None:
    store = WindowStore(bucket=5, horizon=50)
    for i in range(100):
        store.add(msg(T0 + i * 5, total=1))
    assert store.window(SeriesKey("v1"), T0 + 500, 50).total == 10


def test_throughput_uses_the_seen_part_of_the_window() -> None:
    store = WindowStore(bucket=5, horizon=700)
    for i in range(12):
        store.add(msg(T0 + i * 5, total=50))
    w = store.window(SeriesKey("v1"), T0 + 60, 600)
    assert w.span == 60
    assert w.throughput == pytest.approx(10.0)


def test_label_and_shadow_series() -> None:
    store = WindowStore(bucket=5, horizon=700, label="site", max_label_values=2)
    by_label = {"site": {"a": Counts(total=60, bottom=6), "b": Counts(total=40)}, "other": {"x": Counts(total=100)}}
    shadow = [ShadowCounts(tau_infer=1e-5, tau_train=1e-4, total=100, bottom=9, gap=1)]
    store.add(msg(T0, total=100, bottom=6, by_label=by_label, shadow=shadow))
    store.add(msg(T0 + 1, total=10, by_label={"site": {"c": Counts(total=10, bottom=10)}}))
    end = T0 + 5
    a = store.window(SeriesKey("v1", LABEL, "a"), end, 60)
    assert a.bottom_rate == pytest.approx(0.1)
    assert store.window(SeriesKey("v1", LABEL, "b"), end, 60).bottom_rate == 0
    # A third value exceeds max_label_values and is pooled rather than growing the series without bound.
    assert store.window(SeriesKey("v1", LABEL, OTHER_VALUE), end, 60).bottom == 10
    sh = store.window(SeriesKey("v1", SHADOW, shadow_value(1e-5, 1e-4)), end, 60)
    assert sh.bottom_rate == pytest.approx(0.09)
    assert store.live_thresholds["v1"] == (1e-6, 1e-4)


def test_forget_idle_model_versions() -> None:
    store = WindowStore(bucket=5, horizon=100)
    store.add(msg(T0, version="old"))
    store.add(msg(T0 + 500, version="new"))
    assert store.forget_idle(T0 + 500) == ["old"]
    assert store.model_versions() == ["new"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(min_value=0, max_value=400, allow_nan=False), st.integers(0, 50)), min_size=1, max_size=60
    ),
    st.integers(1, 20),
    st.integers(0, 80),
)
def test_window_sums_match_brute_force(batches: list[tuple[float, int]], length_buckets: int, end_bucket: int) -> None:
    bucket = 5.0
    store = WindowStore(bucket=bucket, horizon=1000)
    for t, n in batches:
        store.add(msg(T0 + t, total=n))
    end = T0 + end_bucket * bucket
    length = length_buckets * bucket
    expected = sum(n for t, n in batches if end - length <= T0 + t < end)
    assert store.window(SeriesKey("v1"), end, length).total == expected
