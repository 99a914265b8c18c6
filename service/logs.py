"""One logging set-up for every service: structlog to stderr (JSON lines by default), secrets scrubbed from
every event, kafka-python's stdlib logging kept at its own level and scrubbed too."""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal

import structlog

from service.secrets import scrub

LogLevel = Literal["debug", "info", "warning", "error"]
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class _ScrubbingFilter(logging.Filter):
    """Client libraries log through stdlib logging; their messages may quote a connection string."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = scrub(record.getMessage())
        record.args = None
        return True


def configure(
    service: str, level: LogLevel = "info", json: bool = True, kafka_level: LogLevel = "warning", **context: Any
) -> Any:
    """Configure structlog and stdlib logging for ``service``; returns a logger bound to ``service`` and
    ``context`` (e.g. ``worker_id``)."""
    from service.secrets import scrub_event

    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            scrub_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_ScrubbingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(_LEVELS.get(kafka_level, logging.WARNING))
    bound = {k: v for k, v in context.items() if v is not None}
    return structlog.get_logger(service).bind(service=service, **bound)
