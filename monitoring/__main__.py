"""``zeroproof-monitor`` / ``python -m monitoring``: settings, logging, signals, then the consume loop."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

import structlog

from monitoring.settings import MonitorSettings, SettingsError, load_settings


def configure_logging(settings: MonitorSettings) -> None:
    level = getattr(logging, settings.log_level.upper())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if settings.log_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        sys.stderr.write(f"zeroproof-monitor: {exc}\n")
        return 2
    configure_logging(settings)
    log = structlog.get_logger("zeroproof.monitor")
    log.info("configuration", **settings.redacted())

    from kafka.errors import KafkaError

    from monitoring.service import MonitorService

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
        sys.stderr.write(f"zeroproof-monitor: {exc} (check ZEROPROOF_METRICS_PORT / ZEROPROOF_METRICS_HOST)\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
