"""Every record the worker produces, encoded in one place: outputs, external fallback requests, ⊥ review
records, DLQ records, stats records, and what replaces a record the broker refuses for good.

Encoders take plain values (no batch object) and return an :class:`Outgoing` (or, for the review log, a
``ReviewItem``), so the pipeline decides and these only write. Sizes are bounded here: keys are capped where they
are copied, label values in stats are cut, and a DLQ record keeps at most what fits one produce request.
"""

from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from service.review import ReviewItem
from service.wire import (
    DLQ_SCHEMA,
    NO_LABELS,
    OUTPUT_SCHEMA,
    STATS_SCHEMA,
    InputMessage,
    ShadowCounts,
    input_document,
)
from workers.settings import RECORD_OVERHEAD_BYTES
from workers.transport.base import Record, RecordRefusedError

#: DLQ reasons (also the ``reason`` label of the DLQ metric).
DLQ_REASONS = (
    "empty",
    "invalid_json",
    "missing_field",
    "wrong_type",
    "non_finite_literal",
    "too_large",
    "wrong_feature_count",
    "model_error",
    "model_output_invalid",
    "output_too_large",
    "output_refused",
)

#: Longest entity (characters): the input field's own limit, and the cap on an entity derived from a Kafka key.
ENTITY_MAX_CHARS = 512
#: A DLQ record keeps the source key as its own Kafka key only up to this size (else the key's sha256).
DLQ_KAFKA_KEY_MAX_BYTES = 1024
#: Per label name and batch, the stats record names at most ``stats_max_label_values`` label values (the rest are
#: pooled as ``__other__``), each cut to this many characters: a stats record stays a few KB whatever the input.
STATS_LABEL_VALUE_MAX_CHARS = 128
#: A DLQ record must fit one produce request: the original is kept whole up to this size (less where
#: ``ZEROPROOF_PRODUCER_MAX_REQUEST_BYTES`` is smaller, see :func:`dlq_original_limit`) and truncated beyond it
#: (its length and sha256 are recorded).
DLQ_MAX_ORIGINAL_BYTES = 256 * 1024


@dataclass(slots=True)
class Outgoing:
    """One record to produce. ``kind`` (output | fallback | dlq | stats) and ``source`` (``topic:partition:offset``
    of the input it answers) let a record the broker refuses for good be replaced by a small DLQ record."""

    topic: str
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...] = ()
    kind: str = "output"
    source: str | None = None


class Provenance(NamedTuple):
    """Which model, thresholds, source record and worker produced a record: the same block in the output, the
    external fallback request and the review record. A NamedTuple: one is made per output, and a frozen dataclass
    took 1.4 µs to build (5 % of a message's cost)."""

    model_version: str
    tau_infer: float
    tau_train: float | None
    topic: str
    partition: int
    offset: int
    worker_id: str

    def fields(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "tau_infer": self.tau_infer,
            "tau_train": self.tau_train,
            "topic": self.topic,
            "partition": self.partition,
            "offset": self.offset,
            "worker_id": self.worker_id,
        }

    @property
    def source(self) -> str:
        return f"{self.topic}:{self.partition}:{self.offset}"


def dlq_original_limit(max_request_bytes: int) -> int:
    """How much of an original a DLQ record can keep: base64 takes 4/3 of it, the key and fields the rest."""
    return max(1024, min(DLQ_MAX_ORIGINAL_BYTES, (max_request_bytes - RECORD_OVERHEAD_BYTES) * 3 // 4))


def _plain_numbers(obj: Any) -> Any:
    """Integers beyond 64 bits as floats (inf where even a double overflows, which orjson writes as null)."""
    if isinstance(obj, bool):
        return obj
    if isinstance(obj, int) and not -(2**63) <= obj < 2**64:
        try:
            return float(obj)
        except OverflowError:
            return math.inf if obj > 0 else -math.inf
    if isinstance(obj, dict):
        return {k: _plain_numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain_numbers(v) for v in obj]
    return obj


def dumps(doc: Any) -> bytes:
    """orjson, except for the rare document holding an integer beyond 64 bits (valid JSON input): orjson refuses
    those, which once made one such input a poison pill that killed the worker on every redelivery."""
    try:
        return orjson.dumps(doc)
    except orjson.JSONEncodeError:
        return orjson.dumps(_plain_numbers(doc))


def record_size(rec: Record) -> int:
    """Bytes of value, key and headers: what the input costs, and a bound on what its output will carry."""
    size = len(rec.value or b"") + len(rec.key or b"")
    for name, value in rec.headers:
        size += len(name) + len(value or b"")
    return size


def entity_from_key(key: bytes) -> str:
    """The Kafka key as the entity, capped at ``ENTITY_MAX_CHARS`` like the ``entity`` field. A longer key keeps
    its start and gets a hash of the whole key, so two long keys never become the same entity (the ``hold_last``
    fallback is kept per entity)."""
    text = key.decode("utf-8", "replace")
    if len(text) <= ENTITY_MAX_CHARS:
        return text
    return f"{text[: ENTITY_MAX_CHARS - 24]}…sha256:{hashlib.sha256(key).hexdigest()[:16]}"


def _dlq_key(key: bytes | None) -> tuple[bytes | None, dict[str, Any]]:
    """Kafka key and JSON fields for the source key of a DLQ record, bounded whatever the key's size."""
    if key is None:
        return None, {"key": None}
    if len(key) <= DLQ_KAFKA_KEY_MAX_BYTES:
        return key, {"key": key.decode("utf-8", "replace")}
    digest = hashlib.sha256(key).hexdigest()
    return digest.encode(), {"key": entity_from_key(key), "key_size": len(key), "key_sha256": digest}


def dlq_record(
    rec: Record, reason: str, detail: str, dlq_topic: str, worker_id: str, max_original: int = DLQ_MAX_ORIGINAL_BYTES
) -> Outgoing:
    """The input as it came (base64, text when UTF-8; cut beyond ``max_original`` with size and sha256), the
    reason and where it came from."""
    raw = rec.value or b""
    kept = raw[:max_original]
    truncated = len(kept) < len(raw)
    try:
        text: str | None = None if truncated else raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    doc = {
        "schema": DLQ_SCHEMA,
        "reason": reason,
        "detail": detail,
        "original_b64": base64.b64encode(kept).decode("ascii"),
        "original_text": text,
        "original_size": len(raw),
        "original_truncated": truncated,
        "original_sha256": hashlib.sha256(raw).hexdigest() if truncated else None,
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "worker_id": worker_id,
    }
    kafka_key, key_fields = _dlq_key(rec.key)
    doc.update(key_fields)
    source = f"{rec.topic}:{rec.partition}:{rec.offset}"
    headers = (("zeroproof-reason", reason.encode()), ("zeroproof-source", source.encode()))
    return Outgoing(dlq_topic, kafka_key, dumps(doc), headers, "dlq", source)


class OutputContext(NamedTuple):
    """What every output of a feature-width group shares: the output topic, and the model, thresholds and worker
    of the provenance block (read once per group, not once per output)."""

    topic: str
    model_version: str
    tau_infer: float
    tau_train: float | None
    worker_id: str


def output_record(
    c: OutputContext,
    rec: Record,
    msg: InputMessage,
    entity: str | None,
    value: list[float | None],
    bottom: list[bool],
    gap: list[bool],
    status: str,
    action: str,
    controller: str | None,
    fallback_value: list[float] | None,
) -> Outgoing:
    doc: dict[str, Any] = {
        "schema": OUTPUT_SCHEMA,
        "id": msg["id"],
        "entity": entity,
        "value": value,
        "bottom": bottom,
        "gap": gap,
        "status": status,
        "action": action,
        "fallback_controller": controller,
        "fallback_value": fallback_value,
        # the provenance block (Provenance.fields()), spelled out: one output per message
        "model_version": c.model_version,
        "tau_infer": c.tau_infer,
        "tau_train": c.tau_train,
        "topic": rec.topic,
        "partition": rec.partition,
        "offset": rec.offset,
        "worker_id": c.worker_id,
        "ts": msg.get("ts"),
        "labels": msg.get("labels", NO_LABELS),
    }
    return Outgoing(c.topic, rec.key, dumps(doc), (), "output", f"{rec.topic}:{rec.partition}:{rec.offset}")


def fallback_request(
    topic: str,
    rec: Record,
    msg: InputMessage,
    entity: str | None,
    prov: Provenance,
    value: list[float | None],
    bottom: list[bool],
    gap: list[bool],
    status: str,
) -> Outgoing:
    """What the external fallback controller gets: the input's features and the model's own decode."""
    req = {
        "id": msg["id"],
        "entity": entity,
        "status": status,
        "features": msg["features"],
        "model_value": value,
        "bottom": bottom,
        "gap": gap,
        **prov.fields(),
    }
    return Outgoing(topic, rec.key, dumps(req), (), "fallback", prov.source)


def review_item(
    rec: Record,
    msg: InputMessage,
    entity: str | None,
    prov: Provenance,
    N: list[float],
    D: list[float],
    value: list[float | None],
    bottom: list[bool],
    gap: list[bool],
    nonfinite_input: bool,
    now: float,
) -> ReviewItem:
    """The ⊥ input for the review log: input, N, D, masks, decode, thresholds, source (contract §3)."""
    review = {
        "id": msg["id"],
        "entity": entity,
        "input": input_document(msg),
        "key": rec.key.decode("utf-8", "replace") if rec.key is not None else None,
        "N": N,
        "D": D,
        "value": value,
        "bottom": bottom,
        "gap": gap,
        "nonfinite_input": nonfinite_input,
        **prov.fields(),
        "recorded_at": now,
    }
    return ReviewItem(msg["id"], prov.source, dumps(review), now)


@dataclass(slots=True)
class Tally:
    """Per-message counts while a batch is processed; the wire ``Counts`` in the stats record. A plain slotted
    dataclass: five pydantic ``__setattr__`` calls per message cost 14 % of a 1024-record batch."""

    total: int = 0
    bottom: int = 0
    gap: int = 0
    fallback: int = 0
    rejected: int = 0

    def count(self, status: str, action: str) -> None:
        self.total += 1
        self.bottom += status == "bottom"
        self.gap += status == "gap"
        self.fallback += action == "fallback"
        self.rejected += action == "reject"

    def wire(self) -> dict[str, int]:
        """The wire ``Counts`` document."""
        return {
            "total": self.total,
            "bottom": self.bottom,
            "gap": self.gap,
            "fallback": self.fallback,
            "rejected": self.rejected,
        }


@dataclass
class BatchStats:
    """What one batch tells the monitor and the metrics: counts per message status, per element, per label
    value, per candidate threshold pair, DLQ reasons, fallback controllers, and the offsets it covered."""

    model_version: str = ""
    tau_infer: float = 0.0
    tau_train: float | None = None
    counts: Tally = field(default_factory=Tally)
    dlq: dict[str, int] = field(default_factory=dict)
    elements_total: int = 0
    elements_bottom: int = 0
    elements_gap: int = 0
    by_label: dict[str, dict[str, Tally]] = field(default_factory=dict)
    shadow: list[ShadowCounts] = field(default_factory=list)
    fallback_by: dict[str, int] = field(default_factory=dict)
    outputs: int = 0
    compute_s: float = 0.0
    #: ``{"topic:partition": [first_offset, last_offset]}`` covered by the batch.
    spans: dict[str, list[int]] = field(default_factory=dict)


def stats_record(
    topic: str, stats: BatchStats, worker_id: str, window_start: float, window_end: float, seq: int
) -> Outgoing:
    """One per batch, keyed by worker id: the monitor's input. The document is :class:`StatsMessage`, field for field
    and byte for byte (tests/workers/test_records.py), written with orjson: building and dumping the model took
    ~17 µs a batch, which is every record's cost at low load, where a batch is one record."""
    doc = {
        "schema": STATS_SCHEMA,
        "worker_id": worker_id,
        "model_version": stats.model_version,
        "tau_infer": float(stats.tau_infer),
        "tau_train": None if stats.tau_train is None else float(stats.tau_train),
        "window_start": float(window_start),
        "window_end": float(window_end),
        "counts": stats.counts.wire(),
        "dlq": sum(stats.dlq.values()),
        "elements_total": stats.elements_total,
        "elements_bottom": stats.elements_bottom,
        "elements_gap": stats.elements_gap,
        "by_label": {label: {v: t.wire() for v, t in values.items()} for label, values in stats.by_label.items()},
        "by_label_dropped": False,
        "shadow": [s.model_dump() for s in stats.shadow],
        "batch_seq": seq,
        "partitions": stats.spans,
    }
    return Outgoing(topic, worker_id.encode(), dumps(doc), (), "stats")


def replace_refused(out: Outgoing, error: BaseException, dlq_topic: str, worker_id: str) -> Outgoing:
    """What to send instead of a record the broker refused for good, so that its batch can become durable instead
    of being re-sent forever: a small DLQ record naming the source and the refused record's size and sha256
    (reason ``output_too_large``, or ``output_refused`` when the broker found it invalid, e.g. against a topic
    schema), or for a stats record the same counts without the label breakdown."""
    if out.kind == "stats":
        doc = orjson.loads(out.value)
        doc["by_label"] = {}
        doc["by_label_dropped"] = True
        return Outgoing(out.topic, out.key, dumps(doc), out.headers, out.kind, out.source)
    topic, partition, offset = (out.source or "::-1").rsplit(":", 2)
    key, key_fields = _dlq_key(out.key)
    reason = "output_too_large" if isinstance(error, RecordRefusedError) and error.too_large else "output_refused"
    doc = {
        "schema": DLQ_SCHEMA,
        "reason": reason,
        "detail": f"the {out.kind} record for {out.topic} ({len(out.value)} bytes) was refused: {error}"[:500],
        "original_b64": "",
        "original_text": None,
        "original_size": len(out.value),
        "original_truncated": True,
        "original_sha256": hashlib.sha256(out.value).hexdigest(),
        "refused_kind": out.kind,
        "topic": topic,
        "partition": int(partition) if partition else -1,
        "offset": int(offset),
        "worker_id": worker_id,
        **key_fields,
    }
    headers = (("zeroproof-reason", reason.encode()), ("zeroproof-source", (out.source or "").encode()))
    return Outgoing(dlq_topic, key, dumps(doc), headers, "dlq", out.source)
