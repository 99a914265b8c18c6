"""structlog JSON logs on stderr (one object per line), filtered by ``ZEROPROOF_LOG_LEVEL``."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure(
    level: str = "info", service: str = "zeroproof-worker", worker_id: str | None = None, kafka_level: str = "warning"
) -> Any:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    # kafka-python logs through stdlib logging; keep its noise (and nothing secret) at WARNING on stderr.
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("kafka").setLevel(_LEVELS.get(kafka_level, logging.WARNING))
    log = structlog.get_logger(service)
    return log.bind(service=service, worker_id=worker_id) if worker_id else log.bind(service=service)
