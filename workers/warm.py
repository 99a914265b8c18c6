"""Keep the model's code path warm while the input is idle.

After ten idle seconds the first record's forward and decode took 7-12 ms on the benchmark's 2-core VM instead
of ~0.6 ms (cold caches and code pages: the tiny model's weights are not the cost, torch's dispatch path is), so
the first record after a quiet spell paid ~15 ms more than the next ones (docs/benchmarks.md, "Peers"). One
forward and strict decode of a row of zeros every ``interval_s`` while nothing else is to be done keeps that
path warm: at a 1 s interval the first record after idle took 3-5 ms to process and arrived ~6 ms sooner.
It is off by default because the warm-up is itself a cold forward: it cost 0.5-0.9 % of a core, which took the
idle worker from ~1.5 % to ~2.1-2.8 % (issue 15 asks for ≤ 2 %); it is there for whoever prefers the latency.

The warm-up never touches what the worker serves: no record, no stats, no metrics, no fallback state (the
pipeline's own ``process_batch`` updates the fallback chain, so it is not what runs here).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from workers.model import ModelRuntime
from zeroproof.inference import strict_inference


class KeepWarm:
    """``touch()`` after every real forward; ``maybe_run()`` when the loop has nothing to do."""

    def __init__(
        self,
        runtime: Callable[[], ModelRuntime],
        interval_s: float,
        log: Any,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._runtime = runtime
        self.interval_s = interval_s
        self._log = log
        self._clock = clock
        self._last = clock()
        self.runs = 0
        #: off after the model raised on the warm-up row (logged once): it is then not ours to call again
        self.disabled = interval_s <= 0

    def touch(self) -> None:
        self._last = self._clock()

    def maybe_run(self) -> bool:
        """Run the warm-up if the last forward is ``interval_s`` old; True when it ran."""
        if self.disabled:
            return False
        now = self._clock()
        if now - self._last < self.interval_s:
            return False
        self._last = now
        rt = self._runtime()
        width = rt.in_features
        if width is None:  # a TorchScript file that has served nothing yet: no width to warm with
            return False
        try:
            N, D, failed = rt.forward(np.zeros((1, width), dtype=np.float32))
            if not failed:
                strict_inference(N, D, rt.config)
        except Exception as exc:  # a model that rejects zeros must not stop the worker: warm-up goes off
            self.disabled = True
            self._log.warning("keep_warm_disabled", error=repr(exc))
            return False
        self.runs += 1
        return True


__all__ = ["KeepWarm"]
