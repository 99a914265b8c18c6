"""``zeroproof-monitor`` / ``python -m monitoring``: settings, logging, signals, then the consume loop.

Exit codes: 0 clean stop, 1 Kafka or the metrics endpoint unusable, 2 invalid configuration (one line), 3 a stats
record batch that can be neither decoded nor held back on its own partition."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import structlog

from monitoring.settings import SettingsError, load_settings
from service import logs, secrets


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        sys.stderr.write(f"zeroproof-monitor: {exc}\n")
        return 2
    secrets.register(settings.secrets())
    logs.configure("zeroproof-monitor", settings.log_level, json=settings.log_json)
    log = structlog.get_logger("zeroproof.monitor")
    log.info("configuration", **settings.redacted())

    from kafka.errors import KafkaError

    from monitoring.service import MonitorService
    from service.kafka import UndecodableInputError

    stop = threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("stopping", signal=signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        MonitorService(settings).run(stop)
    except KafkaError as exc:
        sys.stderr.write(
            f"zeroproof-monitor: cannot use Kafka at {settings.kafka_bootstrap} (ZEROPROOF_KAFKA_BOOTSTRAP): "
            f"{type(exc).__name__}\n"
        )
        return 1
    except OSError as exc:
        sys.stderr.write(
            f"zeroproof-monitor: {secrets.scrub(str(exc))} (check ZEROPROOF_METRICS_PORT / ZEROPROOF_METRICS_HOST)\n"
        )
        return 1
    except UndecodableInputError as exc:  # a stats batch it can neither decode nor hold back: stop, never spin
        log.error("stats_undecodable", error=secrets.scrub(str(exc)))
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
