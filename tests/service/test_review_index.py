"""The review log's secondary indexes, verdicts and bulk acknowledgement against a real redis-server: what the
console's filters read must stay exact through recording, verdicts, acknowledgements and migrations."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis

from harness.worker import Topics
from service.review import RedisReviewStore, ReviewFilter, ReviewItem, index_dims

pytestmark = pytest.mark.integration


def item(offset: int, entity: str | None = "robot-1", model: str = "m1", **labels: str) -> ReviewItem:
    ident = f"in-{offset}"
    doc: dict[str, Any] = {
        "id": ident,
        "entity": entity,
        "input": {"id": ident, "features": [0.5], "labels": labels},
        "key": entity,
        "N": [1.0],
        "D": [0.0],
        "bottom": [True],
        "gap": [False],
        "model_version": model,
        "topic": "in",
        "partition": 0,
        "offset": offset,
        "recorded_at": 1000.0 + offset,
    }
    return ReviewItem(ident, f"in:0:{offset}", orjson.dumps(doc), 1000.0 + offset)


@pytest.fixture
def store(redis_url: str) -> RedisReviewStore:
    return RedisReviewStore(redis.Redis.from_url(redis_url), Topics().redis_prefix)


def src(*offsets: int) -> list[str]:
    return [f"in:0:{o}" for o in offsets]


def test_filters_pick_exactly_the_matching_records_newest_first(store: RedisReviewStore) -> None:
    store.record_batch(
        [
            item(1, "a", site="x"),
            item(2, "b", site="y"),
            item(3, "a", "m2", site="y"),
            item(4, None, site="x"),
            item(5, "a", site="y"),
        ]
    )
    assert store.query(ReviewFilter()) == (5, src(5, 4, 3, 2, 1))
    assert store.query(ReviewFilter(entity="a")) == (3, src(5, 3, 1))
    assert store.query(ReviewFilter(model_version="m2")) == (1, src(3))
    assert store.query(ReviewFilter(label=("site", "y"))) == (3, src(5, 3, 2))
    assert store.query(ReviewFilter(entity="a", label=("site", "y"), model_version="m1")) == (1, src(5))
    assert store.query(ReviewFilter(since=1002, until=1004)) == (3, src(4, 3, 2))
    assert store.query(ReviewFilter(entity="a", since=1002)) == (2, src(5, 3))
    assert store.query(ReviewFilter(entity="a"), offset=1, limit=1) == (3, src(3))
    assert store.query(ReviewFilter(entity="nobody")) == (0, [])
    assert store.query(ReviewFilter(entity="a", label=("site", "nope"))) == (0, [])
    assert store.client.keys(f"{store.prefix}:tmp:*") == []  # intersections leave nothing behind
    rows = store.rows(src(3))
    assert rows[0]["entity"] == "a" and rows[0]["model_version"] == "m2" and rows[0]["bottom_elements"] == 1
    assert {"m:m1", "m:m2", "e:a", "e:b"} <= set(store.dims())


def test_label_names_and_values_with_separators_do_not_collide(store: RedisReviewStore) -> None:
    store.record_batch([item(1, **{"a=b": "c"}), item(2, a="b=c"), item(3, **{"a:b": "c"})])
    assert store.query(ReviewFilter(label=("a=b", "c"))) == (1, src(1))
    assert store.query(ReviewFilter(label=("a", "b=c"))) == (1, src(2))
    assert store.query(ReviewFilter(label=("a:b", "c"))) == (1, src(3))


def test_verdicts_and_acknowledgements_move_records_between_the_state_indexes(store: RedisReviewStore) -> None:
    store.record_batch([item(1, "a"), item(2, "a"), item(3, "b")])
    assert store.set_verdict("in:0:1", "sensor_fault", by="console:ana", note="cable")
    assert not store.set_verdict("in:0:99", "sensor_fault", by="console:ana")
    with pytest.raises(ValueError, match="unknown verdict"):
        store.set_verdict("in:0:1", "looks fine", by="console:ana")
    assert store.query(ReviewFilter(verdict="sensor_fault")) == (1, src(1))
    assert store.set_verdict("in:0:1", "model_defect", by="console:bo")  # a second verdict replaces the first
    assert store.query(ReviewFilter(verdict="sensor_fault")) == (0, [])
    assert store.query(ReviewFilter(verdict="model_defect")) == (1, src(1))
    assert store.ack("in:0:1", by="console:bo")
    assert store.query(ReviewFilter(entity="a")) == (1, src(2))
    assert store.query(ReviewFilter(state="acked", entity="a")) == (1, src(1))
    assert store.query(ReviewFilter(state="acked", verdict="model_defect")) == (1, src(1))
    assert store.query(ReviewFilter(state="acked", verdict="*")) == (1, src(1))
    assert store.query(ReviewFilter(verdict="*")) == (0, [])
    rec = store.get("in:0:1")
    assert rec is not None and rec.verdict is not None
    assert (rec.verdict["verdict"], rec.verdict["by"]) == ("model_defect", "console:bo")
    assert [(a["action"], a.get("verdict"), a["by"]) for a in rec.audit] == [
        ("verdict", "sensor_fault", "console:ana"),
        ("verdict", "model_defect", "console:bo"),
        ("ack", None, "console:bo"),
    ]
    assert rec.audit[0]["note"] == "cable"
    shown = rec.full()
    assert shown["verdict"] == "model_defect" and shown["verdict_detail"]["by"] == "console:bo"


def test_bulk_acknowledge_acks_each_once_with_an_audit_entry(store: RedisReviewStore) -> None:
    store.record_batch([item(i, "a" if i % 2 else "b") for i in range(1, 8)])
    store.ack("in:0:1", by="console:ana")
    _, sources = store.query(ReviewFilter(entity="a"), 0, None)
    assert sources == src(7, 5, 3)
    assert store.ack_many([*sources, "in:0:1", "in:0:99"], by="console:bo", note="bulk (entity a)", chunk=2) == 3
    assert store.query(ReviewFilter(entity="a")) == (0, [])
    assert store.query(ReviewFilter(state="acked", entity="a"))[0] == 4
    rec = store.get("in:0:5")
    assert rec is not None and rec.status == "acked"
    [entry] = rec.audit
    assert entry == {"action": "ack", "by": "console:bo", "at": entry["at"], "note": "bulk (entity a)", "bulk": True}
    assert len(store.get("in:0:1").audit) == 1  # type: ignore[union-attr]  # already acked: no second entry


def test_records_written_before_the_indexes_are_indexed_once(store: RedisReviewStore) -> None:
    store.record_batch([item(1, "a"), item(2, "a"), item(3, "a")])
    store.ack("in:0:3", by="cli:ana")
    # what a worker of the earlier version wrote: no `ix` field, no index entries
    p = store.prefix
    for s in src(1, 2, 3):
        store.client.hdel(store.key(s), "ix")
    store.client.delete(*store.client.keys(f"{p}:ix:*"))
    assert store.query(ReviewFilter(entity="a")) == (0, [])
    assert store.ensure_index(chunk=2) == 3
    assert store.query(ReviewFilter(entity="a")) == (2, src(2, 1))
    assert store.query(ReviewFilter(state="acked", entity="a")) == (1, src(3))
    store.client.hdel(store.key("in:0:1"), "ix")
    assert store.ensure_index() == 0  # once: the marker says every record is indexed


def test_records_moved_from_the_id_keyed_layout_are_indexed(store: RedisReviewStore) -> None:
    r, p = store.client, store.prefix
    doc = orjson.loads(item(5, "old-robot", site="x").record)
    r.hset(f"{p}:rec:in-5", mapping={"record": orjson.dumps(doc), "status": "pending", "deliveries": 1})
    r.zadd(f"{p}:pending", {"in-5": 1005.0})
    assert store.migrate_legacy() == 1
    assert store.query(ReviewFilter(entity="old-robot")) == (1, src(5))
    assert store.query(ReviewFilter(label=("site", "x"))) == (1, src(5))


def test_index_dims_are_bounded_whatever_an_input_carries() -> None:
    labels = {f"k{i:02d}": "v" * 1000 for i in range(40)}
    dims = index_dims({"model_version": "m", "entity": "e" * 1000, "input": {"labels": labels}})
    assert len(dims) == 2 + 16 and max(len(d) for d in dims) < 300
    assert index_dims({"input": "not a dict", "entity": 3}) == []
