"""Threshold perturbation: a fresh ``tau_train`` per optimizer step, drawn log-uniformly from a range.

Training against a jittered margin keeps the model from parking ``|D|`` exactly at one threshold (the seed
page's remedy for a high gap rate). Memory is bounded: only the last ``window`` draws are kept, plus running
count/mean/min/max (the public reference appends every draw to a list for the whole run).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch


class ThresholdPerturbation:
    """Log-uniform ``tau_train`` in ``[low, high]``; reproducible (own generator, saved in checkpoints)."""

    def __init__(self, low: float, high: float, *, window: int = 256, seed: int = 0) -> None:
        if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or high < low:
            raise ValueError(f"need 0 < low <= high (finite), got low={low!r}, high={high!r}")
        if window < 1:
            raise ValueError("window must be >= 1")
        self.low = float(low)
        self.high = float(high)
        self.window = window
        self.recent: deque[float] = deque(maxlen=window)
        self.count = 0
        self._sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        self._gen = torch.Generator().manual_seed(seed)

    def sample(self) -> float:
        u = float(torch.rand((), generator=self._gen, dtype=torch.float64))
        tau = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        tau = min(max(tau, self.low), self.high)
        self.recent.append(tau)
        self.count += 1
        self._sum += tau
        self.min = min(self.min, tau)
        self.max = max(self.max, tau)
        return tau

    def summary(self) -> dict[str, float]:
        mean = self._sum / self.count if self.count else math.nan
        return {"count": float(self.count), "mean": mean, "min": self.min, "max": self.max}

    def state_dict(self) -> dict[str, Any]:
        return {
            "low": self.low,
            "high": self.high,
            "window": self.window,
            "recent": list(self.recent),
            "count": self.count,
            "sum": self._sum,
            "min": self.min,
            "max": self.max,
            "generator": self._gen.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.low = float(state["low"])
        self.high = float(state["high"])
        self.window = int(state["window"])
        self.recent = deque((float(v) for v in state["recent"]), maxlen=self.window)
        self.count = int(state["count"])
        self._sum = float(state["sum"])
        self.min = float(state["min"])
        self.max = float(state["max"])
        self._gen.set_state(state["generator"])
