"""Encoders of workers/records.py that are written by hand for speed: the same documents as their schema models."""

from __future__ import annotations

import pytest

from service.wire import ShadowCounts, StatsMessage
from workers.records import BatchStats, Tally, stats_record

pytestmark = pytest.mark.unit


def _tally(*counts: int) -> Tally:
    return Tally(*counts)


CASES = [
    BatchStats(model_version="m-1", tau_infer=1e-6, tau_train=1e-4),
    BatchStats(
        model_version="arm-ik-1",
        tau_infer=1e-6,
        tau_train=None,
        counts=_tally(1024, 3, 70, 60, 13),
        dlq={"invalid_json": 2, "too_large": 1},
        elements_total=2048,
        elements_bottom=4,
        elements_gap=90,
        by_label={"site": {"s1": _tally(5, 1, 0, 1, 0), "__other__": _tally(2, 0, 1, 0, 1)}, "ü": {'é"x': _tally()}},
        shadow=[
            ShadowCounts(tau_infer=1e-3, tau_train=1e-2, total=1024, bottom=9, gap=300, elements_bottom=9),
            ShadowCounts(tau_infer=0.5, tau_train=None, total=1024, bottom=1000, gap=0, elements_gap=0),
        ],
        spans={"in:0": [0, 511], "in:3": [17, 17]},
    ),
    BatchStats(model_version="", tau_infer=1, tau_train=2, counts=_tally(1, 1, 0, 0, 1)),  # integer thresholds
    BatchStats(model_version="v", tau_infer=1.5e-300, tau_train=123456789.125),
]


@pytest.mark.parametrize("stats", CASES)
def test_the_stats_record_is_the_stats_message_byte_for_byte(stats: BatchStats) -> None:
    rec = stats_record("zeroproof.stats", stats, "w-7", 1700000000.25, 1700000000.5, 42)
    model = StatsMessage(
        worker_id="w-7",
        model_version=stats.model_version,
        tau_infer=stats.tau_infer,
        tau_train=stats.tau_train,
        window_start=1700000000.25,
        window_end=1700000000.5,
        counts=stats.counts.wire(),
        dlq=sum(stats.dlq.values()),
        elements_total=stats.elements_total,
        elements_bottom=stats.elements_bottom,
        elements_gap=stats.elements_gap,
        by_label={k: {v: t.wire() for v, t in vs.items()} for k, vs in stats.by_label.items()},
        shadow=stats.shadow,
        batch_seq=42,
        partitions=stats.spans,
    )
    assert rec.value == model.model_dump_json(by_alias=True).encode()
    assert StatsMessage.model_validate_json(rec.value) == model
    assert (rec.topic, rec.key, rec.kind) == ("zeroproof.stats", b"w-7", "stats")


def test_window_times_given_as_integers_are_written_as_numbers_the_model_reads_back() -> None:
    rec = stats_record("t", BatchStats(model_version="m", tau_infer=1e-6, tau_train=None), "w", 1, 2, 0)
    assert StatsMessage.model_validate_json(rec.value).window_end == 2.0
