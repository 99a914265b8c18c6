"""Hot reload: swap the served model between batches, on SIGHUP or when its files change on disk.

Every batch is served by exactly one (model version, thresholds) pair and each output names it: the runtime is
only read when a batch is dispatched, in the loop's thread, so swapping it here is "between batches" even under
load. A file that fails to load is refused once (``reload_failed``, the old model keeps serving) and not tried
again until it changes again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.metrics import WorkerMetrics
from workers.model import ModelLoadError, ModelRuntime, fingerprint


def _fingerprints(model: Path | None, thresholds: Path | None) -> tuple[object, object]:
    def fp(path: Path | None) -> object:
        if path is None:
            return None
        try:
            return fingerprint(path)
        except OSError:
            return "missing"

    return fp(model), fp(thresholds)


class Reloader:
    def __init__(
        self,
        runtime: ModelRuntime,
        load: Callable[[ModelRuntime], ModelRuntime],
        model_file: Path | None,
        thresholds_file: Path | None,
        check_every_s: float,
        metrics: WorkerMetrics,
        log: Any,
    ) -> None:
        self.runtime = runtime
        self.load = load
        self.files = (model_file, thresholds_file)
        self.check_every_s = check_every_s
        self.metrics = metrics
        self.log = log
        self.next_check = time.monotonic() + check_every_s
        #: the files as last loaded, or as last refused: a change from these is what triggers a reload
        self.seen: tuple[object, object] = (runtime.file_fingerprint, runtime.thresholds_fingerprint)
        metrics.set_model(runtime.model_version, runtime.config.tau_infer, runtime.config.tau_train)

    def _changed(self, now: float) -> bool:
        if self.check_every_s <= 0 or now < self.next_check:
            return False
        self.next_check = now + self.check_every_s
        current = _fingerprints(*self.files)
        return any(
            path is not None and fp != seen for path, fp, seen in zip(self.files, current, self.seen, strict=True)
        )

    def maybe_reload(self, requested: bool) -> ModelRuntime:
        """The runtime to serve the next batch with: a new one if asked for or its files changed and it loads."""
        changed = self._changed(time.monotonic())
        if not (changed or requested):
            return self.runtime
        trigger = "sighup" if requested else "file_change"
        old = self.runtime
        try:
            new = self.load(old)
        except (ModelLoadError, OSError, ValueError) as exc:
            self.metrics.reloads.labels("failed").inc()
            self.log.error("reload_failed", trigger=trigger, error=str(exc), keeping=old.model_version)
            self.seen = _fingerprints(*self.files)  # not again until the files change again
            return old
        self.runtime = new
        self.seen = (new.file_fingerprint, new.thresholds_fingerprint)
        self.metrics.reloads.labels("ok").inc()
        self.metrics.set_model(new.model_version, new.config.tau_infer, new.config.tau_train)
        self.log.info(
            "model_reloaded",
            trigger=trigger,
            old_version=old.model_version,
            model_version=new.model_version,
            tau_infer=new.config.tau_infer,
            tau_train=new.config.tau_train,
        )
        return new
