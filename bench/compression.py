"""What compressing the worker's output costs (``ZEROPROOF_PRODUCER_COMPRESSION``): CPU per record and bytes
on the broker, for each codec kafka-python writes, with the worker's producer settings.

The records are real worker output: the known-pole model's pipeline over ``feature_for`` inputs (outputs,
fallback requests, one stats record per batch), sent the way the worker sends them: a batch's records appended
at once (``linger_ms=0``, ``batch_size`` 256 KiB, ``acks=all``), the next batch once the previous one is
acknowledged. Two batch sizes: 256 inputs (a loaded worker) and 8 (a lightly loaded one, whose record batches
are small). Per codec and batch size: the producing process's CPU (all threads: kafka-python compresses on its
IO thread) per record, the broker's CPU per record, the record batch bytes the broker stores per record, and the
CPU a kafka-python consumer spends reading them back (what every reader of the output topic pays). Medians of
``--repeats`` runs, each on a fresh topic of one broker.

    python -m bench.compression [--records 20000] [--repeats 3] [--out bench/results/compression.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.record.memory_records import MemoryRecords

from bench.worker import create_topics
from harness.services import start_tansu
from harness.worker import feature_for, known_pole_bundle, msg
from workers.fallback import build_chain
from workers.model import load_runtime
from workers.pipeline import PipelineConfig, Routing, process_batch
from workers.records import stats_record
from workers.settings import WorkerSettings
from workers.transport.base import Record

ROOT = Path(__file__).resolve().parents[1]

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
PARTITIONS = 4

Send = tuple[bytes | None, bytes]


def worker_output(n_inputs: int, batch: int) -> list[list[Send]]:
    """What a worker sends for ``n_inputs`` inputs in batches of ``batch``: (key, value) per record."""
    with tempfile.TemporaryDirectory() as tmp:
        s = WorkerSettings(model=known_pole_bundle(Path(tmp) / "kp.zpb"), worker_id="bench-worker-1")
        runtime = load_runtime(s)
    routing = Routing(s.policy_ok, s.policy_gap, s.policy_bottom, build_chain(s))
    cfg = PipelineConfig(s.output_topic, s.dlq_topic, s.fallback_topic, s.worker_id)
    out: list[list[Send]] = []
    now_ms = int(time.time() * 1000)
    for seq, start in enumerate(range(0, n_inputs, batch), 1):
        recs = [
            Record(s.input_topic, i % PARTITIONS, i // PARTITIONS, f"robot-{i % 16}".encode(), msg(i, feature_for(i)))
            for i in range(start, min(n_inputs, start + batch))
        ]
        outcome = process_batch(recs, runtime, routing, cfg)
        sends: list[Send] = [(o.key, o.value) for o in outcome.delivery.sends]
        stats = stats_record("stats", outcome.stats, s.worker_id, now_ms / 1000, time.time(), seq)
        sends.append((s.worker_id.encode(), stats.value))
        out.append(sends)
    return out


def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return float(t.user + t.system)


def produce(
    bootstrap: str, topic: str, codec: str, batches: list[list[Send]], broker: psutil.Process
) -> dict[str, Any]:
    p = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=0,
        batch_size=262_144,
        compression_type=None if codec == "none" else codec,
    )
    me = psutil.Process()
    p.send(topic, b"warm-up").get(30)
    n = sum(len(b) for b in batches)
    c0, b0, t0 = cpu_s(me), cpu_s(broker), time.monotonic()
    for sends in batches:
        futures = [p.send(topic, key=k, value=v) for k, v in sends]
        for f in futures:
            f.get(30)
    wall = time.monotonic() - t0
    cpu, bcpu = cpu_s(me) - c0, cpu_s(broker) - b0
    p.close(5)
    return {
        "records": n,
        "producer_cpu_us_per_record": cpu / n * 1e6,
        "broker_cpu_us_per_record": bcpu / n * 1e6,
        "records_per_s": n / wall,
    }


def stored_bytes(bootstrap: str, topic: str) -> tuple[int, int, int]:
    """(record batch bytes, records, batches) the broker serves for ``topic``, read without decoding."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50)
    seen: dict[tuple[int, int], tuple[int, int]] = {}

    def spy(completed: Any) -> Any:
        data = completed.partition_data.records
        batches = MemoryRecords(data)
        while (b := batches.next_batch()) is not None:
            seen[(completed.topic_partition.partition, b.base_offset)] = (len(b._buffer), b.next_offset - b.base_offset)
        return parse(completed)

    parse = consumer._fetcher._parse_fetched_data
    consumer._fetcher._parse_fetched_data = spy
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    quiet = time.monotonic()
    while time.monotonic() - quiet < 1.0:
        if consumer.poll(timeout_ms=200):
            quiet = time.monotonic()
    consumer.close()
    return sum(b for b, _ in seen.values()), sum(n for _, n in seen.values()), len(seen)


def consume_cpu(bootstrap: str, topic: str, records: int) -> float:
    """CPU µs per record a kafka-python consumer (no group) spends reading the topic from the start."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    me = psutil.Process()
    got, c0 = 0, cpu_s(me)
    deadline = time.monotonic() + 120
    while got < records and time.monotonic() < deadline:
        got += sum(len(v) for v in consumer.poll(timeout_ms=200, max_records=5000).values())
    cpu = cpu_s(me) - c0
    consumer.close()
    return cpu / max(got, 1) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--records", type=int, default=20_000, help="inputs per run (outputs are about as many)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "compression.json"))
    args = ap.parse_args()
    broker = start_tansu()
    results: dict[str, dict[str, Any]] = {}
    try:
        bootstrap = broker.extra["bootstrap"]
        bproc = psutil.Process(broker.proc.pid)
        for batch in (256, 8):
            batches = worker_output(args.records, batch)
            per_codec: dict[str, list[dict[str, Any]]] = {c: [] for c in CODECS}
            for rep in range(args.repeats):
                for codec in CODECS:  # interleaved, so that drift of the shared machine hits every codec alike
                    topic = f"bench-{batch}-{codec}-{rep}"
                    create_topics(bootstrap, [topic], PARTITIONS)
                    run = produce(bootstrap, topic, codec, batches, bproc)
                    size, stored, n_batches = stored_bytes(bootstrap, topic)
                    run["bytes_per_record"] = size / stored
                    run["records_per_record_batch"] = stored / n_batches
                    run["consumer_cpu_us_per_record"] = consume_cpu(bootstrap, topic, stored)
                    per_codec[codec].append(run)
                    print(batch, codec, rep, {k: round(v, 1) for k, v in run.items()}, flush=True)
            base = {k: statistics.median(r[k] for r in per_codec["none"]) for k in per_codec["none"][0]}
            table: dict[str, Any] = {}
            for codec, runs in per_codec.items():
                med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
                vs = {k: med[k] / base[k] if base[k] else float("nan") for k in med}
                table[codec] = {
                    "producer_cpu_us_per_record": round(med["producer_cpu_us_per_record"], 1),
                    "producer_cpu_vs_none": round(
                        med["producer_cpu_us_per_record"] / base["producer_cpu_us_per_record"], 3
                    ),
                    "broker_cpu_us_per_record": round(med["broker_cpu_us_per_record"], 1),
                    "consumer_cpu_us_per_record": round(med["consumer_cpu_us_per_record"], 1),
                    "consumer_cpu_vs_none": round(
                        med["consumer_cpu_us_per_record"] / base["consumer_cpu_us_per_record"], 3
                    ),
                    "bytes_per_record": round(med["bytes_per_record"], 1),
                    "bytes_vs_none": round(vs["bytes_per_record"], 3),
                    "records_per_record_batch": round(med["records_per_record_batch"], 1),
                    "records_per_s": round(med["records_per_s"]),
                }
            results[f"batch_{batch}"] = table
    finally:
        broker.kill()
    result = {
        "benchmark": "bench/compression.py",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "setup": (
            f"{args.records} inputs per run, worker output records (outputs, fallback requests, stats), "
            "kafka-python producer with the worker's settings (linger 0, batch_size 256 KiB, acks=all), one worker "
            "batch acknowledged before the next; tansu 0.6 (memory), 4 partitions; producer, broker and consumer "
            f"on the same {psutil.cpu_count()} shared cores; medians of {args.repeats} interleaved runs"
        ),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
