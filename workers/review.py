"""⊥ review log in Redis: every input that produced any ⊥ is recorded once per input id, whatever the redelivery.

Layout (``P`` = ``ZEROPROOF_REDIS_KEY_PREFIX``, default ``zeroproof:review``):

- ``P:rec:<id>`` hash: ``record`` (JSON: input, N, D, masks, model version, thresholds, source offset),
  ``status`` (``pending`` | ``acked``), ``deliveries`` (how many times the input was seen: >1 after
  redelivery or replay), ``acked_at``, ``replays``, ``replayed_at``.
- ``P:pending`` / ``P:acked`` sorted sets of ids, scored by first-seen time.

Recording is one Lua script (``HSETNX`` + ``ZADD`` only when created), so a crash between two steps cannot
leave a half record and a redelivered input can never create a second one. A batch's records go in one
pipeline; ``record_batch`` returning is the confirmation the commit order waits for.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
import redis

from workers.pipeline import ReviewItem
from workers.settings import WorkerSettings

_RECORD = """
local created = redis.call('HSETNX', KEYS[1], 'record', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if created == 1 then
  redis.call('HSET', KEYS[1], 'status', 'pending')
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
return created
"""

_ACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'acked', 'acked_at', ARGV[2])
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], score or ARGV[2], ARGV[1])
return 1
"""


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


class ReviewStoreError(Exception):
    """Redis did not confirm; the batch stays uncommitted and the write is retried."""


class ReviewSink(Protocol):
    def record_batch(self, items: Sequence[ReviewItem]) -> int:
        """Write the items; returns how many were new. Raises :class:`ReviewStoreError` if not confirmed."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


def redis_client(settings: WorkerSettings) -> redis.Redis:
    """Client from ``ZEROPROOF_REDIS_URL`` (``rediss://`` for TLS), AUTH from the URL or ``REDIS_PASSWORD``."""
    kwargs: dict[str, Any] = {
        "socket_timeout": settings.redis_timeout_s,
        "socket_connect_timeout": settings.redis_timeout_s,
    }
    if settings.redis_password is not None:
        kwargs["password"] = settings.redis_password.get_secret_value()
    url = settings.redis_url.get_secret_value()
    if url.startswith("rediss://") and settings.redis_ssl_ca_file is not None:
        kwargs["ssl_ca_certs"] = str(settings.redis_ssl_ca_file)
    return redis.Redis.from_url(url, **kwargs)


@dataclass
class ReviewRecord:
    id: str
    status: str
    deliveries: int
    record: dict[str, Any]
    acked_at: float | None = None
    replays: int = 0

    def summary(self) -> dict[str, Any]:
        r = self.record
        return {
            "id": self.id,
            "status": self.status,
            "entity": r.get("entity"),
            "model_version": r.get("model_version"),
            "tau_infer": r.get("tau_infer"),
            "tau_train": r.get("tau_train"),
            "source": f"{r.get('topic')}:{r.get('partition')}:{r.get('offset')}",
            "recorded_at": r.get("recorded_at"),
            "deliveries": self.deliveries,
            "replays": self.replays,
        }

    def full(self) -> dict[str, Any]:
        return {**self.summary(), "acked_at": self.acked_at, "record": self.record}


class RedisReviewStore:
    def __init__(self, client: redis.Redis, prefix: str = "zeroproof:review") -> None:
        self.client = client
        self.prefix = prefix
        self._record = client.register_script(_RECORD)
        self._ack = client.register_script(_ACK)

    def key(self, input_id: str) -> str:
        return f"{self.prefix}:rec:{input_id}"

    @property
    def pending_key(self) -> str:
        return f"{self.prefix}:pending"

    @property
    def acked_key(self) -> str:
        return f"{self.prefix}:acked"

    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise ReviewStoreError(f"redis: {exc}") from exc

    def record_batch(self, items: Sequence[ReviewItem]) -> int:
        if not items:
            return 0
        try:
            pipe = self.client.pipeline(transaction=False)
            for it in items:
                self._record(
                    keys=[self.key(it.input_id), self.pending_key], args=[it.record, it.score, it.input_id], client=pipe
                )
            results = pipe.execute()
        except redis.RedisError as exc:
            raise ReviewStoreError(f"redis: {exc}") from exc
        return sum(1 for r in results if r == 1)

    # --- reviewer side
    def get(self, input_id: str) -> ReviewRecord | None:
        h = self.client.hgetall(self.key(input_id))
        if not h:
            return None
        d = {_text(k): v for k, v in h.items()}
        return ReviewRecord(
            id=input_id,
            status=_text(d.get("status", b"pending")),
            deliveries=int(d.get("deliveries", b"0")),
            record=orjson.loads(d["record"]) if "record" in d else {},
            acked_at=float(d["acked_at"]) if "acked_at" in d else None,
            replays=int(d.get("replays", b"0")),
        )

    def list_ids(self, status: str = "pending", limit: int = 100) -> list[str]:
        key = self.pending_key if status == "pending" else self.acked_key
        return [_text(i) for i in self.client.zrange(key, 0, max(0, limit) - 1 if limit > 0 else -1)]

    def list(self, status: str = "pending", limit: int = 100) -> list[ReviewRecord]:
        out = []
        for i in self.list_ids(status, limit):
            r = self.get(i)
            if r is not None:
                out.append(r)
        return out

    def ack(self, input_id: str) -> bool:
        return bool(
            self._ack(keys=[self.key(input_id), self.pending_key, self.acked_key], args=[input_id, time.time()])
        )

    def mark_replayed(self, input_id: str) -> None:
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(self.key(input_id), "replays", 1)
        pipe.hset(self.key(input_id), "replayed_at", time.time())
        pipe.execute()

    def close(self) -> None:
        self.client.close()
