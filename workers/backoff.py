"""Capped exponential backoff, one value object for every retry of the worker (start-up, Redis, sends)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Attempt 1 waits ``initial``, each next one twice as long, never more than ``cap`` seconds."""

    initial: float
    cap: float

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.initial * 2.0 ** min(max(attempt, 1) - 1, 30))
