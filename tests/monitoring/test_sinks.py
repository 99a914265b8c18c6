from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from harness.monitor import T0
from monitoring.rules import COVERAGE, NO_DATA, Alert
from monitoring.simulate import SimClock
from monitoring.sinks import AlertmanagerSink, alertmanager_payload

pytestmark = pytest.mark.unit

FIRING = Alert(COVERAGE, "firing", "v3", 0.85, 0.9, 0.92, "5m", 300, T0, T0 + 60, T0 + 60, volume=5000)
RESOLVED = Alert(COVERAGE, "resolved", "v3", 0.95, 0.9, 0.92, "5m", 300, T0, T0 + 60, T0 + 600, T0 + 600)


def test_payload_follows_the_v2_postable_alert_shape() -> None:
    p = alertmanager_payload(FIRING, now=T0 + 60, resend=60)
    assert set(p) == {"labels", "annotations", "startsAt", "endsAt"}
    assert p["labels"]["alertname"] == "Zeroproof_coverage_low"
    assert p["labels"]["model_version"] == "v3"
    assert p["startsAt"] == "2026-01-15T00:00:00Z"
    assert p["endsAt"] == "2026-01-15T00:05:00Z"  # now + 4 resend periods: Alertmanager keeps it open
    assert all(isinstance(v, str) for v in p["annotations"].values())
    r = alertmanager_payload(RESOLVED, now=T0 + 700, resend=60)
    assert r["endsAt"] == "2026-01-15T00:10:00Z"  # resolved: the real end
    assert (
        alertmanager_payload(Alert(NO_DATA, "firing", "*", 200.0, 120.0, 120.0, "2m", 120, T0, T0, T0), T0, 60)[
            "labels"
        ]["severity"]
        == "critical"
    )


class FakeAlertmanager:
    """A real HTTP server that records what is POSTed to /api/v2/alerts (answers 200 like Alertmanager)."""

    def __init__(self) -> None:
        self.posts: list[list[dict[str, Any]]] = []
        self.authorization: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/api/v2/alerts":
                    outer.authorization.append(self.headers.get("Authorization"))
                    outer.posts.append(json.loads(body))
                    self.send_response(200)
                else:
                    self.send_response(404)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.posts) < n and time.monotonic() < deadline:
            time.sleep(0.01)


@pytest.fixture
def alertmanager() -> Iterator[FakeAlertmanager]:
    am = FakeAlertmanager()
    yield am
    am.server.shutdown()


def test_webhook_posts_resends_and_resolves(alertmanager: FakeAlertmanager) -> None:
    clock = SimClock(T0 + 60)
    sink = AlertmanagerSink(alertmanager.url, resend=60, timeout=2, clock=clock)
    try:
        sink.emit(FIRING)
        alertmanager.wait(1)
        sink.tick(T0 + 90)  # before the resend period: nothing
        sink.tick(T0 + 125)  # firing alerts are re-sent so Alertmanager does not time them out
        alertmanager.wait(2)
        sink.emit(RESOLVED)
        alertmanager.wait(3)
        sink.tick(T0 + 1000)  # nothing firing: nothing re-sent
        time.sleep(0.1)
    finally:
        sink.close()
    assert len(alertmanager.posts) == 3
    first, resend, resolved = alertmanager.posts
    assert first[0]["labels"]["rule"] == COVERAGE
    assert resend[0]["startsAt"] == first[0]["startsAt"]
    assert resolved[0]["endsAt"] == "2026-01-15T00:10:00Z"
    assert sink.failed == 0


def test_webhook_failure_never_blocks_or_raises() -> None:
    sink = AlertmanagerSink("http://127.0.0.1:1", resend=60, timeout=0.5)
    t = time.monotonic()
    sink.emit(FIRING)
    assert time.monotonic() - t < 0.1  # posting happens on the sink's own thread
    sink.close()
    assert sink.failed == 1


def test_webhook_restore_keeps_recovered_alerts_alive(alertmanager: FakeAlertmanager) -> None:
    clock = SimClock(T0 + 3600)
    sink = AlertmanagerSink(alertmanager.url, resend=60, timeout=2, clock=clock)
    try:
        sink.restore([FIRING])
        alertmanager.wait(1)
        sink.tick(T0 + 3600 + 61)
        alertmanager.wait(2)
    finally:
        sink.close()
    assert len(alertmanager.posts) == 2
    assert alertmanager.posts[1][0]["startsAt"] == "2026-01-15T00:00:00Z"


def test_webhook_sends_the_configured_bearer_token(alertmanager: FakeAlertmanager) -> None:
    from service.alertmanager import AlertmanagerSettings

    am = AlertmanagerSettings(alertmanager_url=alertmanager.url, alertmanager_bearer_token="tok-Zr-8c1")
    endpoint = am.alertmanager_endpoint()
    assert endpoint is not None
    sink = AlertmanagerSink(endpoint, resend=60, timeout=2, headers=am.alertmanager_headers())
    try:
        sink.emit(FIRING)
        alertmanager.wait(1)
    finally:
        sink.close()
    assert alertmanager.authorization == ["Bearer tok-Zr-8c1"]
