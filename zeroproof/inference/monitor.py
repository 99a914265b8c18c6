"""Production counters for strict decode outputs.

``SCMMonitor`` keeps lifetime totals (the seed page's API). Lifetime totals hide a sudden change once
enough history has accumulated, so ``WindowedSCMMonitor`` keeps time buckets and reports rates over a
recent window next to a longer baseline.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor


def _count(mask: Any) -> tuple[int, int]:
    """(number of True, number of elements) for a tensor, array or sequence of bools."""
    if isinstance(mask, Tensor):
        return int(mask.sum().item()), mask.numel()
    if hasattr(mask, "sum") and hasattr(mask, "size"):
        return int(mask.sum()), int(mask.size)
    values = list(mask)
    return sum(bool(v) for v in values), len(values)


def rates(bottom: int, gap: int, total: int) -> dict[str, float | int]:
    """Report dict for raw counts; rates are NaN (undefined, not 0) when there were no predictions.

    ``coverage`` is the monitor notion ``1 - bottom_rate - gap_rate`` (share accepted as-is);
    ``coverage_metric`` in :mod:`zeroproof.losses.coverage` is the training notion ``1 - bottom_rate``.
    """
    if total == 0:
        nan = math.nan
        return {"coverage": nan, "bottom_rate": nan, "gap_rate": nan, "total_predictions": 0}
    bottom_rate = bottom / total
    gap_rate = gap / total
    return {
        "coverage": 1.0 - bottom_rate - gap_rate,
        "bottom_rate": bottom_rate,
        "gap_rate": gap_rate,
        "total_predictions": total,
    }


class SCMMonitor:
    """Lifetime counts of ⊥ and gap predictions, as on the seed page."""

    def __init__(self) -> None:
        self.bottom_count = 0
        self.gap_count = 0
        self.total_count = 0

    def update(self, bottom_mask: Any, gap_mask: Any) -> None:
        bottom, total = _count(bottom_mask)
        gap, gap_total = _count(gap_mask)
        if gap_total != total:
            raise ValueError(f"bottom_mask has {total} elements but gap_mask has {gap_total}")
        self.bottom_count += bottom
        self.gap_count += gap
        self.total_count += total

    def report(self) -> dict[str, float | int]:
        return rates(self.bottom_count, self.gap_count, self.total_count)


@dataclass
class _Bucket:
    slot: int
    bottom: int = 0
    gap: int = 0
    total: int = 0


class WindowedSCMMonitor:
    """Rates over sliding time windows, so that a sudden rise of ⊥ is visible.

    Counts land in buckets of ``bucket_seconds``; ``report()`` gives the rates over the last ``window``
    seconds and, under ``"baseline"``, over the ``baseline_window`` before that. Memory is bounded by
    ``(window + baseline_window) / bucket_seconds`` buckets. Thread-safe.
    """

    def __init__(
        self,
        window: float = 60.0,
        baseline_window: float = 600.0,
        bucket_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window <= 0 or baseline_window < 0 or bucket_seconds <= 0:
            raise ValueError("window and bucket_seconds must be > 0, baseline_window >= 0")
        self.window = window
        self.baseline_window = baseline_window
        self.bucket_seconds = bucket_seconds
        self._clock = clock
        self._buckets: deque[_Bucket] = deque()
        self._lock = threading.Lock()
        self._lifetime = SCMMonitor()

    def _slot(self, now: float) -> int:
        return math.floor(now / self.bucket_seconds)

    def _evict(self, now_slot: int) -> None:
        horizon = math.ceil((self.window + self.baseline_window) / self.bucket_seconds)
        while self._buckets and self._buckets[0].slot <= now_slot - horizon:
            self._buckets.popleft()

    def update(self, bottom_mask: Any, gap_mask: Any) -> None:
        bottom, total = _count(bottom_mask)
        gap, _ = _count(gap_mask)
        self.record(bottom, gap, total)

    def record(self, bottom: int, gap: int, total: int) -> None:
        """Add raw counts (what a worker publishes per batch)."""
        slot = self._slot(self._clock())
        with self._lock:
            if not self._buckets or self._buckets[-1].slot < slot:
                self._buckets.append(_Bucket(slot))
            bucket = self._buckets[-1]
            bucket.bottom += bottom
            bucket.gap += gap
            bucket.total += total
            self._lifetime.bottom_count += bottom
            self._lifetime.gap_count += gap
            self._lifetime.total_count += total
            self._evict(slot)

    def _sum(self, first_slot: int, last_slot: int) -> tuple[int, int, int]:
        bottom = gap = total = 0
        for b in self._buckets:
            if first_slot <= b.slot <= last_slot:
                bottom += b.bottom
                gap += b.gap
                total += b.total
        return bottom, gap, total

    def report(self) -> dict[str, Any]:
        """Window rates (seed keys), plus ``baseline`` and ``lifetime`` sub-reports."""
        now_slot = self._slot(self._clock())
        window_slots = max(1, math.ceil(self.window / self.bucket_seconds))
        baseline_slots = math.ceil(self.baseline_window / self.bucket_seconds)
        with self._lock:
            self._evict(now_slot)
            recent = self._sum(now_slot - window_slots + 1, now_slot)
            base_last = now_slot - window_slots
            baseline = self._sum(base_last - baseline_slots + 1, base_last)
            lifetime = self._lifetime.report()
        out: dict[str, Any] = dict(rates(*recent))
        out["window_seconds"] = self.window
        out["baseline"] = rates(*baseline)
        out["lifetime"] = lifetime
        return out

    def bottom_rate_rise(self) -> float:
        """Window ⊥ rate divided by the baseline ⊥ rate (inf when the baseline had none, NaN without data)."""
        rep = self.report()
        recent, base = rep["bottom_rate"], rep["baseline"]["bottom_rate"]
        if math.isnan(recent) or math.isnan(base):
            return math.nan
        if base == 0:
            return math.inf if recent > 0 else 1.0
        return float(recent / base)
