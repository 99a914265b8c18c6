"""Benchmark of zeroproof-monitor, default windows (5 min short, 1 h long, 15 s evaluation, 60 s pending).

Measures, against a real Kafka-protocol broker (tansu started here, or --bootstrap):
1. throughput: 8 simulated workers' stats records pre-published, then consumed by the monitor (real Kafka
   source, real sinks): stats records/s and predictions/s represented; the same for the transport-free core;
2. alert latency from the first bad batch to the alert message, for a moderate (99% → 80%) and a severe
   (99% → 0%) coverage drop: in event time (what a user waits in production, where event time is wall time)
   and the processing delay from publishing the batch that completes the deciding window to the alert
   record on the alerts topic;
3. false alarms in long steady replays (in-memory core, same code path as the service).

Usage: .venv/bin/python -m bench.monitor [--bootstrap HOST:PORT] [--out bench/results/monitor.json]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any

import structlog

from harness.monitor import T0, Publisher, start_monitor, steady_streams, unique
from harness.services import create_topics
from monitoring.core import Monitor
from monitoring.service import MonitorService
from monitoring.settings import MonitorSettings
from monitoring.simulate import Phase, SimClock, Stream, encode, generate
from monitoring.sinks import MemorySink

ROOT = Path(__file__).resolve().parent.parent

WORKERS = 8


def default_settings(**kw: Any) -> MonitorSettings:
    fields = {name: f.default for name, f in MonitorSettings.model_fields.items()}
    fields.update(kw)
    return MonitorSettings.model_validate(fields)


def throughput(bootstrap: str, seconds_of_traffic: float) -> dict[str, Any]:
    """Worker-realistic stats: a batch of 512 every 20 ms per worker (the worker's defaults at full speed),
    with a label breakdown (3 values) and one shadow threshold pair."""
    stream = Stream(
        "v1",
        [Phase(0, 0.01, 0.02)],
        workers=WORKERS,
        batch=512,
        period=0.02,
        label="site",
        label_values=["eu", "us", "ap"],
        shadow=True,
    )
    events = list(generate([stream], T0, seconds_of_traffic, seed=1))
    payloads = [(w.encode(), encode(m)) for _, w, m in events]
    predictions = sum(m.counts.total for _, _, m in events)
    stats = unique("bench.stats")
    create_topics(bootstrap, {stats: 8, unique("bench.alerts"): 1})
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
    for key, value in payloads:
        producer.send(stats, key=key, value=value)
    producer.flush()
    producer.close()

    # The monitor's clock follows the data (in production event time is wall time), so it is live at once.
    holder: dict[str, MonitorService] = {}

    def clock() -> float:
        svc = holder.get("svc")
        last = svc.monitor.last_event if svc is not None and svc.monitor is not None else None
        return last if last is not None else T0

    s = default_settings(kafka_bootstrap=bootstrap, stats_topic=stats, alerts_topic=unique("bench.alerts"))
    svc = MonitorService(s, clock=clock, poll_timeout=0.05)
    holder["svc"] = svc
    stop = threading.Event()
    thread = threading.Thread(target=svc.run, args=(stop,), daemon=True)
    thread.start()
    while svc.monitor is None:
        time.sleep(0.005)
    first: float | None = None
    deadline = time.monotonic() + 300
    while svc.monitor.counters.records < len(payloads) and time.monotonic() < deadline:
        if first is None and svc.monitor.counters.records > 0:
            first = time.perf_counter()
        time.sleep(0.002)
    end = time.perf_counter()
    consumed = svc.monitor.counters.records
    stop.set()
    thread.join(30)
    assert first is not None
    elapsed = end - first

    # The core alone (parse + windows + rules), same records, no Kafka.
    core = Monitor(s, [MemorySink()], SimClock(T0 + seconds_of_traffic))
    core.finish_replay()
    t = time.perf_counter()
    for _, value in payloads:
        core.ingest(value)
    core_elapsed = time.perf_counter() - t
    required = WORKERS / 0.02
    return {
        "workers": WORKERS,
        "stats_records": consumed,
        "record_bytes_avg": round(sum(len(v) for _, v in payloads) / len(payloads)),
        "predictions_per_record": 512,
        "simulated_seconds": seconds_of_traffic,
        "monitor_with_kafka": {
            "seconds": round(elapsed, 3),
            "stats_records_per_s": round(consumed / elapsed),
            "predictions_per_s_represented": round(predictions / elapsed),
        },
        "core_only": {
            "seconds": round(core_elapsed, 3),
            "stats_records_per_s": round(len(payloads) / core_elapsed),
            "predictions_per_s_represented": round(predictions / core_elapsed),
        },
        "required_for_8_workers_at_full_speed": {
            "stats_records_per_s": round(required),
            "note": "worker defaults: one stats record per batch, batches of <= 512 every >= 20 ms",
        },
        "headroom_x": round(consumed / elapsed / required, 1),
    }


def alert_latency(bootstrap: str, bad: Phase, label: str) -> dict[str, Any]:
    """Steady 8 workers for 75 min (fills the 1 h baseline), then a coverage drop; one batch per 5 s each."""
    t_bad = 4500.0
    good = Phase(0, 0.005, 0.005)
    stream = Stream("v1", [good, Phase(t_bad, bad.bottom, bad.gap)], workers=WORKERS, batch=500, period=5.0)
    stats, alerts = unique("bench.stats"), unique("bench.alerts")
    create_topics(bootstrap, {stats: 8, alerts: 1})
    s = default_settings(kafka_bootstrap=bootstrap, stats_topic=stats, alerts_topic=alerts)
    clock = SimClock(T0)
    mon = start_monitor(s, clock)
    pub = Publisher(bootstrap, stats, clock)
    sent_at: list[tuple[float, str, float]] = []  # (window_end, worker, wall time sent)

    events = list(generate([stream], T0, t_bad + 900, seed=3))
    try:
        # History in bulk, then the incident one batch at a time, as workers would publish it.
        pub.publish([e for e in events if e[0] < T0 + t_bad - 60], mon, chunk=300)
        for end, worker, msg in (e for e in events if e[0] >= T0 + t_bad - 60):
            pub.producer.send(stats, key=worker.encode(), value=encode(msg))
            pub.producer.flush()
            sent_at.append((end, worker, time.time()))
            pub.sent += 1
            clock.set(end)
            if mon.service.monitor is not None and any(a.rule == "coverage_low" for a in mon.service.monitor.emitted):
                break
            time.sleep(0.0005)
        pub.sync(mon)
        time.sleep(0.5)
    finally:
        pub.close()
        mon.close()
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    tp = TopicPartition(alerts, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    stamped: list[tuple[float, dict[str, Any]]] = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for recs in consumer.poll(timeout_ms=200).values():
            stamped += [(r.timestamp / 1000, json.loads(r.value)) for r in recs]
    consumer.close()
    records = [a for _, a in stamped]
    sent_ts, coverage_alert = next((ts, a) for ts, a in stamped if a["rule"] == "coverage_low")
    first_bad = min(end for end, _, _ in sent_at if end >= T0 + t_bad)
    fired = coverage_alert["fired_at"]
    # The deciding tick is evaluated once every worker has reported past fired_at + allowed_lateness.
    per_worker = {}
    for end, worker, wall in sent_at:
        if end >= fired + s.allowed_lateness and worker not in per_worker:
            per_worker[worker] = wall
    trigger = max(per_worker.values()) if len(per_worker) == WORKERS else math.nan
    return {
        "scenario": label,
        "first_alerts": [(a["rule"], a["state"]) for a in records],
        "coverage_alert_value": round(coverage_alert["value"], 4),
        "event_time_latency_s": round(fired - first_bad, 1),
        "event_time_latency_incl_lateness_s": round(fired + s.allowed_lateness - first_bad, 1),
        "processing_delay_ms": round((sent_ts - trigger) * 1000, 1),
        "bound_note": "time for the 5 min window to cross 90% + 60 s pending + <= 15 s evaluation step + 5 s lateness",
    }


def false_alarms(hours: float, seeds: list[int]) -> dict[str, Any]:
    s = default_settings()
    total = 0
    per_seed = {}
    for seed in seeds:
        clock, sink = SimClock(T0), MemorySink()
        m = Monitor(s, [sink], clock)
        m.finish_replay()
        for end, _, msg in generate(steady_streams(hours), T0, hours * 3600, seed=seed):
            clock.set(end)
            m.ingest(encode(msg))
            m.wall_tick(caught_up=False)
        n = len([a for a in sink.alerts if a.state == "firing"])
        per_seed[str(seed)] = n
        total += n
    return {
        "simulated_hours_per_seed": hours,
        "seeds": per_seed,
        "false_alarms_total": total,
        "traffic": "8 workers x 100 predictions/s with drifting rates + 1 canary worker at 1 prediction/s",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default=None)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "monitor.json"))
    parser.add_argument("--traffic-seconds", type=float, default=120.0, help="simulated seconds for throughput")
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    broker = None
    bootstrap = args.bootstrap
    if bootstrap is None:
        from harness.services import start_tansu

        broker = start_tansu()
        bootstrap = broker.extra["bootstrap"]
    try:
        result = {
            "benchmark": "zeroproof-monitor",
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"python": platform.python_version(), "cpus": __import__("os").cpu_count()},
            "broker": "tansu (in-memory)" if broker else bootstrap,
            "command": ".venv/bin/python -m bench.monitor",
            "settings": {
                k: v
                for k, v in default_settings().model_dump().items()
                if k
                in (
                    "short_window",
                    "long_window",
                    "eval_interval",
                    "bucket",
                    "allowed_lateness",
                    "coverage_threshold",
                    "coverage_pending",
                    "min_volume",
                )
            },
            "throughput": throughput(bootstrap, args.traffic_seconds),
            "alert_latency": [
                alert_latency(bootstrap, Phase(0, 0.1, 0.1), "coverage 99% -> 80%"),
                alert_latency(bootstrap, Phase(0, 1.0, 0.0), "coverage 99% -> 0% (all bottom)"),
            ],
            "false_alarms": false_alarms(24.0, [1, 2, 3]),
        }
    finally:
        if broker is not None:
            broker.stop()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    sys.stdout.write(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
