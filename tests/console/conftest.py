"""Console fixtures: review records in a real Redis, and the app in-process (Starlette's TestClient)."""

from __future__ import annotations

import re
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis

from console.feeds import OverviewCore, OverviewData
from console.settings import load_settings
from harness.worker import Topics
from service.review import RedisReviewStore, ReviewItem

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette 1.x suggests httpx2 for its test client; httpx works
    from starlette.testclient import TestClient

HOSTILE_ID = "<script>alert(1)</script>\x1b[2J\r"


def record_item(
    offset: int,
    ident: str | None = None,
    entity: str | None = "robot-1",
    model: str = "known-pole-1",
    features: list[float | None] | None = None,
    labels: dict[str, str] | None = None,
    t: float | None = None,
    bottom: list[bool] | None = None,
) -> ReviewItem:
    """A review record as the worker writes it (service.review's layout), one ⊥ element of two by default."""
    ident = ident if ident is not None else f"in-{offset}"
    bottom = bottom if bottom is not None else [True, False]
    t = t if t is not None else time.time()
    doc: dict[str, Any] = {
        "id": ident,
        "entity": entity,
        "input": {"id": ident, "features": features or [0.5], "entity": entity, "ts": None, "labels": labels or {}},
        "key": entity,
        "N": [-2.0, 3.0][: len(bottom)],
        "D": [0.0, 1.5][: len(bottom)],
        "value": [None if b else 2.0 for b in bottom],
        "bottom": bottom,
        "gap": [False] * len(bottom),
        "nonfinite_input": False,
        "model_version": model,
        "tau_infer": 1e-6,
        "tau_train": 1e-4,
        "topic": "zeroproof.inputs",
        "partition": 0,
        "offset": offset,
        "recorded_at": t,
    }
    return ReviewItem(ident, f"zeroproof.inputs:0:{offset}", orjson.dumps(doc), t)


class FixedFeeds:
    """The overview's Kafka side, fed in the test."""

    def __init__(self, core: OverviewCore) -> None:
        self.core = core

    def view(self) -> OverviewData:
        return self.core.view()


class Replays:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []

    def __call__(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> str:
        self.sent.append((topic, key, value, headers))
        return f"{topic}:0:{1000 + len(self.sent)}"


@pytest.fixture
def store(redis_url: str) -> RedisReviewStore:
    return RedisReviewStore(redis.Redis.from_url(redis_url), Topics().redis_prefix)


AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(store: RedisReviewStore, redis_url: str) -> Iterator[AppFactory]:
    """``make_client(**settings)`` → a TestClient of the console on ``store`` (stub Kafka side, stub replays)."""
    from console.app import create_app

    clients: list[TestClient] = []

    def make(
        core: OverviewCore | None = None,
        replays: Replays | None = None,
        on: RedisReviewStore | None = None,
        **overrides: Any,
    ) -> TestClient:
        overrides.setdefault("redis_url", redis_url)
        settings = load_settings([], redis_key_prefix=store.prefix, **overrides)
        core = core or OverviewCore(settings.monitor_settings(), settings.console_chart_window)
        app = create_app(settings, on or store, FixedFeeds(core), replays or Replays())
        client = TestClient(app, base_url="http://127.0.0.1:8080")
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert m is not None, "no CSRF field on the page"
    return m.group(1)
