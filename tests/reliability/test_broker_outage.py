"""The broker is unreachable when the worker starts and again mid-run: bounded retries with backoff, one clear
log line per attempt, no crash loop, and nothing lost once it is back.

tansu's memory engine loses every topic on restart, so the outage is a cut network path instead: the broker
listens on a private port, advertises a proxy's address, and every client (worker, producer, reader) goes
through the proxy, which the test cuts (refuses and resets every connection) and restores.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.load import Stream, review_records
from harness.services import free_port, tansu_binary, wait_for_port
from harness.worker import TopicReader, Topics, WorkerProc, bottom_ids, feature_for, msg, produce, worker_env
from tests.reliability.figures import record
from tests.reliability.proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STARTUP_OUTAGE_S = 12.0  # includes the worker's own start (~3 s of imports and model load)


@pytest.fixture
def proxied_broker() -> Iterator[tuple[TcpProxy, subprocess.Popen[bytes]]]:
    """A tansu broker reachable only through a cuttable proxy (the proxy's address is the advertised one)."""
    real = free_port()
    proxy = TcpProxy(target_port=real)  # not started: the path is cut until the test restores it
    workdir = Path(tempfile.mkdtemp(prefix="tansu-proxied-"))
    cmd = [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{real}"]
    cmd += ["--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}", "--storage-engine", "memory://tansu/"]
    proc = subprocess.Popen(cmd, stdout=(workdir / "tansu.log").open("wb"), stderr=subprocess.STDOUT, cwd=workdir)
    wait_for_port(real, proc=proc)
    try:
        yield proxy, proc
    finally:
        proxy.close()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.mark.timeout(180)
def test_broker_unreachable_at_start_and_mid_run(
    proxied_broker: tuple[TcpProxy, subprocess.Popen[bytes]],
    redis_url: str,
    bundle: Path,
    topics: Topics,
    tmp_path: Path,
) -> None:
    proxy, _broker = proxied_broker
    bootstrap = f"127.0.0.1:{proxy.port}"
    max_backoff = 2.0
    env = worker_env(
        bootstrap,
        redis_url,
        bundle,
        topics,
        startup_max_backoff_s=str(max_backoff),
        max_batch_size="200",
        producer_stall_s="2",
    )
    # the input topic exists before the worker subscribes (created through the proxy, which is then cut)
    proxy.restore()
    produce(bootstrap, topics.inputs, [(b"robot-0", msg("warmup", [0.1]))])
    proxy.cut()
    # 1. unreachable at start: the proxy port refuses connections
    w = WorkerProc(env, tmp_path / "w.log", create_input_topic=False)  # created above, through the proxy
    n, rate = 6_000, 400.0
    reader: TopicReader | None = None
    stream = Stream(
        bootstrap,
        topics.inputs,
        [(f"robot-{i % 8}".encode(), msg(i, feature_for(i))) for i in range(n)],
        rate,
        producer_extra={"retries": 1_000_000, "delivery_timeout_ms": 120_000, "request_timeout_ms": 5_000},
    )
    try:
        time.sleep(STARTUP_OUTAGE_S)
        assert w.proc.poll() is None, w.log_tail()
        attempts = [e for e in w.events() if e.get("event") == "kafka_unreachable"]
        delays = [a["retry_in_s"] for a in attempts]
        proxy.restore()
        t_back = time.monotonic()
        w.wait_event("partitions_assigned", 60)
        start_after_s = time.monotonic() - t_back
        # 2. mid-run: stream, cut the path for 8 s while the worker is busy, restore
        stream.start()
        reader = TopicReader(bootstrap, topics.outputs)
        reader.read_until(lambda rs: len(rs) >= 1000, 40)
        proxy.cut()
        cut_at = time.monotonic()
        outputs_at_cut = len(reader.records)
        time.sleep(8.0)
        alive_during_cut = w.proc.poll() is None
        proxy.restore()
        restored_at = time.monotonic()
        stream.join(150)
        assert not stream.failed, f"{len(stream.failed)} inputs never reached the broker"
        want = {str(i) for i in range(n)} | {"warmup"}
        reader.read_until(lambda rs: {json.loads(r.value)["id"] for r in rs} >= want, 90)
        outs = reader.json()
        got = {o["id"] for o in outs}
        missing = want - got
        assert not missing, (len(missing), w.log_tail())
        assert alive_during_cut and w.proc.poll() is None, w.log_tail()
        assert set(review_records(redis_url, topics)) == bottom_ids(range(n))
        events = w.events()
        names = [e.get("event") for e in events]
        runtime_errors = {
            k: names.count(k)
            for k in ("poll_failed", "commit_failed", "send_failed_resending", "producer_stalled", "producer_recreated")
            if k in names
        }
        record(
            "broker_outage",
            {
                "how": "TCP proxy in front of tansu (advertised listener = proxy); cut = refuse + reset connections",
                "startup_outage_s": STARTUP_OUTAGE_S,
                "startup_attempts_logged": len(attempts),
                "startup_retry_delays_s": delays,
                "max_backoff_s": max_backoff,
                "joined_after_restore_s": round(start_after_s, 2),
                "midrun_outage_s": round(restored_at - cut_at, 2),
                "outputs_before_cut": outputs_at_cut,
                "messages": n,
                "inputs_without_output": len(missing),
                "duplicates": len(outs) - len(got),
                "worker_restarts": 0,
                "worker_alive_throughout": True,
                "runtime_error_log_lines": runtime_errors,
                "log_lines_total": len(events),
            },
        )
        assert w.terminate(30) == 0
        # Checked last, so that the figures above are recorded either way. The worker's own retry loop (not
        # only the Kafka client's internal one) must say what it is doing, and back off no longer than
        # ZEROPROOF_STARTUP_MAX_BACKOFF_S: at least 2 attempts logged, and joined soon after the return (tansu
        # holds a JoinGroup for session_timeout/2 = 3 s of that).
        assert len(attempts) >= 2, f"{len(attempts)} retry lines of its own during a {STARTUP_OUTAGE_S} s outage"
        assert all("retrying" in a["message"] for a in attempts)
        assert delays == sorted(delays) and max(delays) <= max_backoff, delays  # capped exponential backoff
        assert start_after_s <= max_backoff + 8, f"joined {start_after_s:.1f}s after the broker came back"
    finally:
        stream.stop()
        w.kill()
        if reader is not None:
            reader.close()
