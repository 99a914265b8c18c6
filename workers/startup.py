"""Start-up steps of the worker that wait on the outside world: retry with backoff, wait for the input topic.

Each wait logs what it waits for (once, then at a low rate) and gives up only when a stop signal arrives, so an
operator who starts the worker before Redis, the broker or the input topic sees why it is not serving yet.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from workers.backoff import Backoff

T = TypeVar("T")


class StoppedError(Exception):
    """A stop signal arrived while we were still starting."""


def sleep_unless_stopped(seconds: float, should_stop: Callable[[], bool]) -> None:
    """Sleep in short steps; raise :class:`StoppedError` as soon as ``should_stop()`` says so."""
    end = time.monotonic() + seconds
    while True:
        if should_stop():
            raise StoppedError()
        left = end - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(0.05, left))


def with_backoff(
    what: str,
    connect: Callable[[], T],
    log: Any,
    should_stop: Callable[[], bool],
    max_backoff_s: float,
    timeout_s: float = 0.0,
) -> T:
    """Retry ``connect`` with capped exponential backoff and one clear log line per attempt; never a crash loop.

    ``timeout_s`` > 0 gives up (re-raising the last error) after that long; 0 retries until stopped.
    """
    backoff = Backoff(initial=0.25, cap=max_backoff_s)
    attempt = 0
    started = time.monotonic()
    while True:
        attempt += 1
        delay = backoff.delay(attempt)
        try:
            result = connect()
            if attempt > 1:
                log.info(f"{what}_connected", attempts=attempt)
            return result
        except Exception as exc:
            if timeout_s and time.monotonic() - started > timeout_s:
                raise
            log.warning(
                f"{what}_unreachable",
                error=str(exc) or type(exc).__name__,
                attempt=attempt,
                retry_in_s=round(delay, 2),
                message=f"{what} not reachable; retrying in {delay:.2f}s",
            )
        sleep_unless_stopped(delay, should_stop)


def wait_for_topic(
    topic: str,
    partitions: Callable[[], int],
    log: Any,
    should_stop: Callable[[], bool],
    retry_s: float = 1.0,
    report_every_s: float = 30.0,
) -> int:
    """Block until ``partitions()`` reports the input topic with at least one partition; return the count.

    Why: a consumer that joins its group before the topic's metadata is known gets an empty assignment, and with
    some brokers (tansu) the group never hands the partitions over afterwards. ``partitions`` raises or returns
    0 while the topic does not exist; the wait logs ``input_topic_missing`` once, then every ``report_every_s``.
    """
    started = time.monotonic()
    reported_at: float | None = None
    while True:
        error: str | None = None
        try:
            n = partitions()
        except Exception as exc:
            n, error = 0, str(exc) or type(exc).__name__
        if n > 0:
            if reported_at is not None:
                log.info("input_topic_ready", topic=topic, partitions=n, waited_s=round(time.monotonic() - started, 1))
            return n
        now = time.monotonic()
        if reported_at is None or now - reported_at >= report_every_s:
            reported_at = now
            log.warning(
                "input_topic_missing",
                topic=topic,
                waited_s=round(now - started, 1),
                error=error,
                message=f"input topic {topic} does not exist (or has no partition leader yet); waiting for it",
            )
        sleep_unless_stopped(retry_s, should_stop)
