"""A slow downstream: Redis answers through a proxy that adds latency to every request, while a 40,000-message
backlog waits on the broker. Phase A: latency below the Redis timeout (writes succeed, slowly): the loop is
throttled by the writes and reads no more than one batch ahead. Phase B: latency above the timeout (every
write times out and is retried): the worker pauses its partitions (``zeroproof_worker_paused`` = 1,
``backpressure`` debug logs). Memory stays bounded throughout; once the latency goes, it catches up."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from redis import Redis

from harness.load import Sampler, produce_located, review_records, rss_mib, scrape
from harness.worker import TopicReader, Topics, WorkerProc, msg, worker_env
from tests.reliability.figures import record
from tests.reliability.proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REDIS_TIMEOUT_S = 0.5
LATENCY_A_S = 0.3  # below the timeout
LATENCY_B_S = 0.8  # above it
PHASE_S = 5.0
N = 40_000


def acked_outputs(w: WorkerProc) -> float:
    """Outputs the broker acknowledged, from the worker's own counter (the reader lags behind)."""
    return scrape(w.metrics_port).get('zeroproof_worker_messages_out_total{kind="output"}', 0.0)


@pytest.mark.timeout(150)
def test_slow_redis_pauses_partitions_with_bounded_memory(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    target = Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
    proxy = TcpProxy(target).start()
    url = f"redis://127.0.0.1:{proxy.port}/0"
    # every 10th input is ⊥ (the pole): every batch writes to Redis, every write waits LATENCY_S
    items = [(f"robot-{i % 8}".encode(), msg(i, [0.5] if i % 10 == 0 else [1.0 + (i % 7) / 10])) for i in range(N)]
    produce_located(kafka_bootstrap, topics.inputs, items)  # the whole backlog is on the broker up front
    env = worker_env(
        kafka_bootstrap,
        url,
        bundle,
        topics,
        max_batch_size="256",
        log_level="debug",
        bottom_log_rate="1",
        redis_timeout_s=str(REDIS_TIMEOUT_S),
    )
    w = WorkerProc(env, tmp_path / "w.log")
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    try:
        w.wait_event("partitions_assigned", 60)
        baseline = rss_mib(w.proc.pid)
        reader.read_until(lambda rs: len(rs) >= 1000, 30)  # the reader has joined; the worker is running
        assert proxy.latency_s == 0.0
        phases: dict[str, dict[str, float]] = {}
        with (
            Sampler(lambda: rss_mib(w.proc.pid), 0.2) as rss,
            Sampler(lambda: scrape(w.metrics_port).get("zeroproof_worker_paused"), 0.1) as paused,
        ):
            for name, latency in (("a_below_timeout", LATENCY_A_S), ("b_above_timeout", LATENCY_B_S)):
                proxy.latency_s = latency
                before, t0, k0 = acked_outputs(w), time.monotonic(), len(paused.samples)
                reader.read_until(lambda rs: False, PHASE_S)
                flags = [v for _, v in paused.samples[k0:]]
                done = acked_outputs(w) - before
                phases[name] = {
                    "latency_s": latency,
                    "outputs_acked": done,
                    "outputs_per_s": round(done / (time.monotonic() - t0), 1),
                    "paused_share_of_samples": round(flags.count(1.0) / max(1, len(flags)), 3),
                }
            proxy.latency_s = 0.0
            during_slow = len(reader.records)
            reader.read_until(lambda rs: len({json.loads(r.value)["id"] for r in rs}) >= N, 90)
        outs = reader.json()
        missing = N - len({o["id"] for o in outs})
        assert missing == 0
        assert w.proc.poll() is None, w.log_tail()
        assert phases["b_above_timeout"]["paused_share_of_samples"] > 0.5, phases
        events = w.events()
        pauses = [e for e in events if e.get("event") == "backpressure" and e.get("paused")]
        assert pauses, "no backpressure log"
        rss_values = [v for _, v in rss.samples]
        growth = max(rss_values) - baseline
        assert growth < 150, f"RSS grew {growth:.0f} MiB while {N - during_slow} inputs waited"
        assert during_slow < N  # the slow phase really held the worker back
        reviews = review_records(redis_url, topics)
        assert len(reviews) == N // 10
        record(
            "slow_redis",
            {
                "redis_timeout_s": REDIS_TIMEOUT_S,
                "phase_s": PHASE_S,
                "phases": phases,
                "backlog_messages": N,
                "outputs_before_latency_removed": during_slow,
                "backpressure_pause_logs": len(pauses),
                "rss_baseline_mib": baseline,
                "rss_max_mib": max(rss_values),
                "rss_growth_mib": round(growth, 1),
                "rss_samples": len(rss_values),
                "inputs_without_output": missing,
                "review_records": len(reviews),
            },
        )
        assert w.terminate() == 0
    finally:
        w.kill()
        reader.close()
        proxy.close()
