"""One micro-batch: records in → parse → decode → route → encode → everything to make durable.

Pure with respect to I/O: :func:`process_batch` returns a :class:`BatchOutcome` — a :class:`Delivery` (the records
to send, the review items to write, the offsets they cover: all the checkpoint needs) and the
:class:`~workers.records.BatchStats` (all the metrics and the stats record need). The stages:

- **parse**: JSON parse and validation (pydantic-core, in Rust, one pass); bad messages go to the DLQ;
- **decode**: per feature width, one forward and one strict decode for the whole group (vectorised), rows the
  model raised on to the DLQ, non-finite inputs forced to ⊥, shadow thresholds;
- **route**: per row, the policy for its status and the fallback controllers (the only per-row decisions);
- **encode**: per row, the output, the external fallback request, the review record (``workers.records``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError
from torch import Tensor

from service.review import ReviewItem
from service.wire import INPUT, OTHER_LABEL_VALUE, InputMessage, ShadowCounts
from workers.fallback import FallbackChain
from workers.model import ModelOutputError, ModelRuntime
from workers.records import (
    DLQ_MAX_ORIGINAL_BYTES,
    STATS_LABEL_VALUE_MAX_CHARS,
    BatchStats,
    Outgoing,
    OutputContext,
    Provenance,
    Tally,
    dlq_record,
    entity_from_key,
    fallback_request,
    output_record,
    record_size,
    review_item,
)
from workers.transport.base import Record, TopicPartition
from zeroproof.inference import InferenceConfig, strict_inference


@dataclass(frozen=True, slots=True)
class Routing:
    """Policy per status (``accept`` | ``fallback`` | ``reject``) and the controllers to ask."""

    ok: str
    gap: str
    bottom: str
    chain: FallbackChain

    def policies(self) -> dict[str, str]:
        """The action per status, for one lookup per row."""
        return {"ok": self.ok, "gap": self.gap, "bottom": self.bottom}


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
    #: how much of a malformed input a DLQ record keeps (see :func:`~workers.records.dlq_original_limit`).
    dlq_max_original_bytes: int = DLQ_MAX_ORIGINAL_BYTES


@dataclass(slots=True)
class BottomEvent:
    """A ⊥ input, for the rate-limited ``bottom_input`` log line."""

    input_id: str
    entity: str | None
    topic: str
    partition: int
    offset: int
    elements: int


@dataclass
class Delivery:
    """What must become durable before the batch's offsets may be committed (contract §4)."""

    sends: list[Outgoing] = field(default_factory=list)
    reviews: list[ReviewItem] = field(default_factory=list)
    #: next offset to read per partition once the batch is durable
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    #: input records per partition: what a crash before the commit would deliver again (the duplicate bound)
    records: dict[TopicPartition, int] = field(default_factory=dict)
    #: producer timestamps (ms) of the inputs that got an output, for end-to-end latency.
    input_timestamps_ms: list[int] = field(default_factory=list)


@dataclass
class BatchOutcome:
    delivery: Delivery
    stats: BatchStats
    bottoms: list[BottomEvent] = field(default_factory=list)
    #: ``(error, inputs)`` per input group whose model output broke the contract (they went to the DLQ as
    #: ``model_output_invalid``); the worker logs them, rate-limited.
    model_output_errors: list[tuple[str, int]] = field(default_factory=list)


Reject = Callable[[Record, str, str], None]


# --- parse ----------------------------------------------------------------------------------------------------
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


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _has_nonfinite_literal(raw: bytes) -> bool:
    """NaN/Infinity literals anywhere (unknown fields included) make a message invalid JSON (contract §3).

    pydantic-core rejects them in the fields it validates but skips ignored fields; this second look runs only
    when the bytes contain such a word, and the stdlib parser tells a literal from the same word in a string.
    """
    # Most inputs hold no capital N or I at all: two one-byte ``find`` scans (memchr, ~90 ns each on a 160-byte
    # input) settle them; ``in`` takes the general substring search even for one byte (~330 ns).
    if (raw.find(b"N") < 0 and raw.find(b"I") < 0) or (raw.find(b"NaN") < 0 and raw.find(b"Infinity") < 0):
        return False
    try:
        json.loads(raw, parse_constant=_reject_constant)
    except ValueError:
        return True
    return False


def parse(
    records: Sequence[Record], max_message_bytes: int, reject: Reject
) -> dict[int, list[tuple[Record, InputMessage]]]:
    """Valid inputs grouped by feature count; every other record goes to ``reject`` with its reason."""
    by_width: dict[int, list[tuple[Record, InputMessage]]] = {}
    validate = INPUT.validator.validate_json  # the TypeAdapter's own method costs ~20% more
    for rec in records:
        value, key = rec.value, rec.key
        if not value:
            reject(rec, "empty", "message has no value")
            continue
        size = record_size(rec) if rec.headers else len(value) + (len(key) if key else 0)
        if size > max_message_bytes:
            reject(rec, "too_large", f"{size} bytes with key and headers, the limit is {max_message_bytes}")
            continue
        try:
            msg = validate(value)
        except ValidationError as exc:
            reject(rec, *_classify(exc))
            continue
        if _has_nonfinite_literal(value):
            reject(rec, "non_finite_literal", "NaN/Infinity literal (not JSON) in an unvalidated field")
            continue
        by_width.setdefault(len(msg["features"]), []).append((rec, msg))
    return by_width


# --- decode ---------------------------------------------------------------------------------------------------
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


Array = np.ndarray[Any, Any]


def _host(t: Tensor) -> Array:
    """``t`` as a numpy array on the host (no copy for a CPU float32/float64/bool tensor). What follows the decode
    is a handful of operations on a few rows: a few µs each in torch (per-operation dispatch), under 1 µs in numpy,
    which is most of a one-record batch's cost at low load. Half-precision outputs are widened (exactly)."""
    t = t.detach().cpu()
    if t.dtype not in (torch.float32, torch.float64, torch.bool):
        t = t.float()
    return t.numpy()


def _mask_rows(mask: Array) -> list[list[bool]]:
    """Per-row lists of a (B, W) mask. A mask with no True (the gap mask of most batches, the ⊥ mask of nearly all)
    gives the same all-False list for every row: the rows are only ever serialised, never changed."""
    if not mask.any():
        return [[False] * mask.shape[1]] * mask.shape[0]
    rows: list[list[bool]] = mask.tolist()
    return rows


def _row_status(bottom: Array, gap: Array) -> tuple[Array, Array]:
    """Per row: ⊥ if any element is ⊥; gap if not ⊥ and any element is in the gap."""
    rb: Array = np.asarray(bottom.any(axis=1))
    rg: Array = np.asarray(gap.any(axis=1) & ~rb)
    return rb, rg


def _shadow_counts(
    N: Tensor, D: Tensor, bad_rows: Array | None, pairs: Sequence[tuple[float, float | None]]
) -> list[ShadowCounts]:
    out = []
    for ti, tt in pairs:
        _, bt, gt = strict_inference(N, D, InferenceConfig(tau_infer=ti, tau_train=tt))
        b, g = _host(bt), _host(gt)
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
class Decoded:
    """One feature-width group after the forward and the strict decode, as plain per-row lists."""

    group: list[tuple[Record, InputMessage]]
    values: list[list[float | None]]
    bottom: list[list[bool]]
    gap: list[list[bool]]
    status: list[str]
    #: rows whose input held a null/NaN/overflowing feature: ⊥ whatever the model said
    nonfinite: list[bool]
    #: N and D of the ⊥ rows (the review log keeps them)
    N: dict[int, list[float]]
    D: dict[int, list[float]]


def decode(
    group: list[tuple[Record, InputMessage]],
    width: int,
    runtime: ModelRuntime,
    shadow_pairs: Sequence[tuple[float, float | None]],
    reject: Reject,
    stats: BatchStats,
) -> Decoded | None:
    """One forward and one strict decode for the group; ``None`` when every row failed in the model."""
    t0 = time.perf_counter()
    with np.errstate(over="ignore"):  # a float32 overflow becomes inf, i.e. a ⊥ input: intended
        x = _features_array([m["features"] for _, m in group], width).astype(np.float32)
    bad: np.ndarray[Any, Any] = np.asarray(~np.isfinite(x).all(axis=1))  # null, NaN or float32 overflow: ⊥
    if bad.any():
        x[bad] = 0.0
    N, D, failed = runtime.forward(x)
    if failed:
        failed_set = set(failed)
        for i in failed:
            reject(group[i][0], "model_error", "the model raised on this input")
        keep = [i for i in range(len(group)) if i not in failed_set]
        if not keep:
            return None
        idx = torch.tensor(keep, dtype=torch.long, device=N.device)
        N, D = N.index_select(0, idx), D.index_select(0, idx)
        group = [group[i] for i in keep]
        bad = bad[keep]
    decoded, bottom_t, gap_t = strict_inference(N, D, runtime.config)
    values, bottom, gap = _host(decoded), _host(bottom_t), _host(gap_t)
    any_bad = bool(bad.any())
    if any_bad:
        bottom[bad] = True
        gap[bad] = False
        values[bad] = np.nan
    if shadow_pairs:
        stats.shadow.extend(_shadow_counts(N, D, bad if any_bad else None, shadow_pairs))
    stats.elements_total += int(bottom.size)
    stats.elements_bottom += int(bottom.sum())
    stats.elements_gap += int(gap.sum())
    rb, rg = _row_status(bottom, gap)
    rb_l, rg_l = rb.tolist(), rg.tolist()
    bottom_rows = [i for i, b in enumerate(rb_l) if b]
    N_rows: dict[int, list[float]] = {}
    D_rows: dict[int, list[float]] = {}
    if bottom_rows:
        N_host, D_host = _host(N), _host(D)
        N_rows = {i: N_host[i].tolist() for i in bottom_rows}
        D_rows = {i: D_host[i].tolist() for i in bottom_rows}
    out = Decoded(
        group=group,
        values=values.tolist(),
        bottom=_mask_rows(bottom),
        gap=_mask_rows(gap),
        status=["bottom" if b else ("gap" if g else "ok") for b, g in zip(rb_l, rg_l, strict=True)],
        nonfinite=bad.tolist(),
        N=N_rows,
        D=D_rows,
    )
    stats.compute_s += time.perf_counter() - t0
    return out


# --- route ----------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Route:
    """What to do with one row: the action for its status, and the fallback that acted (if any)."""

    action: str
    controller: str | None = None
    value: list[float] | None = None
    external: bool = False


#: the route of a row whose policy is not ``fallback``: no controller acted (its action is the policy's)
_NO_FALLBACK = Route("accept")
_REJECT = Route("reject")


def fallback_route(entity: str, width: int, chain: FallbackChain, now: float) -> Route:
    """``fallback``: the controllers in order; ``reject`` when none can act."""
    d = chain.decide(entity, width, now)
    if d is None:
        return _REJECT
    return Route("fallback", d.controller, d.value, d.external)


# --- tally ------------------------------------------------------------------------------------------------------
def _tally_labels(stats: BatchStats, status: str, action: str, labels: dict[str, str], cfg: PipelineConfig) -> None:
    for label in cfg.stats_labels:
        lv = labels.get(label)
        if lv is None:
            continue
        values = stats.by_label.setdefault(label, {})
        lv = lv[:STATS_LABEL_VALUE_MAX_CHARS]
        if lv not in values and len(values) >= cfg.stats_max_label_values:
            lv = OTHER_LABEL_VALUE
        values.setdefault(lv, Tally()).count(status, action)


# --- the batch --------------------------------------------------------------------------------------------------
def _spans(records: Sequence[Record], delivery: Delivery, stats: BatchStats) -> None:
    ranges: dict[tuple[str, int], list[int]] = {}
    for rec in records:
        off = rec.offset
        r = ranges.get((rec.topic, rec.partition))
        if r is None:
            ranges[(rec.topic, rec.partition)] = [off, off, 1]
            continue
        r[2] += 1
        if off < r[0]:
            r[0] = off
        elif off > r[1]:
            r[1] = off
    for (topic, partition), (lo, hi, count) in ranges.items():
        tp = TopicPartition(topic, partition)
        delivery.offsets[tp] = hi + 1
        delivery.records[tp] = count
        stats.spans[f"{topic}:{partition}"] = [lo, hi]


def process_batch(
    records: Sequence[Record],
    runtime: ModelRuntime,
    routing: Routing,
    cfg: PipelineConfig,
    now: float | None = None,
) -> BatchOutcome:
    """Validate, infer, decode, route and encode one micro-batch; never raises for a bad message."""
    now = time.time() if now is None else now
    stats = BatchStats(
        model_version=runtime.model_version, tau_infer=runtime.config.tau_infer, tau_train=runtime.config.tau_train
    )
    out = BatchOutcome(Delivery(), stats)
    _spans(records, out.delivery, stats)

    def reject(rec: Record, reason: str, detail: str) -> None:
        out.delivery.sends.append(
            dlq_record(rec, reason, detail, cfg.dlq_topic, cfg.worker_id, cfg.dlq_max_original_bytes)
        )
        stats.dlq[reason] = stats.dlq.get(reason, 0) + 1

    for width, group in parse(records, cfg.max_message_bytes, reject).items():
        try:
            if not runtime.accepts_width(width):
                for rec, _ in group:
                    reject(rec, "wrong_feature_count", f"got {width} features, the model expects {runtime.in_features}")
                continue
            decoded = decode(group, width, runtime, cfg.shadow_pairs, reject, stats)
        except ModelOutputError as exc:
            # The model's output breaks the contract (found on a batch, not at load): the model's fault, never
            # the inputs'. Nothing of the group reached ``out`` yet (the forward comes first in decode).
            for rec, _ in group:
                reject(rec, "model_output_invalid", str(exc))
            out.model_output_errors.append((str(exc), len(group)))
            continue
        if decoded is not None:
            _encode(decoded, runtime, routing, cfg, out, now)
    return out


def _encode(
    d: Decoded, runtime: ModelRuntime, routing: Routing, cfg: PipelineConfig, out: BatchOutcome, now: float
) -> None:
    """Route each row, then write its output, its fallback request and its review record.

    Per row only what differs between rows: the common row (ok, accepted) is one dictionary lookup for its policy
    and its output record. Counts are taken for the whole group; accepted values reach the fallback controllers
    once per entity (the latest), before the chain is next asked to decide (``FallbackChain.observe_latest``);
    an entity derived from a Kafka key is decoded once per key."""
    c = OutputContext(
        cfg.output_topic, runtime.model_version, runtime.config.tau_infer, runtime.config.tau_train, cfg.worker_id
    )
    width = len(d.values[0]) if d.values else 0
    delivery, stats = out.delivery, out.stats
    send = delivery.sends.append
    chain = routing.chain
    policy = routing.policies()
    observing = routing.ok == "accept" and chain.has_observers
    latest: dict[str, list[float]] = {}  # accepted values not yet shown to the chain, by last occurrence
    key_entities: dict[bytes, str] = {}
    labelled = bool(cfg.stats_labels)
    counts = stats.counts
    rows = zip(d.group, d.status, d.values, d.bottom, d.gap, strict=True)
    for i, ((rec, msg), status, value, bottom, gap) in enumerate(rows):
        entity = msg.get("entity")
        if entity is None and rec.key:
            entity = key_entities.get(rec.key)
            if entity is None:
                entity = key_entities[rec.key] = entity_from_key(rec.key)
        action = policy[status]
        r = _NO_FALLBACK
        if action == "fallback":
            if latest:
                chain.observe_latest(latest, now)
                latest.clear()
            r = fallback_route(entity or "", width, chain, now)
            action = r.action
            if action == "fallback":
                counts.fallback += 1
                name = r.controller or ""
                stats.fallback_by[name] = stats.fallback_by.get(name, 0) + 1
            else:
                counts.rejected += 1
        elif action == "reject":
            counts.rejected += 1
        elif observing and status == "ok":
            e = entity or ""
            latest.pop(e, None)
            latest[e] = value  # type: ignore[assignment]  # ok rows hold no None
        if labelled and msg.get("labels"):
            _tally_labels(stats, status, action, msg["labels"], cfg)
        send(output_record(c, rec, msg, entity, value, bottom, gap, status, action, r.controller, r.value))
        if r.external or status == "bottom":
            prov = Provenance(
                c.model_version, c.tau_infer, c.tau_train, rec.topic, rec.partition, rec.offset, c.worker_id
            )
            if r.external:
                send(fallback_request(cfg.fallback_topic, rec, msg, entity, prov, value, bottom, gap, status))
            if status == "bottom":
                delivery.reviews.append(
                    review_item(rec, msg, entity, prov, d.N[i], d.D[i], value, bottom, gap, d.nonfinite[i], now)
                )
                out.bottoms.append(BottomEvent(msg["id"], entity, rec.topic, rec.partition, rec.offset, sum(bottom)))
    if latest:
        chain.observe_latest(latest, now)
    n = len(d.group)
    counts.total += n
    counts.bottom += d.status.count("bottom")
    counts.gap += d.status.count("gap")
    delivery.input_timestamps_ms.extend([rec.timestamp_ms for rec, _ in d.group])
    stats.outputs += n
