"""The Redis review log against a real redis-server: one record per source record, ids that collide, the audit
trail, the eviction-policy check and the move from the id-keyed layout."""

from __future__ import annotations

import orjson
import pytest
import redis

from harness.services import start_redis
from harness.worker import Topics
from service.review import RedisReviewStore, ReviewStoreError
from tests.workers.test_review_cli import item

pytestmark = pytest.mark.integration


@pytest.fixture
def store(redis_url: str) -> RedisReviewStore:
    return RedisReviewStore(redis.Redis.from_url(redis_url), Topics().redis_prefix)


def test_a_redelivery_is_one_record_and_a_reused_id_is_another(store: RedisReviewStore) -> None:
    assert store.record_batch([item("robot-7/42", 10)]) == 1
    assert store.record_batch([item("robot-7/42", 10)]) == 0  # the same Kafka record again
    assert store.record_batch([item("robot-7/42", 11, features=[0.25])]) == 1  # another input, same id
    records = store.find("robot-7/42")
    assert [r.source for r in records] == ["zeroproof.inputs:0:10", "zeroproof.inputs:0:11"]
    assert [r.deliveries for r in records] == [2, 1]
    assert [r.record["input"]["features"] for r in records] == [[0.5], [0.25]]
    assert records[0].shares_id_with == ["zeroproof.inputs:0:11"]
    assert store.pending_ids() == ["robot-7/42", "robot-7/42"]


def test_ack_keeps_who_and_when_in_the_audit_trail(store: RedisReviewStore) -> None:
    store.record_batch([item("a", 1), item("a", 2)])
    assert store.ack("zeroproof.inputs:0:2", by="cli:ana", note="sensor glitch")
    assert not store.ack("zeroproof.inputs:0:99", by="cli:ana")
    first, second = store.find("a")
    assert (first.status, second.status) == ("pending", "acked")
    assert second.audit[0]["by"] == "cli:ana" and second.audit[0]["note"] == "sensor glitch"
    assert store.list_sources("acked", 0) == ["zeroproof.inputs:0:2"]
    assert store.ack("zeroproof.inputs:0:2", by="cli:bo")  # acknowledging twice is not an error
    assert len(store.find("a")[1].audit) == 1  # ... and not a second action


def test_records_of_the_id_keyed_layout_are_moved_once(store: RedisReviewStore) -> None:
    r, p = store.client, store.prefix
    doc = orjson.loads(item("old", 5).record)
    r.hset(f"{p}:rec:old", mapping={"record": orjson.dumps(doc), "status": "pending", "deliveries": 3})
    r.zadd(f"{p}:pending", {"old": 1005.0})
    r.hset(f"{p}:rec:older", mapping={"record": orjson.dumps({**doc, "offset": 4}), "status": "acked"})
    r.zadd(f"{p}:acked", {"older": 1004.0})
    assert store.migrate_legacy() == 2
    assert store.migrate_legacy() == 0
    [old] = store.find("old")
    assert (old.source, old.status, old.deliveries) == ("zeroproof.inputs:0:5", "pending", 3)
    assert store.list_sources("acked", 0) == ["zeroproof.inputs:0:4"]
    assert not r.exists(f"{p}:rec:old", f"{p}:pending", f"{p}:acked")


def test_an_evicting_redis_is_refused_before_any_write(tmp_path: object) -> None:
    server = start_redis()
    try:
        client = redis.Redis(port=server.port)
        client.config_set("maxmemory", "50mb")
        client.config_set("maxmemory-policy", "allkeys-lru")
        store = RedisReviewStore(client, Topics().redis_prefix)
        assert "allkeys-lru" in (store.eviction_risk() or "")
        with pytest.raises(ReviewStoreError, match="allkeys-lru"):
            store.record_batch([item("x", 1)])
        assert store.pending_ids() == []
        client.config_set("maxmemory-policy", "volatile-lru")  # evicts keys with a TTL only: ours have none
        assert store.eviction_risk() is None
        assert store.record_batch([item("x", 1)]) == 1
        client.config_set("maxmemory", "0")
        client.config_set("maxmemory-policy", "allkeys-lru")  # no limit: nothing is evicted
        assert store.eviction_risk() is None
    finally:
        server.stop()
