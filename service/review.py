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
- ``P:ix:<state>:<dim>`` sorted sets of sources (``state`` = ``pending`` | ``acked``), scored like the queues: the
  secondary indexes the review console filters by. ``dim`` is ``m:<model version>``, ``e:<entity>``,
  ``l:["<label>","<value>"]``, ``v:<verdict>`` and ``v:*`` (any verdict). The record's dims are kept in its
  hash (``ix``), so acknowledging moves exactly those entries from the pending to the acked indexes.
  ``P:ix:dims`` is the set of every dim seen (the console's filter choices), ``P:meta:index`` the layout version
  once every record is indexed (:meth:`RedisReviewStore.ensure_index`).
- verdicts (console or API): hash fields ``verdict``, ``verdict_note``, ``verdict_by``, ``verdict_at``; each one
  is also an audit entry.

Recording is one Lua script (``HSETNX`` + queue and secondary index updates only when created), so a crash
between two steps cannot leave a half record and a redelivered input can never create a second one. A batch's
records go in one pipeline; ``record_batch`` returning is the confirmation the commit order waits for.

Redis must not evict review records: :meth:`RedisReviewStore.eviction_risk` reads the server's memory policy, the
worker refuses to start when it could evict them (unless ``ZEROPROOF_REDIS_ALLOW_EVICTION``) and checks again
after every reconnect. Records written by versions before the source-keyed layout are moved over by
:meth:`RedisReviewStore.migrate_legacy`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson
import redis

# ARGV[5]: the record's index dims (JSON list), ARGV[6]: ``P:ix:`` (index keys are built from the dims, which only
# the record knows: a single Redis, not a cluster).
_RECORD = """
local created = redis.call('HSETNX', KEYS[1], 'record', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'deliveries', 1)
if created == 1 then
  redis.call('HSET', KEYS[1], 'status', 'pending', 'id', ARGV[4], 'recorded_at', ARGV[2], 'ix', ARGV[5])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
  redis.call('SADD', KEYS[3], ARGV[3])
  for _, dim in ipairs(cjson.decode(ARGV[5])) do
    redis.call('ZADD', ARGV[6] .. 'pending:' .. dim, ARGV[2], ARGV[3])
    redis.call('SADD', ARGV[6] .. 'dims', dim)
  end
end
return created
"""

# Dims of a record in the indexes: its own (``ix``) plus its verdict's.
_DIMS = """
local function record_dims(key)
  local dims = {}
  local ix = redis.call('HGET', key, 'ix')
  if ix then dims = cjson.decode(ix) end
  local verdict = redis.call('HGET', key, 'verdict')
  if verdict then
    table.insert(dims, 'v:' .. verdict)
    table.insert(dims, 'v:*')
  end
  return dims
end
"""

_ACK = (
    _DIMS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HGET', KEYS[1], 'status') == 'acked' then return 2 end
redis.call('HSET', KEYS[1], 'status', 'acked', 'acked_at', ARGV[2])
local score = redis.call('ZSCORE', KEYS[2], ARGV[1]) or redis.call('HGET', KEYS[1], 'recorded_at') or ARGV[2]
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], score, ARGV[1])
redis.call('RPUSH', KEYS[4], ARGV[3])
for _, dim in ipairs(record_dims(KEYS[1])) do
  redis.call('ZREM', ARGV[4] .. 'pending:' .. dim, ARGV[1])
  redis.call('ZADD', ARGV[4] .. 'acked:' .. dim, score, ARGV[1])
end
return 1
"""
)

# KEYS: record, audit. ARGV: source, verdict, note, by, at, audit entry, ``P:ix:``.
_VERDICT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local state = 'pending'
if redis.call('HGET', KEYS[1], 'status') == 'acked' then state = 'acked' end
local score = redis.call('HGET', KEYS[1], 'recorded_at') or ARGV[5]
local old = redis.call('HGET', KEYS[1], 'verdict')
if old then redis.call('ZREM', ARGV[7] .. state .. ':v:' .. old, ARGV[1]) end
redis.call('HSET', KEYS[1], 'verdict', ARGV[2], 'verdict_note', ARGV[3], 'verdict_by', ARGV[4], 'verdict_at', ARGV[5])
redis.call('ZADD', ARGV[7] .. state .. ':v:' .. ARGV[2], score, ARGV[1])
redis.call('ZADD', ARGV[7] .. state .. ':v:*', score, ARGV[1])
redis.call('SADD', ARGV[7] .. 'dims', 'v:' .. ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[6])
return 1
"""

# Index one record written before the indexes existed; atomic per record, so an acknowledgement that runs at the
# same time cannot leave it in the wrong state's index. KEYS: record. ARGV: source, dims (JSON), ``P:ix:``.
_REINDEX = (
    _DIMS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('HEXISTS', KEYS[1], 'ix') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'ix', ARGV[2])
local state = 'pending'
if redis.call('HGET', KEYS[1], 'status') == 'acked' then state = 'acked' end
local score = redis.call('HGET', KEYS[1], 'recorded_at') or 0
for _, dim in ipairs(record_dims(KEYS[1])) do
  redis.call('ZADD', ARGV[3] .. state .. ':' .. dim, score, ARGV[1])
  redis.call('SADD', ARGV[3] .. 'dims', dim)
end
return 1
"""
)

#: Verdicts a reviewer can give a ⊥ input (issue 14), with their labels.
VERDICTS: dict[str, str] = {
    "singular_as_expected": "singular as expected",
    "out_of_distribution": "out of distribution",
    "sensor_fault": "sensor fault",
    "model_defect": "model defect",
    "other": "other",
}
#: Version of the secondary-index layout; :meth:`RedisReviewStore.ensure_index` indexes older records once.
INDEX_VERSION = "1"
#: At most this many input labels of one record are indexed, each name and value cut to this many characters:
#: bounded work per record and bounded key names whatever an input carries.
MAX_INDEXED_LABELS = 16
MAX_DIM_CHARS = 128

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


def _verdict_of(h: dict[str, Any]) -> dict[str, Any] | None:
    if "verdict" not in h:
        return None
    return {
        "verdict": _text(h["verdict"]),
        "note": _text(h.get("verdict_note", b"")) or None,
        "by": _text(h.get("verdict_by", b"")),
        "at": float(h.get("verdict_at", b"0")),
    }


def source_of(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def _source_order(source: str) -> tuple[str, int, int]:
    topic, partition, offset = source.rsplit(":", 2)
    return (topic, int(partition), int(offset))


def label_dim(name: str, value: str) -> str:
    """Index dim of one input label: JSON, so that any name and value (``=``, ``:`` included) is unambiguous."""
    return "l:" + orjson.dumps([name[:MAX_DIM_CHARS], value[:MAX_DIM_CHARS]]).decode()


def index_dims(doc: dict[str, Any]) -> list[str]:
    """The secondary-index dims of a review record document: model version, entity and input labels."""
    dims: list[str] = []
    version = doc.get("model_version")
    if isinstance(version, str):
        dims.append("m:" + version[:MAX_DIM_CHARS])
    entity = doc.get("entity")
    if isinstance(entity, str):
        dims.append("e:" + entity[:MAX_DIM_CHARS])
    inp = doc.get("input")
    labels = inp.get("labels") if isinstance(inp, dict) else None
    if isinstance(labels, dict):
        for name, value in sorted(labels.items())[:MAX_INDEXED_LABELS]:
            if isinstance(name, str) and isinstance(value, str):
                dims.append(label_dim(name, value))
    return dims


def _dims_of(record: bytes) -> bytes:
    try:
        doc = orjson.loads(record)
    except orjson.JSONDecodeError:
        return b"[]"
    return orjson.dumps(index_dims(doc) if isinstance(doc, dict) else [])


@dataclass(frozen=True, slots=True)
class ReviewFilter:
    """What the review queue shows: one state plus any of model version, entity, label, verdict and time range.

    ``verdict`` is a verdict name or ``"*"`` (any verdict); ``since``/``until`` bound the recorded (first-seen)
    time, inclusive. Each set field picks one secondary index; several are intersected in Redis.
    """

    state: str = "pending"
    model_version: str | None = None
    entity: str | None = None
    label: tuple[str, str] | None = None
    verdict: str | None = None
    since: float | None = None
    until: float | None = None

    def __post_init__(self) -> None:
        if self.state not in ("pending", "acked"):
            raise ValueError(f"state must be pending or acked, not {self.state!r}")
        if self.verdict is not None and self.verdict != "*" and self.verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}")

    def dims(self) -> list[str]:
        dims = []
        if self.model_version is not None:
            dims.append("m:" + self.model_version[:MAX_DIM_CHARS])
        if self.entity is not None:
            dims.append("e:" + self.entity[:MAX_DIM_CHARS])
        if self.label is not None:
            dims.append(label_dim(*self.label))
        if self.verdict is not None:
            dims.append("v:" + self.verdict)
        return dims

    def score_range(self) -> tuple[str, str]:
        """``(min, max)`` for ZRANGEBYSCORE."""
        lo = "-inf" if self.since is None else repr(float(self.since))
        hi = "+inf" if self.until is None else repr(float(self.until))
        return lo, hi


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
    #: the latest verdict: ``{"verdict", "note", "by", "at"}`` (every earlier one is in ``audit``)
    verdict: dict[str, Any] | None = None

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
            "verdict": self.verdict["verdict"] if self.verdict else None,
        }

    def full(self) -> dict[str, Any]:
        return {
            **self.summary(),
            "acked_at": self.acked_at,
            "verdict_detail": self.verdict,
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
        self._verdict = client.register_script(_VERDICT)
        self._reindex = client.register_script(_REINDEX)
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
    def ix_prefix(self) -> str:
        return f"{self.prefix}:ix:"

    def ix_key(self, state: str, dim: str) -> str:
        return f"{self.prefix}:ix:{state}:{dim}"

    def queue_key(self, state: str) -> str:
        return self.acked_key if state == "acked" else self.pending_key

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
                    args=[it.record, it.score, it.source, it.input_id, _dims_of(it.record), self.ix_prefix],
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
                dims = index_dims(doc)
                fields.update({"status": status, "id": input_id, "recorded_at": score, "ix": orjson.dumps(dims)})
                pipe = self.client.pipeline(transaction=True)
                pipe.hset(self.key(source), mapping=cast(Any, fields))
                pipe.zadd(self.acked_key if status == "acked" else self.pending_key, {source: score})
                pipe.sadd(self.id_key(input_id), source)
                for dim in dims:
                    pipe.zadd(self.ix_key(status, dim), {source: score})
                if dims:
                    pipe.sadd(f"{self.ix_prefix}dims", *dims)
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
            verdict=_verdict_of(d),
        )

    def get_many(self, sources: Sequence[str]) -> list[ReviewRecord]:
        """:meth:`get` for many records in two round trips (exports)."""
        pipe = self.client.pipeline(transaction=False)
        for s in sources:
            pipe.hgetall(self.key(s))
            pipe.lrange(self.audit_key(s), 0, -1)
        got = pipe.execute()
        found = []
        for i, s in enumerate(sources):
            h, audit = got[2 * i], got[2 * i + 1]
            if h:
                found.append((s, {_text(k): v for k, v in h.items()}, audit))
        pipe = self.client.pipeline(transaction=False)
        for _, d, _ in found:
            pipe.smembers(self.id_key(_text(d.get("id", b""))))
        shared = pipe.execute()
        return [
            ReviewRecord(
                source=s,
                id=_text(d.get("id", b"")),
                status=_text(d.get("status", b"pending")),
                deliveries=int(d.get("deliveries", b"0")),
                record=orjson.loads(d["record"]) if "record" in d else {},
                acked_at=float(d["acked_at"]) if "acked_at" in d else None,
                replays=int(d.get("replays", b"0")),
                audit=[orjson.loads(a) for a in audit],
                shares_id_with=sorted(_text(x) for x in others if _text(x) != s),
                verdict=_verdict_of(d),
            )
            for (s, d, audit), others in zip(found, shared, strict=True)
        ]

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
            args=[source, time.time(), entry, self.ix_prefix],
        )
        return bool(result)

    def ack_many(self, sources: Sequence[str], by: str, note: str | None = None, chunk: int = 500) -> int:
        """Acknowledge many records (bulk acknowledge by filter): pipelined, one audit entry each, the filter that
        chose them in ``note``. Returns how many were pending and are now acknowledged."""
        done = 0
        for start in range(0, len(sources), chunk):
            now = time.time()
            entry = orjson.dumps({"action": "ack", "by": by, "at": now, "note": note, "bulk": True})
            pipe = self.client.pipeline(transaction=False)
            for source in sources[start : start + chunk]:
                self._ack(
                    keys=[self.key(source), self.pending_key, self.acked_key, self.audit_key(source)],
                    args=[source, now, entry, self.ix_prefix],
                    client=pipe,
                )
            done += sum(1 for r in pipe.execute() if r == 1)
        return done

    def set_verdict(self, source: str, verdict: str, by: str, note: str | None = None) -> bool:
        """Record a reviewer's verdict (replacing an earlier one; both stay in the audit trail)."""
        if verdict not in VERDICTS:
            raise ValueError(f"unknown verdict {verdict!r}; one of {', '.join(VERDICTS)}")
        now = time.time()
        entry = orjson.dumps({"action": "verdict", "by": by, "at": now, "verdict": verdict, "note": note})
        result = self._verdict(
            keys=[self.key(source), self.audit_key(source)],
            args=[source, verdict, note or "", by, now, entry, self.ix_prefix],
        )
        return bool(result)

    # --- secondary indexes and queries (the review console)
    def ensure_index(self, chunk: int = 1000) -> int:
        """Index every record written before the secondary indexes existed; once (``P:meta:index``), idempotent,
        safe while workers record and reviewers acknowledge. Returns how many records were indexed."""
        marker = f"{self.prefix}:meta:index"
        if _text(self.client.get(marker) or b"") == INDEX_VERSION:
            return 0
        indexed = 0
        for key in (self.pending_key, self.acked_key):
            start = 0
            while True:
                sources = [_text(s) for s in self.client.zrange(key, start, start + chunk - 1)]
                if not sources:
                    break
                start += chunk
                pipe = self.client.pipeline(transaction=False)
                for s in sources:
                    pipe.hexists(self.key(s), "ix")
                missing = [s for s, has in zip(sources, pipe.execute(), strict=True) if not has]
                if not missing:
                    continue
                pipe = self.client.pipeline(transaction=False)
                for s in missing:
                    pipe.hget(self.key(s), "record")
                records = pipe.execute()
                pipe = self.client.pipeline(transaction=False)
                for s, record in zip(missing, records, strict=True):
                    if record is not None:
                        self._reindex(keys=[self.key(s)], args=[s, _dims_of(record), self.ix_prefix], client=pipe)
                indexed += sum(1 for r in pipe.execute() if r == 1)
        self.client.set(marker, INDEX_VERSION)
        return indexed

    def dims(self) -> list[str]:
        """Every index dim seen (``m:…``, ``e:…``, ``l:…``, ``v:…``), sorted: the console's filter choices."""
        return sorted(_text(d) for d in self.client.smembers(f"{self.ix_prefix}dims"))

    def count(self, state: str = "pending", dim: str | None = None) -> int:
        return int(self.client.zcard(self.ix_key(state, dim) if dim else self.queue_key(state)))

    def query(self, flt: ReviewFilter, offset: int = 0, limit: int | None = 50) -> tuple[int, list[str]]:
        """``(how many match, the sources of one page)``, newest first.

        One index: a ZCOUNT and a ZREVRANGEBYSCORE with LIMIT (O(log n + page)). Several: intersected into a
        short-lived key, smallest index first, within one MULTI so no half state is seen.
        """
        lo, hi = flt.score_range()
        keys = [self.ix_key(flt.state, d) for d in flt.dims()] or [self.queue_key(flt.state)]
        page: dict[str, Any] = {} if limit is None else {"start": max(0, offset), "num": max(0, limit)}
        if len(keys) == 1:
            pipe = self.client.pipeline(transaction=False)
            pipe.zcount(keys[0], lo, hi)
            pipe.zrevrangebyscore(keys[0], hi, lo, **page)
            total, sources = pipe.execute()
        else:
            sizes = self.client.pipeline(transaction=False)
            for k in keys:
                sizes.zcard(k)
            ordered = [k for _, k in sorted(zip(sizes.execute(), keys, strict=True))]
            tmp = f"{self.prefix}:tmp:{uuid.uuid4().hex}"
            pipe = self.client.pipeline(transaction=True)
            pipe.zinterstore(tmp, ordered, aggregate="MAX")
            pipe.expire(tmp, 60)
            pipe.zcount(tmp, lo, hi)
            pipe.zrevrangebyscore(tmp, hi, lo, **page)
            pipe.delete(tmp)
            _, _, total, sources, _ = pipe.execute()
        return int(total), [_text(s) for s in sources]

    def rows(self, sources: Sequence[str]) -> list[dict[str, Any]]:
        """Queue rows (id, entity, time, model version, ⊥ elements, verdict, status) in one round trip."""
        pipe = self.client.pipeline(transaction=False)
        for s in sources:
            pipe.hmget(self.key(s), ["id", "status", "record", "verdict", "recorded_at", "deliveries", "replays"])
        out = []
        for s, (ident, status, record, verdict, recorded_at, deliveries, replays) in zip(
            sources, pipe.execute(), strict=True
        ):
            if record is None:
                continue  # acknowledged or removed between the index read and this one
            doc = orjson.loads(record)
            out.append(
                {
                    "source": s,
                    "id": _text(ident or b""),
                    "status": _text(status or b"pending"),
                    "entity": doc.get("entity"),
                    "model_version": doc.get("model_version"),
                    "recorded_at": float(recorded_at or 0),
                    "bottom_elements": sum(1 for b in doc.get("bottom", ()) if b),
                    "outputs": len(doc.get("bottom", ())),
                    "labels": (doc.get("input") or {}).get("labels") or {},
                    "verdict": _text(verdict) if verdict is not None else None,
                    "deliveries": int(deliveries or 0),
                    "replays": int(replays or 0),
                }
            )
        return out

    def mark_replayed(self, source: str, by: str, target: str) -> None:
        entry = orjson.dumps({"action": "replay", "by": by, "at": time.time(), "target": target})
        pipe = self.client.pipeline(transaction=True)
        pipe.hincrby(self.key(source), "replays", 1)
        pipe.hset(self.key(source), "replayed_at", time.time())
        pipe.rpush(self.audit_key(source), entry)
        pipe.execute()

    def close(self) -> None:
        self.client.close()
