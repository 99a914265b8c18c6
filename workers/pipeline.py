"""One micro-batch: records in → validated, one forward, strict decode, routing → everything to make durable.

Pure with respect to I/O: ``process_batch`` returns a :class:`BatchOutcome` (messages to send, review records
to write, offsets, counts) and the worker loop makes it durable. The only per-message Python is JSON parse and
validation (pydantic-core, in Rust), building the output dict and ``orjson.dumps``; the model, the decode, the
masks and the shadow thresholds are one vectorised call each per batch.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import torch
from pydantic import ValidationError
from torch import Tensor

from service.review import ReviewItem
from service.wire import (
    DLQ_SCHEMA,
    OTHER_LABEL_VALUE,
    OUTPUT_SCHEMA,
    Counts,
    InputMessage,
    ShadowCounts,
    StatsMessage,
)
from workers.fallback import FallbackChain
from workers.model import ModelOutputError, ModelRuntime
from workers.settings import RECORD_OVERHEAD_BYTES
from workers.transport.base import Record, RecordRefusedError, TopicPartition
from zeroproof.inference import InferenceConfig, strict_inference

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
#: Per label name and batch, the stats record names at most this many label values (the rest are pooled as
#: ``__other__``), each cut to ``STATS_LABEL_VALUE_MAX_CHARS``: a stats record stays a few KB whatever the input.
STATS_LABEL_VALUE_MAX_CHARS = 128


@dataclass(frozen=True, slots=True)
class Routing:
    """Policy per status (``accept`` | ``fallback`` | ``reject``) and the controllers to ask."""

    ok: str
    gap: str
    bottom: str
    chain: FallbackChain


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


@dataclass(slots=True)
class BottomEvent:
    input_id: str
    entity: str | None
    topic: str
    partition: int
    offset: int
    elements: int


@dataclass
class BatchOutcome:
    sends: list[Outgoing] = field(default_factory=list)
    reviews: list[ReviewItem] = field(default_factory=list)
    bottoms: list[BottomEvent] = field(default_factory=list)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    dlq: dict[str, int] = field(default_factory=dict)
    elements_total: int = 0
    elements_bottom: int = 0
    elements_gap: int = 0
    by_label: dict[str, dict[str, Counts]] = field(default_factory=dict)
    shadow: list[ShadowCounts] = field(default_factory=list)
    model_version: str = ""
    tau_infer: float = 0.0
    tau_train: float | None = None
    outputs: int = 0
    fallback_by: dict[str, int] = field(default_factory=dict)
    compute_s: float = 0.0
    #: producer timestamps (ms) of the inputs that got an output, for end-to-end latency.
    input_timestamps_ms: list[int] = field(default_factory=list)
    #: ``{"topic:partition": [first_offset, last_offset]}`` covered by the batch.
    spans: dict[str, list[int]] = field(default_factory=dict)
    #: ``(error, inputs)`` per input group whose model output broke the contract (they went to the DLQ as
    #: ``model_output_invalid``); the worker logs them, rate-limited.
    model_output_errors: list[tuple[str, int]] = field(default_factory=list)


def _classify(exc: ValidationError) -> tuple[str, str]:
    errors = exc.errors(include_url=False)
    err = errors[0]
    kind = err.get("type", "")
    loc = ".".join(str(p) for p in err.get("loc", ()))
    detail = f"{loc}: {err.get('msg', '')}" if loc else str(err.get("msg", ""))
    if kind == "json_invalid":
        return "invalid_json", detail[:300]
    if kind == "missing":
        return "missing_field", detail[:300]
    if kind == "finite_number":
        return "non_finite_literal", detail[:300]
    return "wrong_type", detail[:300]


#: A DLQ record must fit one produce request: the original is kept whole up to this size (less where
#: ``ZEROPROOF_PRODUCER_MAX_REQUEST_BYTES`` is smaller, see :func:`dlq_original_limit`) and truncated beyond it
#: (its length and sha256 are recorded).
DLQ_MAX_ORIGINAL_BYTES = 256 * 1024


def dlq_original_limit(max_request_bytes: int) -> int:
    """How much of an original a DLQ record can keep: base64 takes 4/3 of it, the key and fields the rest."""
    return max(1024, min(DLQ_MAX_ORIGINAL_BYTES, (max_request_bytes - RECORD_OVERHEAD_BYTES) * 3 // 4))


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _has_nonfinite_literal(raw: bytes) -> bool:
    """NaN/Infinity literals anywhere (unknown fields included) make a message invalid JSON (contract §3).

    pydantic-core rejects them in the fields it validates but skips ignored fields; this second look runs only
    when the bytes contain such a word, and the stdlib parser tells a literal from the same word in a string.
    """
    if b"NaN" not in raw and b"Infinity" not in raw:
        return False
    try:
        json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        return True
    return False


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


def _dlq(
    rec: Record, reason: str, detail: str, dlq_topic: str, worker_id: str, max_original: int = DLQ_MAX_ORIGINAL_BYTES
) -> Outgoing:
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


def _features_array(rows: Sequence[list[float | int | None]], width: int) -> np.ndarray:
    """float64 (B, F) with NaN for ``null``; giant integers (beyond float64) become inf (→ ⊥), never a crash."""
    try:
        return np.array(rows, dtype=np.float64).reshape(len(rows), width)
    except (OverflowError, ValueError, TypeError):
        out = np.empty((len(rows), width), dtype=np.float64)
        for i, row in enumerate(rows):
            for j, v in enumerate(row):
                if v is None:
                    out[i, j] = math.nan
                else:
                    try:
                        out[i, j] = float(v)
                    except OverflowError:
                        out[i, j] = math.inf if v > 0 else -math.inf
        return out


def _row_status(bottom: Tensor, gap: Tensor) -> tuple[Tensor, Tensor]:
    rb = bottom.any(dim=1)
    rg = gap.any(dim=1) & ~rb
    return rb, rg


def _shadow_counts(
    N: Tensor, D: Tensor, bad_rows: Tensor | None, pairs: Sequence[tuple[float, float | None]]
) -> list[ShadowCounts]:
    out = []
    for ti, tt in pairs:
        _, b, g = strict_inference(N, D, InferenceConfig(tau_infer=ti, tau_train=tt))
        if bad_rows is not None:
            b[bad_rows] = True
            g[bad_rows] = False
        rb, rg = _row_status(b, g)
        out.append(
            ShadowCounts(
                tau_infer=ti,
                tau_train=tt,
                total=int(N.shape[0]),
                bottom=int(rb.sum()),
                gap=int(rg.sum()),
                elements_bottom=int(b.sum()),
                elements_gap=int(g.sum()),
            )
        )
    return out


@dataclass
class PipelineConfig:
    output_topic: str
    dlq_topic: str
    fallback_topic: str
    worker_id: str
    stats_labels: Sequence[str] = ()
    shadow_pairs: Sequence[tuple[float, float | None]] = ()
    #: inputs above this (value, key and headers together) go to the DLQ as ``too_large``: their output (which
    #: echoes labels and keeps the key) or review record could exceed a produce request (1 MiB).
    max_message_bytes: int = 256 * 1024
    #: distinct values per stats label and batch before the rest are pooled as ``__other__``.
    stats_max_label_values: int = 100
    #: how much of a malformed input a DLQ record keeps (see :func:`dlq_original_limit`).
    dlq_max_original_bytes: int = DLQ_MAX_ORIGINAL_BYTES


def process_batch(
    records: Sequence[Record],
    runtime: ModelRuntime,
    routing: Routing,
    cfg: PipelineConfig,
    now: float | None = None,
) -> BatchOutcome:
    """Validate, infer, decode and route one micro-batch; never raises for a bad message."""
    out = BatchOutcome(
        model_version=runtime.model_version, tau_infer=runtime.config.tau_infer, tau_train=runtime.config.tau_train
    )
    now = time.time() if now is None else now
    ranges: dict[tuple[str, int], list[int]] = {}
    for rec in records:
        off = rec.offset
        r = ranges.get((rec.topic, rec.partition))
        if r is None:
            ranges[(rec.topic, rec.partition)] = [off, off]
        elif off < r[0]:
            r[0] = off
        elif off > r[1]:
            r[1] = off
    for (topic, partition), (lo, hi) in ranges.items():
        out.offsets[TopicPartition(topic, partition)] = hi + 1
        out.spans[f"{topic}:{partition}"] = [lo, hi]

    def to_dlq(rec: Record, reason: str, detail: str) -> None:
        out.sends.append(_dlq(rec, reason, detail, cfg.dlq_topic, cfg.worker_id, cfg.dlq_max_original_bytes))
        out.dlq[reason] = out.dlq.get(reason, 0) + 1

    # 1. parse + validate (pydantic-core parses the JSON itself: one pass, strict, NaN literals rejected)
    by_width: dict[int, list[tuple[Record, InputMessage]]] = {}
    validate = InputMessage.__pydantic_validator__.validate_json  # the classmethod wrapper costs ~20% more
    for rec in records:
        if not rec.value:
            to_dlq(rec, "empty", "message has no value")
            continue
        size = record_size(rec)
        if size > cfg.max_message_bytes:
            to_dlq(rec, "too_large", f"{size} bytes with key and headers, the limit is {cfg.max_message_bytes}")
            continue
        try:
            msg = validate(rec.value)
        except ValidationError as exc:
            reason, detail = _classify(exc)
            to_dlq(rec, reason, detail)
            continue
        if _has_nonfinite_literal(rec.value):
            to_dlq(rec, "non_finite_literal", "NaN/Infinity literal (not JSON) in an unvalidated field")
            continue
        by_width.setdefault(len(msg.features), []).append((rec, msg))

    for width, group in by_width.items():
        try:
            if not runtime.accepts_width(width):
                expected = runtime.in_features
                for rec, _ in group:
                    to_dlq(rec, "wrong_feature_count", f"got {width} features, the model expects {expected}")
                continue
            _infer_group(group, width, runtime, routing, cfg, out, now)
        except ModelOutputError as exc:
            # The model's output breaks the contract (found on a batch, not at load): the model's fault, never
            # the inputs'. Nothing of the group reached ``out`` yet (the forward comes first in _infer_group).
            for rec, _ in group:
                to_dlq(rec, "model_output_invalid", str(exc))
            out.model_output_errors.append((str(exc), len(group)))
    return out


def _infer_group(
    group: list[tuple[Record, InputMessage]],
    width: int,
    runtime: ModelRuntime,
    routing: Routing,
    cfg: PipelineConfig,
    out: BatchOutcome,
    now: float,
) -> None:
    t0 = time.perf_counter()
    x64 = _features_array([m.features for _, m in group], width)
    x = x64.astype(np.float32)
    bad: np.ndarray[Any, Any] = np.asarray(
        ~np.isfinite(x).all(axis=1)
    )  # null, NaN or float32 overflow: a ⊥ input whatever the model says
    any_bad = bool(bad.any())
    if any_bad:
        x[bad] = 0.0
    N, D, failed = runtime.forward(x)
    if failed:
        failed_set = set(failed)
        for i in failed:
            rec = group[i][0]
            detail = "the model raised on this input"
            out.sends.append(_dlq(rec, "model_error", detail, cfg.dlq_topic, cfg.worker_id, cfg.dlq_max_original_bytes))
            out.dlq["model_error"] = out.dlq.get("model_error", 0) + 1
        keep = [i for i in range(len(group)) if i not in failed_set]
        idx = torch.tensor(keep, dtype=torch.long, device=N.device)
        N, D = N.index_select(0, idx), D.index_select(0, idx)
        group = [group[i] for i in keep]
        bad = bad[keep]
        any_bad = bool(bad.any())
        if not group:
            return
    decoded, bottom, gap = strict_inference(N, D, runtime.config)
    bad_t: Tensor | None = None
    if any_bad:
        bad_t = torch.from_numpy(bad).to(N.device)
        bottom[bad_t] = True
        gap[bad_t] = False
        decoded[bad_t] = float("nan")
    out.shadow.extend(_shadow_counts(N, D, bad_t, cfg.shadow_pairs))
    rb, rg = _row_status(bottom, gap)
    decoded_l = decoded.cpu().tolist()
    bottom_l = bottom.cpu().tolist()
    gap_l = gap.cpu().tolist()
    rb_l = rb.cpu().tolist()
    rg_l = rg.cpu().tolist()
    n_bottom_rows = int(rb.sum())
    N_cpu = N.cpu() if n_bottom_rows else None
    D_cpu = D.cpu() if n_bottom_rows else None
    out.compute_s += time.perf_counter() - t0

    n_total = n_bottom = n_gap = n_fallback = n_rejected = 0
    out.elements_total += bottom.numel()
    out.elements_bottom += int(bottom.sum())
    out.elements_gap += int(gap.sum())
    policy = {"ok": routing.ok, "gap": routing.gap, "bottom": routing.bottom}
    chain = routing.chain
    observe = chain.has_observers
    mv, ti, tt = runtime.model_version, runtime.config.tau_infer, runtime.config.tau_train
    out_width = len(decoded_l[0]) if decoded_l else 0
    labels_wanted = cfg.stats_labels
    sends = out.sends
    for i, (rec, msg) in enumerate(group):
        status = "bottom" if rb_l[i] else ("gap" if rg_l[i] else "ok")
        value = decoded_l[i]
        entity = msg.entity if msg.entity is not None else (entity_from_key(rec.key) if rec.key else None)
        action = policy[status]
        controller: str | None = None
        fb_value: list[float] | None = None
        external = False
        ent_key = entity or ""
        if action == "fallback":
            d = chain.decide(ent_key, out_width, now)
            if d is None:
                action = "reject"
            else:
                controller, fb_value, external = d.controller, d.value, d.external
        elif observe and status == "ok" and action == "accept":
            chain.observe(ent_key, value, now)
        n_total += 1
        if status == "bottom":
            n_bottom += 1
        elif status == "gap":
            n_gap += 1
        if action == "fallback":
            n_fallback += 1
            fb = out.fallback_by
            fb[controller or ""] = fb.get(controller or "", 0) + 1
        elif action == "reject":
            n_rejected += 1
        # Which model, thresholds, source record and worker produced this: the same block in the output, the
        # external fallback request and the review record.
        provenance = {
            "model_version": mv,
            "tau_infer": ti,
            "tau_train": tt,
            "topic": rec.topic,
            "partition": rec.partition,
            "offset": rec.offset,
            "worker_id": cfg.worker_id,
        }
        doc: dict[str, Any] = {
            "schema": OUTPUT_SCHEMA,
            "id": msg.id,
            "entity": entity,
            "value": value,
            "bottom": bottom_l[i],
            "gap": gap_l[i],
            "status": status,
            "action": action,
            "fallback_controller": controller,
            "fallback_value": fb_value,
            **provenance,
            "ts": msg.ts,
            "labels": msg.labels,
        }
        source = f"{rec.topic}:{rec.partition}:{rec.offset}"
        sends.append(Outgoing(cfg.output_topic, rec.key, dumps(doc), (), "output", source))
        out.input_timestamps_ms.append(rec.timestamp_ms)
        if external:
            req = {
                "id": msg.id,
                "entity": entity,
                "status": status,
                "features": msg.features,
                "model_value": value,
                "bottom": bottom_l[i],
                "gap": gap_l[i],
                **provenance,
            }
            sends.append(Outgoing(cfg.fallback_topic, rec.key, dumps(req), (), "fallback", source))
        if status == "bottom":
            assert N_cpu is not None
            assert D_cpu is not None
            review = {
                "id": msg.id,
                "entity": entity,
                "input": msg.model_dump(mode="json"),
                "key": rec.key.decode("utf-8", "replace") if rec.key is not None else None,
                "N": N_cpu[i].tolist(),
                "D": D_cpu[i].tolist(),
                "value": value,
                "bottom": bottom_l[i],
                "gap": gap_l[i],
                "nonfinite_input": bool(bad[i]),
                **provenance,
                "recorded_at": now,
            }
            out.reviews.append(ReviewItem(msg.id, source, dumps(review), now))
            out.bottoms.append(BottomEvent(msg.id, entity, rec.topic, rec.partition, rec.offset, sum(bottom_l[i])))
        if labels_wanted:
            for name in labels_wanted:
                lv = msg.labels.get(name)
                if lv is None:
                    continue
                values = out.by_label.setdefault(name, {})
                lv = lv[:STATS_LABEL_VALUE_MAX_CHARS]
                if lv not in values and len(values) >= cfg.stats_max_label_values:
                    lv = OTHER_LABEL_VALUE
                c = values.setdefault(lv, Counts())
                c.total += 1
                c.bottom += status == "bottom"
                c.gap += status == "gap"
                c.fallback += action == "fallback"
                c.rejected += action == "reject"
    out.outputs += len(group)
    c = out.counts
    c.total += n_total
    c.bottom += n_bottom
    c.gap += n_gap
    c.fallback += n_fallback
    c.rejected += n_rejected


def stats_message(out: BatchOutcome, worker_id: str, window_start: float, window_end: float, seq: int) -> bytes:
    msg = StatsMessage(
        worker_id=worker_id,
        model_version=out.model_version,
        tau_infer=out.tau_infer,
        tau_train=out.tau_train,
        window_start=window_start,
        window_end=window_end,
        counts=out.counts,
        dlq=sum(out.dlq.values()),
        elements_total=out.elements_total,
        elements_bottom=out.elements_bottom,
        elements_gap=out.elements_gap,
        by_label=out.by_label,
        shadow=out.shadow,
        batch_seq=seq,
        partitions=out.spans,
    )
    return msg.model_dump_json(by_alias=True).encode()
