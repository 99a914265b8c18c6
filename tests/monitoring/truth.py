"""Ground truth for scenario replays, computed by brute force from the generated messages.

Independent of ``monitoring.windows`` on purpose: a test that derived its expectations from the code under
test could not fail.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.wire import StatsMessage


def window_sums(msgs: Sequence[StatsMessage], version: str, end: float, length: float) -> tuple[int, int, int]:
    """(total, bottom, gap) of the batches of ``version`` with ``end - length <= window_end < end``."""
    total = bottom = gap = 0
    for m in msgs:
        if m.model_version == version and end - length <= m.window_end < end:
            total += m.counts.total
            bottom += m.counts.bottom
            gap += m.counts.gap
    return total, bottom, gap


def coverage(msgs: Sequence[StatsMessage], version: str, end: float, length: float) -> float | None:
    total, bottom, gap = window_sums(msgs, version, end, length)
    return None if total == 0 else 1 - (bottom + gap) / total


def first_tick(
    msgs: Sequence[StatsMessage], version: str, ticks: Sequence[float], length: float, pred: object
) -> float | None:
    """First evaluation tick at which ``pred(coverage)`` holds."""
    for t in ticks:
        c = coverage(msgs, version, t, length)
        if c is not None and pred(c):  # type: ignore[operator]
            return t
    return None
