"""``zeroproof review list|show|ack|replay`` against a real Redis (and a real broker for replay)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import orjson
import pytest
import redis

from harness.worker import REPO, TopicReader, Topics
from service.review import RedisReviewStore, ReviewItem

pytestmark = pytest.mark.integration


def review(env: dict[str, str], *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "zeroproof", "review", *args],
        env=full,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
    )


def item(i: str, offset: int, features: list[float] | None = None) -> ReviewItem:
    doc = {
        "id": i,
        "entity": "robot-1",
        "input": {"id": i, "features": features or [0.5], "entity": None, "ts": None, "labels": {}},
        "key": "robot-1",
        "N": [-2.0],
        "D": [0.0],
        "bottom": [True],
        "gap": [False],
        "model_version": "known-pole-1",
        "tau_infer": 1e-6,
        "tau_train": 1e-4,
        "topic": "zeroproof.inputs",
        "partition": 0,
        "offset": offset,
        "recorded_at": 1000.0 + offset,
    }
    return ReviewItem(i, f"zeroproof.inputs:0:{offset}", orjson.dumps(doc), 1000.0 + offset)


@pytest.mark.timeout(120)
def test_review_list_show_ack_replay(redis_url: str, kafka_bootstrap: str) -> None:
    topics = Topics()
    store = RedisReviewStore(redis.Redis.from_url(redis_url), topics.redis_prefix)
    assert store.record_batch([item("a", 1), item("b", 2)]) == 2
    assert store.record_batch([item("a", 1)]) == 0  # redelivery: still one record
    env = {
        "ZEROPROOF_REDIS_URL": redis_url,
        "ZEROPROOF_REDIS_KEY_PREFIX": topics.redis_prefix,
        "ZEROPROOF_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "ZEROPROOF_INPUT_TOPIC": topics.inputs,
    }
    r = review(env, "list", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["id"] for row in rows] == ["a", "b"]
    assert rows[0]["deliveries"] == 2 and rows[0]["source"] == "zeroproof.inputs:0:1"
    r = review(env, "list")
    assert r.returncode == 0 and "a" in r.stdout and "known-pole-1" in r.stdout
    r = review(env, "show", "a")
    shown = json.loads(r.stdout)
    assert shown["record"]["N"] == [-2.0] and shown["record"]["D"] == [0.0] and shown["status"] == "pending"
    assert review(env, "show", "nope").returncode == 1
    r = review(env, "ack", "a")
    assert r.returncode == 0
    r = review(env, "list", "--json")
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["b"]
    r = review(env, "list", "--json", "--acked")
    assert [json.loads(line)["id"] for line in r.stdout.splitlines()] == ["a"]
    assert review(env, "ack", "nope").returncode == 1
    # replay asks for confirmation: without --yes (and no terminal) it refuses
    r = review(env, "replay", "b")
    assert r.returncode == 1 and "--yes" in r.stderr
    r = review(env, "replay", "b", "--yes")
    assert r.returncode == 0, r.stderr
    reader = TopicReader(kafka_bootstrap, topics.inputs)
    try:
        recs = reader.read_until(lambda rs: len(rs) >= 1, 30)
        assert json.loads(recs[0].value)["id"] == "b" and recs[0].key == b"robot-1"
    finally:
        reader.close()
    [rec] = store.find("b")
    assert rec.replays == 1
    assert [a["action"] for a in rec.audit] == ["replay"] and rec.audit[0]["target"].startswith(topics.inputs)
    # a bad setting is one clear line
    r = review({**env, "ZEROPROOF_REDIS_URL": "http://nope"}, "list")
    assert r.returncode == 2 and "ZEROPROOF_REDIS_URL" in r.stderr and "Traceback" not in r.stderr
