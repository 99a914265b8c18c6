"""Where alerts go: the ``zeroproof.alerts`` topic, structlog, and optionally Alertmanager (v2 API).

Alertmanager expects clients to re-send firing alerts (it resolves an alert on its own once ``endsAt``
passes), so the webhook sink re-posts every firing alert each ``resend`` seconds with ``endsAt`` a few resend
periods ahead, the way Prometheus does. Posting happens on a background thread: a slow or absent Alertmanager
must never stall the consume loop.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import orjson
import structlog

from monitoring.rules import Alert

log = structlog.get_logger("zeroproof.monitor")


class AlertSink(Protocol):
    def emit(self, alert: Alert) -> None: ...

    def restore(self, firing: list[Alert]) -> None:
        """After a restart: alerts an earlier instance announced that are still firing (not re-announced)."""
        ...

    def tick(self, now: float) -> None: ...

    def close(self) -> None: ...


class LogSink:
    """Every alert event as one structured log line (warning when firing, info when resolved)."""

    def emit(self, alert: Alert) -> None:
        fields = alert.to_dict()
        fields.pop("summary")
        if alert.state == "firing":
            log.warning(alert.summary, event_kind="alert", **fields)
        else:
            log.info(alert.summary, event_kind="alert", **fields)

    def restore(self, firing: list[Alert]) -> None:
        return None

    def tick(self, now: float) -> None:
        return None

    def close(self) -> None:
        return None


class MemorySink:
    """Collects alerts in a list: the in-memory ``AlertSink`` (tests, embedding), same interface as the others."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.ticks = 0
        self.restored: list[Alert] = []

    def emit(self, alert: Alert) -> None:
        self.alerts.append(alert)

    def restore(self, firing: list[Alert]) -> None:
        self.restored += firing

    def tick(self, now: float) -> None:
        self.ticks += 1

    def close(self) -> None:
        return None


class KafkaAlertSink:
    """Publishes each alert event to the alerts topic, keyed ``rule/model_version``, and waits for the ack:
    the topic is also the monitor's memory of what it announced (restart recovery reads it back)."""

    def __init__(
        self,
        client: Mapping[str, Any],
        topic: str,
        client_id: str = "zeroproof-monitor",
        timeout: float = 30.0,
        compression: str = "none",
    ) -> None:
        from kafka import KafkaProducer

        self.topic = topic
        self._producer = KafkaProducer(
            **client,
            client_id=f"{client_id}-alerts",
            acks="all",
            retries=5,
            linger_ms=0,
            compression_type=None if compression == "none" else compression,
            request_timeout_ms=int(timeout * 1000),
            max_block_ms=int(timeout * 1000),
            bootstrap_timeout_ms=int(timeout * 1000),
        )
        self.timeout = timeout

    def emit(self, alert: Alert) -> None:
        try:
            self._producer.send(self.topic, key=alert.key.encode(), value=orjson.dumps(alert.to_dict())).get(timeout=15)
        except Exception as exc:  # the alert still reaches the log and the webhook
            log.error("alert publish failed", topic=self.topic, alert_id=alert.alert_id, error=repr(exc))

    def restore(self, firing: list[Alert]) -> None:
        return None  # already on the topic: that is where they were recovered from

    def tick(self, now: float) -> None:
        return None

    def close(self) -> None:
        try:
            self._producer.flush(timeout=5)
        finally:
            self._producer.close(timeout=5)


def _rfc3339(t: float) -> str:
    return dt.datetime.fromtimestamp(t, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def alertmanager_payload(alert: Alert, now: float, resend: float) -> dict[str, Any]:
    """One element of the ``POST /api/v2/alerts`` body (postableAlert)."""
    ends = alert.ended_at if alert.state == "resolved" and alert.ended_at is not None else now + 4 * resend
    return {
        "labels": {
            "alertname": f"Zeroproof_{alert.rule}",
            "rule": alert.rule,
            "model_version": alert.model_version,
            "service": "zeroproof",
            "severity": "warning" if alert.rule != "no_data" else "critical",
        },
        "annotations": {
            "summary": alert.summary,
            "value": "" if alert.value is None else f"{alert.value:.6g}",
            "threshold": f"{alert.threshold:.6g}",
            "clear_level": f"{alert.clear_level:.6g}",
            "window": alert.window,
        },
        "startsAt": _rfc3339(alert.started_at),
        "endsAt": _rfc3339(max(ends, alert.started_at)),
    }


class AlertmanagerSink:
    """Alertmanager-compatible webhook: ``POST {url}/api/v2/alerts``, with an ``Authorization`` header (basic or
    bearer) and a CA for HTTPS where configured."""

    def __init__(
        self,
        url: str,
        resend: float = 60.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.time,
        headers: Mapping[str, str] | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.endpoint = url if url.endswith("/api/v2/alerts") else url + "/api/v2/alerts"
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.ssl_context = ssl_context
        self.resend = resend
        self.timeout = timeout
        self.clock = clock
        self.firing: dict[str, Alert] = {}
        self._last_resend = clock()
        self._queue: queue.Queue[list[dict[str, Any]] | None] = queue.Queue(maxsize=1000)
        self.posted = 0
        self.failed = 0
        self._thread = threading.Thread(target=self._run, name="alertmanager-sink", daemon=True)
        self._thread.start()

    def emit(self, alert: Alert) -> None:
        if alert.state == "firing":
            self.firing[alert.key] = alert
        else:
            self.firing.pop(alert.key, None)
        self._enqueue([alertmanager_payload(alert, self.clock(), self.resend)])

    def restore(self, firing: list[Alert]) -> None:
        """Keep re-sending alerts that were firing before a restart, or Alertmanager would time them out."""
        for alert in firing:
            self.firing[alert.key] = alert
        if firing:
            self._enqueue([alertmanager_payload(a, self.clock(), self.resend) for a in firing])

    def tick(self, now: float) -> None:
        if self.firing and now - self._last_resend >= self.resend:
            self._last_resend = now
            self._enqueue([alertmanager_payload(a, now, self.resend) for a in self.firing.values()])

    def _enqueue(self, body: list[dict[str, Any]]) -> None:
        try:
            self._queue.put_nowait(body)
        except queue.Full:
            self.failed += 1
            log.error("alertmanager queue full, dropping a post", endpoint=self.endpoint)

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            if body is None:
                return
            self._post(body)

    def _post(self, body: list[dict[str, Any]]) -> None:
        data = json.dumps(body).encode()
        for attempt in range(3):
            req = urllib.request.Request(self.endpoint, data=data, method="POST", headers=self.headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout, context=self.ssl_context) as resp:
                    resp.read()
                self.posted += 1
                return
            except (urllib.error.URLError, OSError, ValueError) as exc:
                if attempt == 2:
                    self.failed += 1
                    log.error("alertmanager post failed", endpoint=self.endpoint, error=repr(exc))
                else:
                    time.sleep(0.5 * (attempt + 1))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=self.timeout * 3 + 2)
