"""Event-time sliding windows of stats counts, per (model version, slice).

Why not ``zeroproof.inference.WindowedSCMMonitor``: that one buckets by the local clock at the moment of
``record()``, keeps one series, and only ⊥/gap. The monitor must bucket by the batch's own ``window_end``
(so that a replay of the stats topic rebuilds the same windows after a restart, and a simulated hour can be
replayed in seconds), keep one series per model version and per value of one input label, and count
fallback, rejected, DLQ and element-level outcomes too. The bucket idea is the same.

A window ``[end - length, end)`` sums the buckets whose start lies in it; ``end`` and ``length`` are multiples
of the bucket width, so a batch counts in a window exactly when its ``window_end`` lies in that interval.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from service.wire import OTHER_LABEL_VALUE, StatsMessage

FIELDS = (
    "total",
    "bottom",
    "gap",
    "fallback",
    "rejected",
    "dlq",
    "elements_total",
    "elements_bottom",
    "elements_gap",
    "batches",
)
_N_FIELDS = len(FIELDS)
ALL = "all"
LABEL = "label"
SHADOW = "shadow"
OTHER_VALUE = OTHER_LABEL_VALUE


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """``kind`` is ``all`` (whole model version), ``label`` (``value`` = the label's value) or ``shadow``
    (``value`` = ``"tau_infer:tau_train"`` of a candidate threshold pair the workers evaluate on the side)."""

    model_version: str
    kind: str = ALL
    value: str = ""


def shadow_value(tau_infer: float, tau_train: float | None) -> str:
    return f"{tau_infer:g}:{'none' if tau_train is None else format(tau_train, 'g')}"


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


@dataclass(frozen=True, slots=True)
class WindowCounts:
    """Sums over one window; rates are ``None`` when the window holds no predictions (not 0, not 1)."""

    total: int = 0
    bottom: int = 0
    gap: int = 0
    fallback: int = 0
    rejected: int = 0
    dlq: int = 0
    elements_total: int = 0
    elements_bottom: int = 0
    elements_gap: int = 0
    batches: int = 0
    span: float = 0.0

    @property
    def bottom_rate(self) -> float | None:
        return _ratio(self.bottom, self.total)

    @property
    def gap_rate(self) -> float | None:
        return _ratio(self.gap, self.total)

    @property
    def coverage(self) -> float | None:
        """Contract §1, the monitor's notion: 1 − bottom_rate − gap_rate (share accepted as is)."""
        return None if self.total <= 0 else 1.0 - (self.bottom + self.gap) / self.total

    @property
    def fallback_rate(self) -> float | None:
        return _ratio(self.fallback, self.total)

    @property
    def rejected_rate(self) -> float | None:
        return _ratio(self.rejected, self.total)

    @property
    def dlq_rate(self) -> float | None:
        """Share of incoming messages that were unusable (DLQ) among all the workers received."""
        return _ratio(self.dlq, self.total + self.dlq)

    @property
    def element_bottom_rate(self) -> float | None:
        return _ratio(self.elements_bottom, self.elements_total)

    @property
    def element_gap_rate(self) -> float | None:
        return _ratio(self.elements_gap, self.elements_total)

    @property
    def throughput(self) -> float | None:
        """Predictions per second over the part of the window the monitor has seen."""
        return self.total / self.span if self.span > 0 else None


class BucketRing:
    """Fixed-size ring of count buckets indexed by absolute slot number; memory is O(slots), not O(time)."""

    def __init__(self, n_slots: int) -> None:
        self.n_slots = n_slots
        self.counts: npt.NDArray[np.int64] = np.zeros((n_slots, _N_FIELDS), dtype=np.int64)
        self.slots: npt.NDArray[np.int64] = np.full(n_slots, np.iinfo(np.int64).min, dtype=np.int64)
        self.first_slot: int | None = None
        self.last_slot: int | None = None

    def add(self, slot: int, values: npt.NDArray[np.int64]) -> None:
        row = slot % self.n_slots
        if self.slots[row] != slot:
            if self.slots[row] > slot:
                return  # older than what the ring holds: the caller's lateness check should prevent this
            self.slots[row] = slot
            self.counts[row, :] = 0
        self.counts[row, :] += values
        if self.first_slot is None or slot < self.first_slot:
            self.first_slot = slot
        if self.last_slot is None or slot > self.last_slot:
            self.last_slot = slot

    def sum(self, lo: int, hi: int) -> npt.NDArray[np.int64]:
        """Sum of the buckets with ``lo <= slot < hi``."""
        mask = (self.slots >= lo) & (self.slots < hi)
        out: npt.NDArray[np.int64] = self.counts[mask].sum(axis=0)
        return out


class WindowStore:
    """All series. ``add`` takes one parsed stats message; ``window`` answers sums over any window that ends
    at or before the watermark and starts no earlier than ``horizon`` before it."""

    def __init__(
        self,
        bucket: float,
        horizon: float,
        label: str | None = None,
        max_label_values: int = 200,
    ) -> None:
        if bucket <= 0 or horizon <= 0:
            raise ValueError("bucket and horizon must be > 0")
        self.bucket = bucket
        self.horizon = horizon
        self.label = label
        self.max_label_values = max_label_values
        self.n_slots = math.ceil(horizon / bucket) + 2
        self._series: dict[SeriesKey, BucketRing] = {}
        self._label_values: dict[str, set[str]] = {}
        self.live_thresholds: dict[str, tuple[float, float | None]] = {}
        self.watermark: float | None = None
        self.late_dropped = 0

    def slot(self, t: float) -> int:
        return math.floor(t / self.bucket + 1e-9)

    def _ring(self, key: SeriesKey) -> BucketRing:
        ring = self._series.get(key)
        if ring is None:
            ring = self._series[key] = BucketRing(self.n_slots)
        return ring

    def add(self, msg: StatsMessage) -> bool:
        """Count one batch in its bucket; ``False`` (and counted as late) if it is older than the horizon."""
        t = msg.window_end
        if self.watermark is not None and t < self.watermark - self.horizon + self.bucket:
            self.late_dropped += 1
            return False
        if self.watermark is None or t > self.watermark:
            self.watermark = t
        slot = self.slot(t)
        c = msg.counts
        values = np.array(
            [
                c.total,
                c.bottom,
                c.gap,
                c.fallback,
                c.rejected,
                msg.dlq,
                msg.elements_total,
                msg.elements_bottom,
                msg.elements_gap,
                1,
            ],
            dtype=np.int64,
        )
        version = msg.model_version
        self._ring(SeriesKey(version)).add(slot, values)
        self.live_thresholds[version] = (msg.tau_infer, msg.tau_train)
        if self.label is not None:
            for value, lc in msg.by_label.get(self.label, {}).items():
                seen = self._label_values.setdefault(version, set())
                if value not in seen:
                    if len(seen) >= self.max_label_values:
                        value = OTHER_VALUE  # bound the cardinality: a label with unbounded values is pooled
                    seen.add(value)
                lv = np.array([lc.total, lc.bottom, lc.gap, lc.fallback, lc.rejected, 0, 0, 0, 0, 1], dtype=np.int64)
                self._ring(SeriesKey(version, LABEL, value)).add(slot, lv)
        for sh in msg.shadow:
            sv = np.array(
                [sh.total, sh.bottom, sh.gap, 0, 0, 0, 0, sh.elements_bottom, sh.elements_gap, 1], dtype=np.int64
            )
            self._ring(SeriesKey(version, SHADOW, shadow_value(sh.tau_infer, sh.tau_train))).add(slot, sv)
        return True

    def window(self, key: SeriesKey, end: float, length: float, offset: float = 0.0) -> WindowCounts:
        """Sums over ``[end - offset - length, end - offset)``."""
        ring = self._series.get(key)
        if ring is None or ring.first_slot is None:
            return WindowCounts()
        hi = self.slot(end - offset)
        lo = self.slot(end - offset - length)
        sums = ring.sum(lo, hi)
        # Throughput divides by the part of the window that had a chance to hold data for this series.
        span = max(0.0, min(length, (hi - max(lo, ring.first_slot)) * self.bucket))
        return WindowCounts(**{name: int(v) for name, v in zip(FIELDS, sums, strict=True)}, span=span)

    def series(self) -> Iterator[SeriesKey]:
        return iter(list(self._series))

    def model_versions(self) -> list[str]:
        return sorted({k.model_version for k in self._series if k.kind == ALL})

    def forget_idle(self, now: float) -> list[str]:
        """Drop the series of model versions with no data in the horizon (retired versions); returns them."""
        gone: list[str] = []
        for key, ring in list(self._series.items()):
            if ring.last_slot is not None and (ring.last_slot + 1) * self.bucket <= now - self.horizon:
                del self._series[key]
                if key.kind == ALL:
                    gone.append(key.model_version)
                    self.live_thresholds.pop(key.model_version, None)
                    self._label_values.pop(key.model_version, None)
        return gone
