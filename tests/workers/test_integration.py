"""The worker as a process (``python -m workers``) against a real broker and a real Redis, started by the tests.

Each test uses its own topics, group and Redis key prefix, so tests don't see each other's data.
"""

from __future__ import annotations

import json
import signal
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
import torch

from harness.services import start_redis
from harness.worker import (
    POLE,
    TopicReader,
    Topics,
    WorkerProc,
    bottom_ids,
    committed_offsets,
    feature_for,
    known_pole_bundle,
    msg,
    produce,
    worker_env,
)
from service.review import RedisReviewStore
from zeroproof.export import load_servable
from zeroproof.inference import InferenceConfig, strict_inference

pytestmark = pytest.mark.integration


def offline(model_path: Path, xs: list[list[float | None]]) -> tuple[Any, Any, Any]:
    servable = load_servable(model_path)
    x = torch.tensor([[float("nan") if v is None else v for v in row] for row in xs], dtype=torch.float32)
    bad = ~torch.isfinite(x).all(dim=1)
    with torch.inference_mode():
        N, D = servable.model(torch.where(torch.isfinite(x), x, torch.zeros_like(x)))
    dec, bot, gap = strict_inference(N, D, InferenceConfig(tau_infer=1e-6, tau_train=1e-4))
    bot[bad] = True
    gap[bad] = False
    return dec, bot, gap


def review_ids(redis_url: str, topics: Topics) -> list[str]:
    return RedisReviewStore(redis.Redis.from_url(redis_url), topics.redis_prefix).pending_ids()


@pytest.mark.timeout(120)
def test_end_to_end_values_masks_dlq_review_stats_metrics(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    n = 300
    xs = [feature_for(i) for i in range(n)]
    poison = [
        b"{not json",
        b'{"id": "p1", "features": [NaN]}',
        b'{"id": "p2", "features": [1, 2]}',
        b'{"id": "p3"}',
        b'{"id": "p4", "features": ["x"]}',
    ]
    items = [(f"robot-{i % 4}".encode(), msg(i, xs[i], labels={"site": f"s{i % 2}"})) for i in range(n)]
    items[100:100] = [(b"robot-1", p) for p in poison]
    produce(kafka_bootstrap, topics.inputs, items)
    w = WorkerProc(
        worker_env(kafka_bootstrap, redis_url, bundle, topics, stats_labels="site", shadow_thresholds="1e-3:1e-2"),
        tmp_path / "w.log",
    )
    out_reader, dlq_reader = TopicReader(kafka_bootstrap, topics.outputs), TopicReader(kafka_bootstrap, topics.dlq)
    stats_reader = TopicReader(kafka_bootstrap, topics.stats)
    try:
        out_reader.read_until(lambda rs: len(rs) >= n, 60)
        dlq_reader.read_until(lambda rs: len(rs) >= len(poison), 20)
        outputs = {o["id"]: o for o in out_reader.json()}
        assert len(outputs) == n, w.log_tail()
        dec, bot, gap = offline(bundle, xs)
        for i in range(n):
            o = outputs[str(i)]
            assert o["bottom"] == bot[i].tolist() and o["gap"] == gap[i].tolist(), (i, o)
            assert o["value"] == [
                None if b else float(v) for v, b in zip(dec[i].tolist(), bot[i].tolist(), strict=True)
            ]
            assert o["status"] == ("bottom" if bot[i].any() else "gap" if gap[i].any() else "ok")
            assert o["model_version"] == "known-pole-1" and o["tau_infer"] == 1e-6 and o["tau_train"] == 1e-4
            assert o["topic"] == topics.inputs and o["labels"] == {"site": f"s{i % 2}"}
        # same key as the input
        keys = {json.loads(r.value)["id"]: r.key for r in out_reader.records}
        assert keys["5"] == b"robot-1"
        assert {o["action"] for o in outputs.values() if o["status"] != "ok"} == {"fallback"}
        dlq = dlq_reader.json()
        assert sorted(d["reason"] for d in dlq) == sorted(
            ["invalid_json", "non_finite_literal", "wrong_feature_count", "missing_field", "wrong_type"]
        )
        assert all(d["topic"] == topics.inputs and d["offset"] >= 0 for d in dlq)
        assert set(review_ids(redis_url, topics)) == bottom_ids(range(n))
        stats_reader.read_until(lambda rs: sum(json.loads(r.value)["counts"]["total"] for r in rs) >= n, 20)
        stats = stats_reader.json()
        assert sum(s["counts"]["total"] for s in stats) == n
        assert sum(s["counts"]["bottom"] for s in stats) == len(bottom_ids(range(n)))
        assert sum(s["dlq"] for s in stats) == len(poison)
        assert sum(sum(c["total"] for c in s["by_label"]["site"].values()) for s in stats) == n
        assert all(s["shadow"][0]["tau_infer"] == 1e-3 for s in stats)
        # the shadow pair (1e-3, 1e-2) also calls the gap inputs ⊥ (|D| = 2e-5)
        assert sum(s["shadow"][0]["bottom"] for s in stats) == len(bottom_ids(range(n))) + n // 25
        body = urllib.request.urlopen(f"http://127.0.0.1:{w.metrics_port}/metrics", timeout=5).read().decode()
        assert f"zeroproof_worker_messages_in_total {float(n + len(poison))}" in body
        assert 'zeroproof_worker_dlq_total{reason="invalid_json"} 1.0' in body
        assert "zeroproof_worker_e2e_latency_seconds_count" in body
        assert "zeroproof_worker_last_progress_timestamp_seconds" in body
        assert w.terminate() == 0
    finally:
        w.kill()
        for r in (out_reader, dlq_reader, stats_reader):
            r.close()


#: The process-level delivery scenarios run on both transports in every run of the suite: librdkafka (the default)
#: and kafka-python (``ZEROPROOF_TEST_KAFKA_CLIENT`` switches every other worker the suite starts).
KAFKA_CLIENTS = ["confluent", "kafka-python"]


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kafka_client", KAFKA_CLIENTS)
def test_sigkill_mid_stream_then_restart_loses_nothing(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path, kafka_client: str
) -> None:
    n = 3000
    produce(kafka_bootstrap, topics.inputs, ((f"robot-{i % 8}".encode(), msg(i, feature_for(i))) for i in range(n)))
    env = worker_env(
        kafka_bootstrap,
        redis_url,
        bundle,
        topics,
        kafka_client=kafka_client,
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
            assert duplicates <= 50  # max_in_flight_records = max_batch_size: sent but uncommitted when killed
            pending = review_ids(redis_url, topics)
            assert len(pending) == len(set(pending)) == len(bottom_ids(range(n)))
            assert set(pending) == bottom_ids(range(n))
            assert w2.terminate() == 0
            assert not [e for e in w2.events() if e.get("level") == "error"], w2.log_tail()
        finally:
            w2.kill()
    finally:
        w1.kill()
        reader.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("kafka_client", KAFKA_CLIENTS)
def test_two_workers_rebalance_and_sigterm_drain(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path, kafka_client: str
) -> None:
    """A continuous stream; B joins mid-stream (A drains and commits on revoke: inside librdkafka's poll, or from
    kafka-python's IO thread), then A is stopped with SIGTERM mid-stream: nothing is lost."""
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

    produce(kafka_bootstrap, topics.inputs, [(b"robot-0", msg("warmup", [0.1]))])  # create the topic
    env = worker_env(
        kafka_bootstrap,
        redis_url,
        bundle,
        topics,
        kafka_client=kafka_client,
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
        stopping = [e for e in a.events() if e.get("event") == "worker_stopping"]
        assert stopping and stopping[0]["drained"] is True
        t.join(60)
        want = {str(i) for i in range(n)} | {"warmup"}
        reader.read_until(lambda rs: {json.loads(r.value)["id"] for r in rs} >= want, 90)
        outs = reader.json()
        assert {o["id"] for o in outs} >= want, b.log_tail()
        assert {o["worker_id"] for o in outs} == {"worker-a", "worker-b"}
        assert set(review_ids(redis_url, topics)) == bottom_ids(range(n))
        # what A committed is durable: every input below a committed offset has an output
        committed = committed_offsets(kafka_bootstrap, topics)
        by_part: dict[int, set[int]] = {}
        for o in outs:
            by_part.setdefault(o["partition"], set()).add(o["offset"])
        for p, off in committed.items():
            assert set(range(off)) <= by_part.get(p, set()), (p, off)
        assert b.terminate() == 0
        for w in (a, b):
            assert not [e for e in w.events() if e.get("event") == "revoke_commit_failed"], w.log_tail()
    finally:
        stop.set()
        a.kill()
        if b is not None:
            b.kill()
        reader.close()


@pytest.mark.timeout(90)
def test_startup_retries_until_redis_appears(
    kafka_bootstrap: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    from harness.services import free_port

    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    produce(kafka_bootstrap, topics.inputs, [(b"k", msg("x1", [0.1]))])
    w = WorkerProc(worker_env(kafka_bootstrap, url, bundle, topics, startup_max_backoff_s="1"), tmp_path / "w.log")
    server = None
    try:
        ev = w.wait_event("redis_unreachable", 30)
        assert "retrying" in ev["message"]
        time.sleep(1.5)
        assert w.proc.poll() is None  # no crash loop: still alive, still retrying
        server = start_redis(port=port)
        w.wait_event("worker_started", 30)
        reader = TopicReader(kafka_bootstrap, topics.outputs)
        reader.read_until(lambda rs: len(rs) >= 1, 40)
        assert reader.json()[0]["id"] == "x1"
        reader.close()
        assert w.terminate() == 0
    finally:
        w.kill()
        if server is not None:
            server.stop()


@pytest.mark.timeout(60)
def test_startup_without_broker_retries_and_stops_cleanly(
    redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    from harness.services import free_port

    w = WorkerProc(
        worker_env(f"127.0.0.1:{free_port()}", redis_url, bundle, topics, startup_max_backoff_s="1"),
        tmp_path / "w.log",
        create_input_topic=False,  # there is no broker
    )
    try:
        w.wait_event("kafka_unreachable", 40)
        assert w.proc.poll() is None
        assert w.terminate(timeout=15) == 0
        assert any(e.get("event") == "stopped_during_startup" for e in w.events())
    finally:
        w.kill()


@pytest.mark.timeout(120)
def test_hot_reload_thresholds_on_sighup_and_bundle_on_change(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(json.dumps({"tau_infer": 1e-6, "tau_train": 1e-4}))
    env = worker_env(kafka_bootstrap, redis_url, bundle, topics, thresholds_file=str(thresholds))
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    w = WorkerProc(env, tmp_path / "w.log")
    try:
        produce(kafka_bootstrap, topics.inputs, [(b"k", msg("a", [POLE + 1e-5]))])
        reader.read_until(lambda rs: len(rs) >= 1, 60)
        assert reader.json()[0]["status"] == "gap"
        thresholds.write_text(json.dumps({"tau_infer": 1e-3, "tau_train": 1e-2}))
        w.proc.send_signal(signal.SIGHUP)
        w.wait_event("model_reloaded", 20)
        produce(kafka_bootstrap, topics.inputs, [(b"k", msg("b", [POLE + 1e-5]))])
        reader.read_until(lambda rs: len(rs) >= 2, 30)
        b = reader.json()[1]
        assert (b["status"], b["tau_infer"], b["tau_train"]) == ("bottom", 1e-3, 1e-2)
        known_pole_bundle(bundle, pole=2.0, version="known-pole-2")  # atomic replace, picked up by the watcher
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if any(e.get("model_version") == "known-pole-2" for e in w.events() if e.get("event") == "model_reloaded"):
                break
            time.sleep(0.2)
        produce(kafka_bootstrap, topics.inputs, [(b"k", msg("c", [POLE]))])
        reader.read_until(lambda rs: len(rs) >= 3, 30)
        c = reader.json()[2]
        assert c["model_version"] == "known-pole-2" and c["status"] == "ok"
        assert w.terminate() == 0
    finally:
        w.kill()
        reader.close()


@pytest.mark.timeout(90)
def test_redis_auth_and_secrets_never_logged(
    kafka_bootstrap: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    secret = "s3cr3t-Redis-pw"
    server = start_redis(password=secret)
    url = server.extra["url"]
    w = WorkerProc(
        worker_env(kafka_bootstrap, url, bundle, topics, kafka_sasl_password="another-s3cret"), tmp_path / "w.log"
    )
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    try:
        produce(kafka_bootstrap, topics.inputs, [(b"k", msg("pole", [POLE]))])
        reader.read_until(lambda rs: len(rs) >= 1, 60)
        assert reader.json()[0]["status"] == "bottom"
        assert review_ids(url, topics) == ["pole"]  # written through AUTH
        assert w.terminate() == 0
        log = w.log_path.read_text()
        assert secret not in log and "another-s3cret" not in log
        assert "redis://:***@127.0.0.1" in log  # the URL is logged, redacted
    finally:
        w.kill()
        reader.close()
        server.stop()
