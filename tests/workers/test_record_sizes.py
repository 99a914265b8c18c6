"""Nothing the worker produces may exceed what the broker accepts (issue 12 §2): inputs are measured with their key
and headers, keys are capped where they are copied, label breakdowns are bounded, and a record the broker still
refuses is replaced by a small DLQ record instead of being re-sent forever."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from harness.worker import known_pole_bundle, msg
from service.wire import OTHER_LABEL_VALUE, DLQMessage, StatsMessage
from tests.workers.test_worker_loop import committed_total, make, spin
from workers.fallback import HoldLastSafe, build_chain
from workers.model import load_runtime
from workers.pipeline import BatchOutcome, PipelineConfig, Routing, process_batch
from workers.records import (
    ENTITY_MAX_CHARS,
    STATS_LABEL_VALUE_MAX_CHARS,
    Outgoing,
    entity_from_key,
    replace_refused,
    stats_record,
)
from workers.settings import SettingsError, WorkerSettings, load_settings
from workers.transport.base import Record, RecordRefusedError

pytestmark = pytest.mark.unit


def run(records: list[Record], tmp_path: Path, **cfg: Any) -> BatchOutcome:
    s = WorkerSettings(model=known_pole_bundle(tmp_path / "kp.zpb"))
    rt = load_runtime(s)
    routing = Routing("accept", "fallback", "fallback", build_chain(s))
    pcfg = PipelineConfig(output_topic="out", dlq_topic="dlq", fallback_topic="fb", worker_id="w1", **cfg)
    return process_batch(records, rt, routing, pcfg)


def record(
    value: bytes, offset: int, key: bytes | None = b"arm-1", headers: tuple[tuple[str, bytes], ...] = ()
) -> Record:
    return Record("in", 0, offset, key, value, 0, headers)


def test_the_input_limit_counts_key_and_headers(tmp_path: Path) -> None:
    small = msg("a", [0.1])
    out = run(
        [
            record(small, 0, key=b"k" * 700_000),
            record(small, 1, key=b"k", headers=(("trace", b"h" * 300_000),)),
            record(small, 2),
        ],
        tmp_path,
    )
    assert out.stats.dlq == {"too_large": 2}
    sends = out.delivery.sends
    dlq = [DLQMessage.model_validate_json(s.value) for s in sends if s.topic == "dlq"]
    assert "with key and headers" in dlq[0].detail
    big = next(s for s in sends if s.topic == "dlq" and json.loads(s.value)["offset"] == 0)
    assert len(big.key) == 64 and len(big.value) < 4096  # the DLQ record's own key is the sha256, not 700 KB
    assert dlq[0].key_size == 700_000 and dlq[0].key_sha256 == hashlib.sha256(b"k" * 700_000).hexdigest()
    assert len(dlq[0].key or "") <= ENTITY_MAX_CHARS


def test_a_malformed_input_with_a_huge_key_gets_a_bounded_dlq_record(tmp_path: Path) -> None:
    out = run([record(b"{not json", 0, key=b"x" * 200_000)], tmp_path, max_message_bytes=900 * 1024)
    [dlq] = out.delivery.sends
    assert dlq.topic == "dlq" and len(dlq.key) == 64 and len(dlq.value) < 4096
    assert json.loads(dlq.value)["reason"] == "invalid_json"


def test_an_entity_taken_from_a_long_key_is_capped_and_stays_distinct(tmp_path: Path) -> None:
    a, b = b"r" * 3000 + b"a", b"r" * 3000 + b"b"
    assert len(entity_from_key(a)) == ENTITY_MAX_CHARS and entity_from_key(a) != entity_from_key(b)
    assert entity_from_key(b"arm-1") == "arm-1"
    out = run([record(msg("x", [0.1]), 0, key=a)], tmp_path)
    [o] = [json.loads(s.value) for s in out.delivery.sends]
    assert o["entity"] == entity_from_key(a)


def test_label_breakdown_is_bounded_per_batch(tmp_path: Path) -> None:
    records = [record(msg(i, [0.1], labels={"site": f"{i:04d}" + "s" * 1000}), i) for i in range(300)]
    out = run(records, tmp_path, stats_labels=["site"], stats_max_label_values=100)
    sites = out.stats.by_label["site"]
    assert len(sites) == 101 and sites[OTHER_LABEL_VALUE].total == 200
    assert all(len(v) <= STATS_LABEL_VALUE_MAX_CHARS for v in sites)
    assert sum(c.total for c in sites.values()) == 300
    raw = stats_record("stats", out.stats, "w1", 0.0, 1.0, 1).value
    assert len(raw) < 64 * 1024, len(raw)
    StatsMessage.model_validate_json(raw)


def test_a_refused_output_becomes_a_small_dlq_record_and_stats_lose_only_their_labels() -> None:
    out = Outgoing("out", b"arm-1", b'{"id":"x","labels":{"a":"' + b"z" * 2_000_000 + b'"}}', (), "output", "in:3:77")
    too_large = RecordRefusedError("MessageSizeTooLargeError", too_large=True)
    dlq = replace_refused(out, too_large, "dlq", "w1")
    doc = DLQMessage.model_validate_json(dlq.value)
    assert (dlq.topic, dlq.kind, doc.reason, doc.refused_kind) == ("dlq", "dlq", "output_too_large", "output")
    assert (doc.topic, doc.partition, doc.offset) == ("in", 3, 77)
    assert doc.original_sha256 == hashlib.sha256(out.value).hexdigest() and doc.original_size == len(out.value)
    assert len(dlq.value) < 2048
    invalid = replace_refused(out, RecordRefusedError("InvalidRecordError", too_large=False), "dlq", "w1")
    assert json.loads(invalid.value)["reason"] == "output_refused"
    stats = StatsMessage(
        worker_id="w1",
        model_version="v",
        tau_infer=1e-6,
        tau_train=None,
        window_start=0,
        window_end=1,
        counts={"total": 3},
        by_label={"site": {"a": {"total": 3}}},
    )
    raw = stats.model_dump_json(by_alias=True).encode()
    slim = replace_refused(Outgoing("stats", b"w1", raw, (), "stats"), too_large, "dlq", "w1")
    doc2 = orjson.loads(slim.value)
    assert slim.topic == "stats" and doc2["by_label"] == {} and doc2["by_label_dropped"] is True
    assert doc2["counts"]["total"] == 3


def test_the_checkpoint_replaces_a_refused_record_and_commits(tmp_path: Path) -> None:
    w, broker, _, _ = make(tmp_path, max_batch_size=4)
    broker.max_record_bytes = 2000
    broker.append("in", b"arm", msg("big", [0.1], labels={"note": "n" * 5000}))
    for i in range(5):
        broker.append("in", b"arm", msg(i, [0.1]))
    spin(w, 0.5)
    assert committed_total(broker) == 6  # before the fix: re-sent forever, nothing committed
    dlq = [json.loads(v) for v in broker.values("zeroproof.dlq")]
    assert [d["reason"] for d in dlq] == ["output_too_large"]
    outs = [json.loads(v)["id"] for v in broker.values("zeroproof.outputs")]
    assert sorted(outs) == ["0", "1", "2", "3", "4"]
    assert w.checkpoint.refused == 1


def test_only_the_record_refused_alone_is_replaced_and_a_dead_producer_is_replaced(tmp_path: Path) -> None:
    """A broker refuses a produce request's batch as a whole, and kafka-python's idempotent producer then fails
    every later send (a fatal state): neighbours of the refused record must be tried again alone, not blamed,
    and the worker must go on with a new producer."""
    w, broker, _, _ = make(tmp_path, max_batch_size=8)
    broker.max_record_bytes = 2000
    broker.refusal_takes_neighbours = 3
    broker.refusal_breaks_producer = True
    for i in range(3):
        broker.append("in", b"arm", msg(i, [0.1]))
    broker.append("in", b"arm", msg("big", [0.1], labels={"note": "n" * 5000}))
    for i in range(3, 8):
        broker.append("in", b"arm", msg(i, [0.1]))
    spin(w, 0.5)
    assert committed_total(broker) == 9
    assert [json.loads(v)["reason"] for v in broker.values("zeroproof.dlq")] == ["output_too_large"]
    assert sorted(json.loads(v)["id"] for v in broker.values("zeroproof.outputs")) == [str(i) for i in range(8)]
    assert w.checkpoint.refused == 1
    assert not w.checkpoint.producer.broken()  # replaced


def test_hold_last_is_bounded_in_bytes() -> None:
    held = HoldLastSafe(max_age_s=60, max_entities=100_000, max_bytes=2_000_000)
    for i in range(200):
        held.observe(f"{i:03d}" + "k" * 400_000, [1.0], now=float(i))
    assert held.bytes <= 2_000_000 and len(held._last) == 4
    assert held.propose("199" + "k" * 400_000, 1, now=199.0) is not None  # the newest are kept
    assert held.propose("000" + "k" * 400_000, 1, now=199.0) is None


def test_limits_that_cannot_hold_are_refused_at_start_up() -> None:
    with pytest.raises(SettingsError, match="ZEROPROOF_MAX_MESSAGE_BYTES"):
        load_settings([], max_message_bytes=900 * 1024, producer_max_request_bytes=512 * 1024)
