"""Redis stops for 10 s mid-stream, then comes back: the worker pauses instead of committing past ⊥ inputs it
could not record, recovers by itself, and loses nothing.

Redis here runs with an append-only file fsynced on every write (``--appendonly yes --appendfsync always``) in
a directory of its own, so a SIGKILLed Redis restarts on the same port with everything it acknowledged (the
shared test Redis runs with ``--save ""`` and would come back empty). What Redis had durably at the moment of
the crash is read from a copy of that directory by a second, throw-away redis-server, and compared with the
offsets the worker had committed.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from harness.load import Sampler, Stream, review_records, scrape, wait_until
from harness.services import free_port, wait_for_port
from harness.worker import TopicReader, Topics, WorkerProc, bottom_ids, committed_offsets, feature_for, msg, worker_env
from service.review import RedisReviewStore
from tests.reliability.figures import record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = 10.0


def durable_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not on PATH")
    workdir.mkdir(parents=True, exist_ok=True)
    cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "yes"]
    cmd += ["--appendfsync", "always", "--dir", str(workdir)]
    proc = subprocess.Popen(cmd, stdout=(workdir / "redis.log").open("ab"), stderr=subprocess.STDOUT)
    wait_for_port(port, proc=proc)
    return proc


def ids_on_disk(workdir: Path, topics: Topics, scratch: Path) -> set[str]:
    """The review ids a crashed Redis had made durable: load a copy of its AOF in a second server."""
    copy = scratch / "aof-copy"
    shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("*.log"))
    port = free_port()
    proc = durable_redis(port, copy)
    try:
        r = redis.Redis(port=port)
        wait_until(lambda: r.ping(), 5)
        return set(RedisReviewStore(r, topics.redis_prefix).pending_ids())
    finally:
        proc.kill()
        proc.wait(5)


@pytest.mark.timeout(150)
def test_redis_down_10s_pauses_then_recovers_losing_nothing(
    kafka_bootstrap: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    n, rate = 8_000, 500.0  # a 16 s stream; Redis is down from ~3 s to ~13 s
    port = free_port()
    rdir = tmp_path / "redis"
    server = durable_redis(port, rdir)
    url = f"redis://127.0.0.1:{port}/0"
    env = worker_env(
        kafka_bootstrap, url, bundle, topics, max_batch_size="200", max_batch_delay_ms="20", redis_timeout_s="0.5"
    )
    w = WorkerProc(env, tmp_path / "w.log")
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    stream = Stream(
        kafka_bootstrap, topics.inputs, [(f"robot-{i % 8}".encode(), msg(i, feature_for(i))) for i in range(n)], rate
    )
    try:
        w.wait_event("partitions_assigned", 60)
        stream.start()
        with Sampler(lambda: scrape(w.metrics_port).get("zeroproof_worker_paused"), 0.2) as paused:
            reader.read_until(lambda rs: len(rs) >= 1500, 30)
            server.send_signal(signal.SIGKILL)  # a crash, not a clean shutdown
            server.wait(5)
            down_at = time.monotonic()
            outputs_at_crash = len(reader.records)
            committed_during: list[dict[int, int]] = []
            while time.monotonic() - down_at < OUTAGE_S:
                reader.read_until(lambda rs: False, 0.5)
                committed_during.append(committed_offsets(kafka_bootstrap, topics))
            outputs_during = len(reader.records) - outputs_at_crash
            committed_at_end = committed_offsets(kafka_bootstrap, topics)
            durable = ids_on_disk(rdir, topics, tmp_path)
            server = durable_redis(port, rdir)  # same port, same data
            up_at = time.monotonic()
            assert w.proc.poll() is None, w.log_tail()
            recovered = w.wait_event("review_write_recovered", 30)
            recovery_s = time.monotonic() - up_at
            stream.join(60)
            want = {str(i) for i in range(n)}
            reader.read_until(lambda rs: {json.loads(r.value)["id"] for r in rs} >= want, 60)
        outs = reader.json()
        missing = want - {o["id"] for o in outs}
        assert not missing, len(missing)
        # never committed past an unrecorded ⊥ input: every ⊥ input below the committed offsets was on disk
        bottoms = {str(i) for i in bottom_ids(range(n))}
        first = {}
        for o in outs:
            first.setdefault(o["id"], o)
        past = [
            o["id"]
            for o in first.values()
            if o["id"] in bottoms and o["offset"] < committed_at_end.get(o["partition"], 0) and o["id"] not in durable
        ]
        assert not past, f"committed past {len(past)} unrecorded ⊥ inputs"
        reviews = review_records(url, topics)
        assert set(reviews) == bottoms
        pauses = [v for _, v in paused.samples]
        assert 1.0 in pauses, "the worker never reported paused partitions"
        errors = [e for e in w.events() if e.get("event") == "review_write_failed"]
        assert errors and w.proc.poll() is None
        progress = [sum(c.values()) for c in committed_during]
        figures = {
            "messages": n,
            "bottom_inputs": len(bottoms),
            "outage_s": OUTAGE_S,
            "redis_persistence": "appendonly yes, appendfsync always (SIGKILL, restart on the same port)",
            "outputs_during_outage": outputs_during,
            "committed_offsets_advance_during_outage": progress[-1] - progress[0] if progress else 0,
            "bottom_inputs_committed_but_unrecorded": len(past),
            "paused_samples": pauses.count(1.0),
            "samples": len(pauses),
            "review_write_failed_logs": len(errors),
            "recovered_after_restart_s": round(recovery_s, 2),
            "recovery_attempts": recovered.get("attempts"),
            "inputs_without_output": len(missing),
            "review_records": len(reviews),
            "worker_exit": "none (kept running)",
        }
        record("redis_outage", figures)
        assert w.terminate() == 0
    finally:
        stream.stop()
        w.kill()
        reader.close()
        if server.poll() is None:
            server.kill()
            server.wait(5)
