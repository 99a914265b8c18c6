"""Every ⊥ input reaches the review log and stays there (issue 12 §3 and §6), through a real worker process.

- Robots that number their own messages collide: two different ⊥ inputs with one ``id`` are two records, and
  ``zeroproof review list`` / ``show`` present both (before: one record, ``deliveries=2``, the second input lost).
- A Redis that may evict keys (``allkeys-lru`` with ``maxmemory``) is refused at start-up with one line (before:
  314 of 400 committed ⊥ records evicted without a sign), unless ``ZEROPROOF_REDIS_ALLOW_EVICTION`` says so; a
  Redis that comes back evicting after an outage gets no ⊥ records and nothing is committed past them until it
  is fixed.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import redis

from harness.load import wait_until
from harness.services import start_redis
from harness.worker import POLE, TopicReader, Topics, WorkerProc, committed_offsets, msg, produce, worker_env
from service.review import RedisReviewStore
from tests.reliability.figures import record
from tests.reliability.test_security import run_worker
from tests.workers.test_review_cli import review

pytestmark = [pytest.mark.integration]


@pytest.mark.timeout(120)
def test_two_bottom_inputs_sharing_an_id_are_both_recorded_and_listed(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    w = WorkerProc(worker_env(kafka_bootstrap, redis_url, bundle, topics), tmp_path / "w.log")
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    try:
        w.wait_event("partitions_assigned", 60)
        hostile = "arm-3/\x1b[2J\rseq-17"  # the id collides, and carries ESC and CR
        produce(
            kafka_bootstrap,
            topics.inputs,
            [(b"arm-3", msg(hostile, [POLE])), (b"arm-3", msg(hostile, [None])), (b"arm-3", msg("ok", [0.1]))],
        )
        reader.read_until(lambda rs: len(rs) >= 3, 60)
        outs = reader.json()
        assert [o["status"] for o in outs] == ["bottom", "bottom", "ok"]
        store = RedisReviewStore(redis.Redis.from_url(redis_url), topics.redis_prefix)
        assert wait_until(lambda: len(store.find(hostile)) == 2, 20), store.pending_ids()
        first, second = store.find(hostile)
        assert (first.record["offset"], second.record["offset"]) == (outs[0]["offset"], outs[1]["offset"])
        assert first.record["input"]["features"] == [POLE] and second.record["input"]["features"] == [None]
        assert first.deliveries == second.deliveries == 1
        env = {"ZEROPROOF_REDIS_URL": redis_url, "ZEROPROOF_REDIS_KEY_PREFIX": topics.redis_prefix}
        listed = review(env, "list", "--json")
        rows = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [r["source"] for r in rows] == [first.source, second.source]
        table = review(env, "list").stdout
        assert "\x1b" not in table and "\r" not in table and "\\x1b[2J\\x0dseq-17" in table
        shown = review(env, "show", hostile)
        assert shown.returncode == 0 and "2 different inputs share this id" in shown.stderr
        assert [d["source"] for d in json.loads(shown.stdout)] == [first.source, second.source]
        refused = review(env, "ack", hostile)
        assert refused.returncode == 1 and "--source" in refused.stderr and "\x1b" not in refused.stderr
        assert review(env, "ack", hostile, "--source", second.source, "--reviewer", "ana").returncode == 0
        assert [r.status for r in store.find(hostile)] == ["pending", "acked"]
        assert w.terminate() == 0
        record(
            "review_id_collision",
            {
                "bottom_inputs_sharing_one_id": 2,
                "review_records": len(store.find(hostile)),
                "control_characters_in_review_list_output": 0,
            },
        )
    finally:
        w.kill()
        reader.close()


@pytest.mark.timeout(150)
def test_a_redis_that_may_evict_review_records_is_refused_then_watched(
    kafka_bootstrap: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    server = start_redis()
    port = server.port
    client = redis.Redis(port=port)
    client.config_set("maxmemory", "64mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    url = f"redis://127.0.0.1:{port}/0"
    env = worker_env(kafka_bootstrap, url, bundle, topics, redis_timeout_s="0.5")
    figures: dict[str, object] = {}
    w: WorkerProc | None = None
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    try:
        # 1. refused at start-up: one line, exit 2, the password-free URL and the policy named
        refused = run_worker(env)
        last = refused.stderr.strip().splitlines()[-1]
        assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-2000:]
        assert last.startswith(f"zeroproof-worker: redis redis://127.0.0.1:{port}/0: maxmemory-policy allkeys-lru")
        assert "noeviction" in last
        figures["startup_with_allkeys_lru"] = {"exit_code": refused.returncode, "stderr": last}
        # 2. explicitly allowed: serves, and says it may lose records
        allowed = WorkerProc({**env, "ZEROPROOF_REDIS_ALLOW_EVICTION": "true"}, tmp_path / "allowed.log")
        allowed.wait_event("redis_may_evict", 60)
        allowed.wait_event("partitions_assigned", 60)
        assert allowed.terminate() == 0
        # 3. a safe Redis at start, an evicting one after an outage: ⊥ records wait, nothing is committed past them
        client.config_set("maxmemory-policy", "noeviction")
        w = WorkerProc(env, tmp_path / "w.log")
        w.wait_event("partitions_assigned", 60)
        server.stop()
        server = start_redis(port=port)
        client = redis.Redis(port=port)
        client.config_set("maxmemory", "64mb")
        client.config_set("maxmemory-policy", "allkeys-lru")
        produce(kafka_bootstrap, topics.inputs, [(b"arm-1", msg("pole", [POLE]))])
        reader.read_until(lambda rs: len(rs) >= 1, 60)  # the output is sent; its offset waits for Redis
        failed = w.wait_event("review_write_failed", 30)
        assert "allkeys-lru" in failed["error"]
        time.sleep(1.0)  # a few retries' worth: still nothing recorded, nothing committed
        store = RedisReviewStore(client, topics.redis_prefix)
        assert store.pending_ids() == [] and sum(committed_offsets(kafka_bootstrap, topics).values()) == 0
        client.config_set("maxmemory-policy", "noeviction")
        w.wait_event("review_write_recovered", 30)
        assert wait_until(lambda: sum(committed_offsets(kafka_bootstrap, topics).values()) == 1, 20)
        assert store.pending_ids() == ["pole"]
        figures["evicting_after_reconnect"] = {
            "review_write_failed": failed["error"],
            "committed_while_evicting": 0,
            "recorded_after_fix": 1,
        }
        w.proc.send_signal(signal.SIGTERM)
        assert w.proc.wait(30) == 0
        record("redis_eviction_policy", figures)
    finally:
        if w is not None:
            w.kill()
        reader.close()
        server.stop()
