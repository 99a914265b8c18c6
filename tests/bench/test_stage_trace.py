"""The worker stage trace the benchmarks report (bench/worker.py): means from /metrics, over a window."""

from __future__ import annotations

import pytest

from bench.worker import worker_stage_means

pytestmark = pytest.mark.unit


def page(queue_sum: float, queue_count: float, batch_sum: float, batch_count: float) -> str:
    return "\n".join(
        [
            "# HELP zeroproof_worker_queue_seconds time a record waited in the batcher",
            f"zeroproof_worker_queue_seconds_sum {queue_sum}",
            f"zeroproof_worker_queue_seconds_count {queue_count}",
            f"zeroproof_worker_batch_size_sum {batch_sum}",
            f"zeroproof_worker_batch_size_count {batch_count}",
        ]
    )


def test_means_over_the_whole_life_of_the_worker() -> None:
    assert worker_stage_means(page(2.0, 4, 40, 4)) == {"queue": 500.0, "batch_size": 10.0}


def test_means_since_an_earlier_page_leave_the_warm_up_out() -> None:
    # a warm-up batch of 1 record that queued 2 s, then 4 batches of 3 records that queued 1 ms each
    before, after = page(2.0, 1, 1, 1), page(2.004, 5, 13, 5)
    assert worker_stage_means(after, since=before) == {"queue": 1.0, "batch_size": 3.0}


def test_a_stage_without_new_observations_is_left_out() -> None:
    assert worker_stage_means(page(2.0, 1, 1, 1), since=page(2.0, 1, 1, 1)) == {}
