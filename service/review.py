"""⊥ review log in Redis: every input that produced any ⊥ is recorded once per source record (contract §3).

A record is identified by its **source**, ``<topic>:<partition>:<offset>`` of the input (Kafka topic names cannot
contain ``:``, so the string is unambiguous). A redelivery of the same Kafka record therefore lands on the same
review record (``deliveries`` counts them); a *different* input that happens to reuse an ``id`` (robots that
number their own messages collide) gets a record of its own, and both are found by that id.

Layout (``P`` = ``ZEROPROOF_REDIS_KEY_PREFIX``, default ``zeroproof:review``):

- ``P:r:<source>`` hash: ``record`` (JSON: input, N, D, masks, model version, thresholds, source offset), ``id``,
  ``status`` (``pending`` | ``acked``), ``deliveries``, ``recorded_at``, ``acked_at``, ``replays``, ``replayed_at``.
- ``P:queue:pending`` / ``P:queue:acked`` sorted sets of sources, scored by first-seen time.
- ``P:id:<id>`` set of the sources recorded for an input id.
- ``P:audit:<source>`` list of JSON entries, one per reviewer action (who, when, what), kept with the record.

Recording is one Lua script (``HSETNX`` + index updates only when created), so a crash between two steps cannot
leave a half record and a redelivered input can never create a second one. A batch's records go in one
pipeline; ``record_batch`` returning is the confirmation the commit order waits for.

Redis must not evict review records: :meth:`RedisReviewStore.eviction_risk` reads the server's memory policy, the
worker refuses to start when it could evict them (unless ``ZEROPROOF_REDIS_ALLOW_EVICTION``) and checks again
after every reconnect. Records written by versions before the source-keyed layout are moved over by
:meth:`RedisReviewStore.migrate_legacy`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson
import redis

_RECORD = """
local created = redis.call('HSETNX', KEYS[1], 'record', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if created == 1 then
  redis.call('HSET', KEYS[1], 'status', 'pending', 'id', ARGV[4], 'recorded_at', ARGV[2])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('SADD', KEYS[3], ARGV[3])
end
return created
"""

_ACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'acked' then return 2 end
redis.call('HSET', KEYS[1], 'status', 'acked', 'acked_at', ARGV[2])
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], score or ARGV[2], ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[3])
return 1
"""

#: Memory policies under which Redis may evict keys without an expiry, i.e. review records.
EVICTING_POLICIES = ("allkeys-lru", "allkeys-lfu", "allkeys-random")


@dataclass(slots=True)
class ReviewItem:
    """A ⊥ input for the review log: ``record`` is the JSON document stored once per source record (``source`` =
    ``topic:partition:offset`` of the input, so a redelivery is the same record)."""

    input_id: str
    source: str
    record: bytes
    score: float


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def source_of(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def _source_order(source: str) -> tuple[str, int, int]:
    topic, partition, offset = source.rsplit(":", 2)
    return (topic, int(partition), int(offset))


class ReviewStoreError(Exception):
    """Redis did not confirm; the batch stays uncommitted and the write is retried."""


class ReviewSink(Protocol):
    def record_batch(self, items: Sequence[ReviewItem]) -> int:
        """Write the items; returns how many were new. Raises :class:`ReviewStoreError` if not confirmed."""
        ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


@dataclass
class ReviewRecord:
    source: str
    id: str
    status: str
    deliveries: int
    record: dict[str, Any]
    acked_at: float | None = None
    replays: int = 0
    audit: list[dict[str, Any]] = field(default_factory=list)
    shares_id_with: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        r = self.record
        return {
            "id": self.id,
            "source": self.source,
            "status": self.status,
            "entity": r.get("entity"),
            "model_version": r.get("model_version"),
            "tau_infer": r.get("tau_infer"),
            "tau_train": r.get("tau_train"),
            "recorded_at": r.get("recorded_at"),
            "deliveries": self.deliveries,
            "replays": self.replays,
            "bottom_elements": sum(1 for b in r.get("bottom", ()) if b),
        }

    def full(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "acked_at": self.acked_at,
            "shares_id_with": self.shares_id_with,
            "audit": self.audit,
            "record": self.record,
        }


class RedisReviewStore:
    def __init__(self, client: redis.Redis, prefix: str = "zeroproof:review") -> None:
        self.client = client
        self.prefix = prefix
        self._record = client.register_script(_RECORD)
        self._ack = client.register_script(_ACK)
        #: The eviction policy is (re)checked before the first write and after every Redis error, because a
        #: Redis that comes back may be a different server or have been reconfigured.
        self.allow_eviction = False
        self._policy_checked = False

    # --- keys
    def key(self, source: str) -> str:
        return f"{self.prefix}:r:{source}"

    def id_key(self, input_id: str) -> str:
        return f"{self.prefix}:id:{input_id}"

    def audit_key(self, source: str) -> str:
        return f"{self.prefix}:audit:{source}"

    @property
    def pending_key(self) -> str:
        return f"{self.prefix}:queue:pending"

    @property
    def acked_key(self) -> str:
        return f"{self.prefix}:queue:acked"

    # --- health
    def ping(self) -> None:
        try:
            self.client.ping()
        except redis.RedisError as exc:
            raise ReviewStoreError(f"redis: {exc}") from exc

    def memory_policy(self) -> tuple[str, int] | None:
        """``(maxmemory-policy, maxmemory bytes)`` from ``INFO memory``; ``None`` where an ACL refuses INFO."""
        try:
            info = self.client.info("memory")
        except redis.ResponseError:
            return None
        return str(info.get("maxmemory_policy", "noeviction")), int(info.get("maxmemory", 0) or 0)

    def eviction_risk(self) -> str | None:
        """Why this Redis could evict review records, or ``None`` when it cannot (or cannot be asked).

        Keys without an expiry (ours) are evicted only under an ``allkeys-*`` policy with a memory limit;
        ``volatile-*`` policies evict keys with a TTL only, and without ``maxmemory`` nothing is evicted.
        """
        got = self.memory_policy()
        if got is None:
            return None
        policy, maxmemory = got
        if maxmemory > 0 and policy in EVICTING_POLICIES:
            return f"maxmemory-policy {policy} with maxmemory {maxmemory} bytes can evict review records"
        return None

    def _check_policy(self) -> None:
        if self._policy_checked or self.allow_eviction:
            return
        risk = self.eviction_risk()
        if risk is not None:
            raise ReviewStoreError(f"redis: {risk}; set maxmemory-policy noeviction (not recording there)")
        self._policy_checked = True

    # --- worker side
    def record_batch(self, items: Sequence[ReviewItem]) -> int:
        if not items:
            return 0
        try:
            self._check_policy()
            pipe = self.client.pipeline(transaction=False)
            for it in items:
                self._record(
                    keys=[self.key(it.source), self.pending_key, self.id_key(it.input_id)],
                    args=[it.record, it.score, it.source, it.input_id],
                    client=pipe,
                )
            results = pipe.execute()
        except redis.RedisError as exc:
            self._policy_checked = False
            raise ReviewStoreError(f"redis: {exc}") from exc
        return sum(1 for r in results if r == 1)

    def migrate_legacy(self) -> int:
        """Move records of the id-keyed layout (``P:rec:<id>``, ``P:pending``/``P:acked`` of ids) to the
        source-keyed one. Idempotent; one ``TYPE`` per old set when there is nothing to move. Returns the count."""
        old_sets = {"pending": f"{self.prefix}:pending", "acked": f"{self.prefix}:acked"}
        moved = 0
        for status, old_set in old_sets.items():
            if self.client.type(old_set) != b"zset":
                continue
            entries = cast(list[tuple[bytes, float]], self.client.zrange(old_set, 0, -1, withscores=True))
            for raw_id, score in entries:
                input_id = _text(raw_id)
                old_key = f"{self.prefix}:rec:{input_id}"
                h = {_text(k): v for k, v in self.client.hgetall(old_key).items()}
                if "record" not in h:
                    self.client.zrem(old_set, raw_id)
                    continue
                doc = orjson.loads(h["record"])
                source = source_of(str(doc.get("topic")), int(doc.get("partition", 0)), int(doc.get("offset", 0)))
                fields: dict[str, Any] = {
                    k: v for k, v in h.items() if k in ("record", "deliveries", "acked_at", "replays")
                }
                fields.update({"status": status, "id": input_id, "recorded_at": score})
                pipe = self.client.pipeline(transaction=True)
                pipe.hset(self.key(source), mapping=cast(Any, fields))
                pipe.zadd(self.acked_key if status == "acked" else self.pending_key, {source: score})
                pipe.sadd(self.id_key(input_id), source)
                pipe.delete(old_key)
                pipe.zrem(old_set, raw_id)
                pipe.execute()
                moved += 1
        return moved

    # --- reviewer side
    def get(self, source: str) -> ReviewRecord | None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hgetall(self.key(source))
        pipe.lrange(self.audit_key(source), 0, -1)
        h, audit = pipe.execute()
        if not h:
            return None
        d = {_text(k): v for k, v in h.items()}
        input_id = _text(d.get("id", b""))
        others = sorted(_text(s) for s in self.client.smembers(self.id_key(input_id)) if _text(s) != source)
        return ReviewRecord(
            source=source,
            id=input_id,
            status=_text(d.get("status", b"pending")),
            deliveries=int(d.get("deliveries", b"0")),
            record=orjson.loads(d["record"]) if "record" in d else {},
            acked_at=float(d["acked_at"]) if "acked_at" in d else None,
            replays=int(d.get("replays", b"0")),
            audit=[orjson.loads(a) for a in audit],
            shares_id_with=others,
        )

    def sources_for(self, input_id: str) -> list[str]:
        """Sources of every record with this input id, oldest first."""
        sources = [_text(s) for s in self.client.smembers(self.id_key(input_id))]
        if len(sources) < 2:
            return sources
        pipe = self.client.pipeline(transaction=False)
        for s in sources:
            pipe.hget(self.key(s), "recorded_at")
        seen = [float(v or 0) for v in pipe.execute()]
        # first seen first; inputs of one batch share that time, and then Kafka's order decides
        return [s for _, s in sorted(zip(seen, sources, strict=True), key=lambda p: (p[0], _source_order(p[1])))]

    def find(self, input_id: str) -> list[ReviewRecord]:
        """Every record of inputs with this id (normally one; more when different inputs reused the id)."""
        return [r for r in (self.get(s) for s in self.sources_for(input_id)) if r is not None]

    def list_sources(self, status: str = "pending", limit: int = 100, newest_first: bool = False) -> list[str]:
        key = self.pending_key if status == "pending" else self.acked_key
        stop = max(0, limit) - 1 if limit > 0 else -1
        fetch = self.client.zrevrange if newest_first else self.client.zrange
        return [_text(s) for s in fetch(key, 0, stop)]

    def records(self, status: str = "pending", limit: int = 100, newest_first: bool = False) -> list[ReviewRecord]:
        return [r for r in (self.get(s) for s in self.list_sources(status, limit, newest_first)) if r is not None]

    def pending_ids(self) -> list[str]:
        """Input ids of the pending records, oldest first (tests and scripts)."""
        return [r.id for r in self.records("pending", 0)]

    def ack(self, source: str, by: str, note: str | None = None) -> bool:
        """Mark one record reviewed; the action is kept in its audit trail. False if there is no such record."""
        entry = orjson.dumps({"action": "ack", "by": by, "at": time.time(), "note": note})
        result = self._ack(
            keys=[self.key(source), self.pending_key, self.acked_key, self.audit_key(source)],
            args=[source, time.time(), entry],
        )
        return bool(result)

    def mark_replayed(self, source: str, by: str, target: str) -> None:
        entry = orjson.dumps({"action": "replay", "by": by, "at": time.time(), "target": target})
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(self.key(source), "replays", 1)
        pipe.hset(self.key(source), "replayed_at", time.time())
        pipe.rpush(self.audit_key(source), entry)
        pipe.execute()

    def close(self) -> None:
        self.client.close()
