"""Helpers shared by the reliability scenarios (the worker-process helpers come from ``tests.workers``)."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import redis

from harness.worker import Topics
from service.review import RedisReviewStore


def fast_producer(bootstrap: str, **extra: Any) -> Any:
    """linger 20 ms + 256 KiB batches: ~2x the default produce rate on tansu (see the shared notes)."""
    from kafka import KafkaProducer

    cfg: dict[str, Any] = {"linger_ms": 20, "batch_size": 256 * 1024, "acks": "all"}
    cfg.update(extra)
    return KafkaProducer(bootstrap_servers=bootstrap, **cfg)


def produce_located(
    bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes]], **extra: Any
) -> list[tuple[int, int]]:
    """Send everything, return ``(partition, offset)`` of each item, in order (to match DLQ/output sources)."""
    p = fast_producer(bootstrap, **extra)
    futures = [p.send(topic, key=k, value=v) for k, v in items]
    p.flush(timeout=60)
    out = []
    for f in futures:
        md = f.get(timeout=30)
        out.append((md.partition, md.offset))
    p.close(timeout=5)
    return out


@dataclass
class Stream:
    """Produce ``items`` at ``rate`` per second from a thread; survives broker outages (the client retries)."""

    bootstrap: str
    topic: str
    items: list[tuple[bytes | None, bytes]]
    rate: float
    producer_extra: dict[str, Any] = field(default_factory=dict)
    sent: int = 0
    failed: list[int] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="stream")

    def start(self) -> Stream:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            p = fast_producer(self.bootstrap, linger_ms=5, **self.producer_extra)
            futures = []
            t0 = time.monotonic()
            for i, (k, v) in enumerate(self.items):
                if self._stop.is_set():
                    break
                due = t0 + i / self.rate
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                futures.append(p.send(self.topic, key=k, value=v))
                self.sent += 1
            p.flush(timeout=120)
            for i, f in enumerate(futures):
                try:
                    f.get(timeout=60)
                except Exception:
                    self.failed.append(i)
            p.close(timeout=5)
        except BaseException as exc:  # surfaced by join()
            self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "producer thread did not finish"
        assert self.error is None, repr(self.error)

    def stop(self) -> None:
        self._stop.set()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(port: int, timeout: float = 2.0) -> dict[str, float]:
    """``/metrics`` as ``{"name{labels}": value}``; empty if the endpoint does not answer."""
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in body.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def scrape_text(port: int, timeout: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as resp:
        return str(resp.read().decode())


class Sampler:
    """Samples ``fn()`` every ``every_s`` in a thread (RSS, metrics) until stopped."""

    def __init__(self, fn: Callable[[], Any], every_s: float = 0.25) -> None:
        self.fn = fn
        self.every_s = every_s
        self.samples: list[tuple[float, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="sampler")

    def _run(self) -> None:
        t0 = time.monotonic()
        while not self._stop.is_set():
            try:
                v = self.fn()
            except Exception:
                v = None
            if v is not None:
                self.samples.append((round(time.monotonic() - t0, 3), v))
            self._stop.wait(self.every_s)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def rss_mib(pid: int) -> float:
    return round(float(psutil.Process(pid).memory_info().rss) / 2**20, 1)


def review_records(url: str, topics: Topics) -> dict[str, dict[str, Any]]:
    """Every review record of ``topics``' prefix by input id: ``{id: {"deliveries": n, "status": s, "pending":
    bool, "source": s}}``. The scenarios use unique ids, so a second record for an id (a redelivery recorded
    twice) fails here."""
    store = RedisReviewStore(redis.Redis.from_url(url), topics.redis_prefix)
    out: dict[str, dict[str, Any]] = {}
    try:
        for status in ("pending", "acked"):
            for rec in store.records(status, 0):
                assert rec.id not in out, f"two review records for id {rec.id}: {rec.source}, {out[rec.id]}"
                out[rec.id] = {
                    "deliveries": rec.deliveries,
                    "status": rec.status,
                    "pending": status == "pending",
                    "source": rec.source,
                }
    finally:
        store.close()
    return out


def wait_until(cond: Callable[[], bool], timeout: float, every: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(every)
    return cond()


def chunks(seq: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(seq), n):
        yield seq[i : i + n]
