"""Benchmark of the review console with 100,000 pending ⊥ records in Redis (issue 14's speed goals).

Starts Redis and a Kafka-protocol broker (tansu) here, fills the review log with 100,000 pending records the way
the worker writes them (``RedisReviewStore.record_batch``: the Lua script that also maintains the secondary
indexes), publishes an hour of stats, a few alerts and DLQ records, starts ``python -m console`` as its own
process, and measures with one HTTP client (keep-alive, sequential requests, one run):

- queue pages: no filter, each filter alone, combinations, a time range, a deep page, the reviewed state;
- record pages of random records;
- the overview.

Goals: queue page p95 ≤ 200 ms, record page p95 ≤ 50 ms, overview p95 ≤ 300 ms.

Usage: .venv/bin/python -m bench.console [--records 100000] [--requests 200] [--out bench/results/console.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

from harness.services import free_port, start_redis, start_tansu, wait_for_port
from monitoring.rules import Alert
from monitoring.simulate import Phase, Stream, encode, generate
from service.review import RedisReviewStore, ReviewItem

ROOT = Path(__file__).resolve().parent.parent

GOALS_MS = {"queue": 200.0, "record": 50.0, "overview": 300.0}
ENTITIES = [f"arm-{i:03d}" for i in range(200)]
SITES = ["lab-a", "lab-b", "lab-c", "plant-1", "plant-2"]
MODELS = ["arm-ik-1", "arm-ik-2"]


def record(i: int, t: float, rng: random.Random) -> ReviewItem:
    entity = ENTITIES[i % len(ENTITIES)]
    ident = f"{entity}-{i}"
    features = [round(rng.uniform(-3.14, 3.14), 6) for _ in range(4)]
    doc = {
        "id": ident,
        "entity": entity,
        "input": {"id": ident, "features": features, "entity": entity, "ts": t, "labels": {"site": SITES[i % 5]}},
        "key": entity,
        "N": [rng.uniform(-1, 1), rng.uniform(-1, 1)],
        "D": [rng.uniform(-1e-8, 1e-8), rng.uniform(-1e-8, 1e-8)],
        "value": [None, None],
        "bottom": [True, True],
        "gap": [False, False],
        "nonfinite_input": False,
        "model_version": MODELS[0] if i % 10 else MODELS[1],
        "tau_infer": 1e-6,
        "tau_train": 1e-4,
        "topic": "zeroproof.inputs",
        "partition": i % 4,
        "offset": i,
        "worker_id": "bench",
        "recorded_at": t,
    }
    return ReviewItem(ident, f"zeroproof.inputs:{i % 4}:{i}", orjson.dumps(doc), t)


def fill(store: RedisReviewStore, n: int, now: float) -> dict[str, Any]:
    rng = random.Random(7)
    start = time.perf_counter()
    batch = 2000
    for lo in range(0, n, batch):
        items = [record(i, now - 3600 + 3600 * i / n, rng) for i in range(lo, min(n, lo + batch))]
        store.record_batch(items)
    seconds = time.perf_counter() - start
    info = store.client.info("memory")
    return {
        "records": n,
        "seconds": round(seconds, 2),
        "records_per_s": round(n / seconds),
        "redis_used_memory_mb": round(int(info["used_memory"]) / 2**20, 1),
    }


def publish_kafka(bootstrap: str, now: float) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    streams = [
        Stream(m, [Phase(0, 0.02, 0.01), Phase(2400, 0.15, 0.03)], workers=4, batch=200, period=2.0) for m in MODELS
    ]
    for _, worker, msg in generate(streams, now - 3600, 3590.0):
        producer.send("zeroproof.stats", key=worker.encode(), value=encode(msg))
    for rule, state, started in (("coverage", "firing", now - 1100), ("gap_rate", "resolved", now - 1500)):
        ended = now - 600 if state == "resolved" else None
        alert = Alert(rule, state, MODELS[0], 0.8, 0.9, 0.92, "short", 300, started, started + 60, now - 5, ended)
        producer.send("zeroproof.alerts", value=orjson.dumps(alert.to_dict()))
    for reason in ["invalid_json"] * 30 + ["wrong_feature_count"] * 12:
        producer.send("zeroproof.dlq", value=orjson.dumps({"reason": reason, "detail": "bench"}))
    producer.flush(timeout=60)
    producer.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "n": len(ms),
        "p50_ms": round(statistics.median(ms), 1),
        "p95_ms": round(percentile(ms, 95), 1),
        "max_ms": round(max(ms), 1),
    }


def measure(client: httpx.Client, paths: list[str], check: bytes) -> list[float]:
    out = []
    for path in paths:
        t = time.perf_counter()
        r = client.get(path)
        out.append((time.perf_counter() - t) * 1000)
        if r.status_code != 200 or check not in r.content:
            raise RuntimeError(f"{path}: HTTP {r.status_code}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--requests", type=int, default=200, help="requests per page kind")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "console.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-console-"))
    redis_proc = start_redis(workdir=work)
    broker = start_tansu(workdir=work)
    console: subprocess.Popen[bytes] | None = None
    try:
        now = time.time()
        url = redis_proc.extra["url"]
        store = RedisReviewStore(redis.Redis.from_url(url), "zeroproof:review")
        filled = fill(store, args.records, now)
        print(f"filled {filled}", flush=True)
        bootstrap = broker.extra["bootstrap"]
        publish_kafka(bootstrap, now)
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
        env.update(
            {
                "ZEROPROOF_KAFKA_BOOTSTRAP": bootstrap,
                "ZEROPROOF_REDIS_URL": url,
                "ZEROPROOF_CONSOLE_PORT": str(port),
                "ZEROPROOF_LOG_LEVEL": "warning",
            }
        )
        log = (work / "console.log").open("wb")
        console = subprocess.Popen([sys.executable, "-m", "console"], env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for_port(port, timeout=60, proc=console)
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:  # the console replays the stats topic at start-up
                data = client.get("/overview.json").json()
                if data["caught_up"] and len(data["versions"]) == 2:
                    break
                time.sleep(0.5)
            sources = store.list_sources("pending", 0)
            rng = random.Random(11)
            t_mid = now - 1800
            queue_paths = {
                "no filter": "/queue",
                "entity": "/queue?entity=arm-042",
                "model version": f"/queue?model={MODELS[1]}",
                "label": "/queue?label=site%3Dplant-1",
                "time range": f"/queue?since={t_mid - 300}&until={t_mid}",
                "entity + label": "/queue?entity=arm-042&label=site%3Dlab-c",
                "model + label + time": f"/queue?model={MODELS[0]}&label=site%3Dlab-a&since={t_mid}",
                "deep page (1000)": "/queue?page=1000",
                "reviewed state": "/queue?state=acked",
            }
            for path in queue_paths.values():  # warm-up: templates compiled, connections open
                client.get(path)
            per_kind = max(1, args.requests // len(queue_paths))
            queue: dict[str, list[float]] = {name: [] for name in queue_paths}
            for _ in range(per_kind):  # round-robin: no filter kind gets a quieter or busier moment than another
                for name, path in queue_paths.items():
                    queue[name] += measure(client, [path], b"match-count")
            records = measure(client, [f"/record/{rng.choice(sources)}" for _ in range(args.requests)], b"elements")
            overview = measure(client, ["/"] * max(20, args.requests // 4), b"pending-total")
        all_queue = [v for vs in queue.values() for v in vs]
        results = {
            "queue": summary(all_queue),
            "queue_by_filter": {name: summary(vs) for name, vs in queue.items()},
            "record": summary(records),
            "overview": summary(overview),
        }
        met = {kind: results[kind]["p95_ms"] <= goal for kind, goal in GOALS_MS.items()}
        out = {
            "benchmark": "zeroproof console",
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
            "command": ".venv/bin/python -m bench.console",
            "setup": {
                "pending_records": args.records,
                "entities": len(ENTITIES),
                "label_values": len(SITES),
                "model_versions": len(MODELS),
                "page_size": 50,
                "stats_records": data["stats_records"],
                "client": "httpx, one keep-alive connection, sequential requests; console in its own process",
                "redis": "redis-server started here (no persistence)",
                "broker": "tansu (in-memory)",
            },
            "fill": filled,
            "results": results,
            "goals_p95_ms": GOALS_MS,
            "goals_met": met,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps({"results": results, "goals_met": met}, indent=2))
        return 0 if all(met.values()) else 1
    finally:
        if console is not None:
            console.terminate()
            console.wait(timeout=30)
        broker.stop()
        redis_proc.stop()


if __name__ == "__main__":
    sys.exit(main())
