"""Synthetic stats streams with known ground truth, for scenario replays, the benchmark and alert drills.

A :class:`Phase` fixes the per-prediction ⊥/gap probabilities for a stretch of simulated time; workers emit
one batch every ``period`` seconds with Binomial counts. Because the rates are known, a test can say when an
alert must fire without trusting the code under test. :class:`SimClock` is the injectable clock a replay
advances alongside the data it publishes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from service.wire import Counts, ShadowCounts, StatsMessage


class SimClock:
    """A settable clock (thread-safe): ``clock()`` returns the simulated now."""

    def __init__(self, now: float) -> None:
        self._now = now
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def set(self, now: float) -> None:
        with self._lock:
            self._now = max(self._now, now)


@dataclass(frozen=True)
class Phase:
    """From ``start`` (seconds after the scenario's origin) until the next phase: these probabilities."""

    start: float
    bottom: float
    gap: float = 0.0
    fallback: float = 0.0
    dlq: float = 0.0


@dataclass(frozen=True)
class Stream:
    """``workers`` workers of one model version, each emitting a batch of ``batch`` predictions per ``period``."""

    model_version: str
    phases: Sequence[Phase]
    workers: int = 4
    batch: int = 50
    period: float = 2.0
    label: str | None = None
    label_values: Sequence[str] = ()
    shadow: bool = False
    tau_infer: float = 1e-6
    tau_train: float | None = 1e-4

    def phase_at(self, t: float) -> Phase:
        current = self.phases[0]
        for p in self.phases:
            if p.start <= t:
                current = p
        return current


def generate(
    streams: Sequence[Stream], origin: float, duration: float, seed: int = 0
) -> Iterator[tuple[float, str, StatsMessage]]:
    """All batches of all streams in event-time order: ``(window_end, worker_id, message)``."""
    rng = np.random.default_rng(seed)
    events: list[tuple[float, int, int]] = []
    for si, st in enumerate(streams):
        for w in range(st.workers):
            # Workers are not in lock-step: each starts at its own offset within the period.
            t = st.period * (w + 1) / (st.workers + 1)
            while t < duration:
                events.append((t, si, w))
                t += st.period
    events.sort()
    for t, si, w in events:
        st = streams[si]
        ph = st.phase_at(t)
        n = st.batch
        bottom = int(rng.binomial(n, ph.bottom))
        gap = int(rng.binomial(n - bottom, min(1.0, ph.gap / max(1e-12, 1.0 - ph.bottom)))) if n > bottom else 0
        fallback = int(rng.binomial(bottom, ph.fallback)) if bottom else 0
        dlq = int(rng.binomial(n, ph.dlq)) if ph.dlq else 0
        counts = Counts(total=n, bottom=bottom, gap=gap, fallback=fallback, rejected=bottom - fallback)
        by_label: dict[str, dict[str, Counts]] = {}
        if st.label and st.label_values:
            # Split the batch across label values; the first value gets the ⊥ and gap outcomes.
            values = list(st.label_values)
            share = n // len(values)
            parts = {v: Counts(total=share) for v in values[1:]}
            first = n - share * (len(values) - 1)
            parts[values[0]] = Counts(total=first, bottom=min(bottom, first), gap=min(gap, first - min(bottom, first)))
            by_label[st.label] = parts
        shadow = []
        if st.shadow:
            sb = int(rng.binomial(n, min(1.0, ph.bottom * 2)))
            shadow.append(ShadowCounts(tau_infer=st.tau_infer * 10, tau_train=st.tau_train, total=n, bottom=sb, gap=0))
        worker_id = f"{st.model_version}-w{w}"
        end = origin + t
        msg = StatsMessage(
            worker_id=worker_id,
            model_version=st.model_version,
            tau_infer=st.tau_infer,
            tau_train=st.tau_train,
            window_start=end - st.period,
            window_end=end,
            counts=counts,
            dlq=dlq,
            elements_total=n,
            elements_bottom=bottom,
            elements_gap=gap,
            by_label=by_label,
            shadow=shadow,
        )
        yield end, worker_id, msg


def encode(msg: StatsMessage) -> bytes:
    return msg.model_dump_json(by_alias=True).encode()
