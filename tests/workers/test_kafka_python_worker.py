"""The worker process on the kafka-python transport (``ZEROPROOF_KAFKA_CLIENT=kafka-python``, not the default)
end to end: SIGKILL mid-stream then a restart loses nothing (duplicates bounded), and a second member joining
mid-stream takes partitions over through revoke → drain → commit. The default transport (librdkafka) runs the
same scenarios in test_integration.py, so every run of the suite covers both at process level; the whole suite
switches transport with ``ZEROPROOF_TEST_KAFKA_CLIENT`` (harness/worker.py, ``make test-kafka-python``).
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.worker import TopicReader, Topics, WorkerProc, bottom_ids, feature_for, msg, produce, worker_env
from tests.workers.test_integration import review_ids

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(180)
def test_kafka_python_worker_sigkill_mid_stream_then_restart_loses_nothing(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    n = 3000
    produce(kafka_bootstrap, topics.inputs, ((f"robot-{i % 8}".encode(), msg(i, feature_for(i))) for i in range(n)))
    env = worker_env(
        kafka_bootstrap,
        redis_url,
        bundle,
        topics,
        kafka_client="kafka-python",
        max_batch_size="50",
        max_batch_delay_ms="5",
    )
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    w1 = WorkerProc(env, tmp_path / "w1.log")
    try:
        reader.read_until(lambda rs: len(rs) >= 600, 60)
        w1.proc.send_signal(signal.SIGKILL)
        w1.proc.wait(10)
        seen_before = len(reader.records)
        assert seen_before < n, "the worker finished before it could be killed; the test proves nothing"
        w2 = WorkerProc(env, tmp_path / "w2.log")
        try:
            reader.read_until(lambda rs: len({json.loads(r.value)["id"] for r in rs}) >= n, 90)
            ids = Counter(o["id"] for o in reader.json())
            assert set(ids) == {str(i) for i in range(n)}, w2.log_tail()
            duplicates = sum(c - 1 for c in ids.values())
            assert duplicates <= 50 * 4  # bounded by one uncommitted batch (per partition)
            pending = review_ids(redis_url, topics)
            assert len(pending) == len(set(pending)) == len(bottom_ids(range(n)))
            assert w2.terminate() == 0
            assert not [e for e in w2.events() if e.get("level") == "error"], w2.log_tail()
        finally:
            w2.kill()
    finally:
        w1.kill()
        reader.close()


@pytest.mark.timeout(180)
def test_kafka_python_worker_hands_partitions_over_on_rebalance_losing_nothing(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    """A continuous stream; B joins mid-stream (A drains and commits on revoke, from kafka-python's IO thread, and B
    continues from there), then A is stopped with SIGTERM mid-stream: nothing is lost."""
    n = 2400
    stop = threading.Event()

    def stream() -> None:
        from kafka import KafkaProducer

        p = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=2)
        for i in range(n):
            if stop.is_set():
                break
            p.send(topics.inputs, key=f"robot-{i % 16}".encode(), value=msg(i, feature_for(i)))
            if i % 20 == 19:
                time.sleep(0.1)  # ~200 msg/s for ~12 s
        p.flush(30)
        p.close(5)

    produce(kafka_bootstrap, topics.inputs, [(b"robot-0", msg("warmup", [0.1]))])
    env = worker_env(
        kafka_bootstrap,
        redis_url,
        bundle,
        topics,
        kafka_client="kafka-python",
        max_batch_size="32",
        max_batch_delay_ms="10",
    )
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    a = WorkerProc({**env, "ZEROPROOF_WORKER_ID": "worker-a"}, tmp_path / "a.log")
    b: WorkerProc | None = None
    t = threading.Thread(target=stream, daemon=True)
    try:
        a.wait_event("partitions_assigned", 40)
        t.start()
        reader.read_until(lambda rs: len(rs) >= 300, 60)
        b = WorkerProc({**env, "ZEROPROOF_WORKER_ID": "worker-b"}, tmp_path / "b.log")
        b.wait_event("partitions_assigned", 40)
        revoked = a.wait_event("partitions_revoked", 20)
        assert revoked["drained"] is True
        reader.read_until(lambda rs: sum(json.loads(r.value)["worker_id"] == "worker-b" for r in rs) >= 100, 60)
        t0 = time.monotonic()
        assert a.terminate(timeout=40) == 0
        assert time.monotonic() - t0 < 20
        t.join(60)
        want = {str(i) for i in range(n)} | {"warmup"}
        reader.read_until(lambda rs: {json.loads(r.value)["id"] for r in rs} >= want, 90)
        outs = reader.json()
        assert {o["id"] for o in outs} >= want, b.log_tail()
        assert {o["worker_id"] for o in outs} == {"worker-a", "worker-b"}
        assert set(review_ids(redis_url, topics)) == bottom_ids(range(n))
        assert b.terminate() == 0
        for w in (a, b):
            assert not [e for e in w.events() if e.get("event") == "revoke_commit_failed"], w.log_tail()
    finally:
        stop.set()
        a.kill()
        if b is not None:
            b.kill()
        reader.close()
