"""What the operator asks by signal: SIGTERM/SIGINT stop (after draining), SIGHUP reloads the model.

Installed once, at the very start, and read by start-up and by the loop alike: a signal that arrives while the
worker still retries Redis or Kafka is kept, not lost (SIGHUP's default action used to end the process there).
"""

from __future__ import annotations

import signal
from types import FrameType
from typing import Any


class Signals:
    def __init__(self, log: Any = None) -> None:
        self.log = log
        self.stop = False
        self._reload = False
        self.serving = False

    def install(self) -> Signals:
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, self._on_hup)
        return self

    def _on_stop(self, signum: int, frame: FrameType | None) -> None:
        self.stop = True

    def _on_hup(self, signum: int, frame: FrameType | None) -> None:
        self._reload = True
        if not self.serving and self.log is not None:
            self.log.info("reload_requested_during_startup", signal="SIGHUP")

    def request_reload(self) -> None:
        self._reload = True

    def take_reload(self) -> bool:
        """Whether a reload was asked for since the last call (the request is consumed)."""
        asked, self._reload = self._reload, False
        return asked
