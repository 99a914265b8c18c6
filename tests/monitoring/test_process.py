"""The real ``python -m monitoring`` process: env configuration, wall-clock operation, metrics, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from kafka import KafkaProducer

from harness.monitor import read_topic, unique, wall_clock_monitor_env
from harness.services import create_topics, free_port
from monitoring.simulate import encode
from service.wire import Counts, StatsMessage

pytestmark = pytest.mark.integration


@pytest.mark.timeout(120)
def test_monitor_process_end_to_end(kafka_bootstrap: str) -> None:
    stats, alerts = unique("stats"), unique("alerts")
    create_topics(kafka_bootstrap, {stats: 2, alerts: 1})
    port = free_port()
    env = wall_clock_monitor_env(kafka_bootstrap, stats, alerts, port, min_volume="100")
    proc = subprocess.Popen(
        [sys.executable, "-m", "monitoring"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    try:
        deadline = time.monotonic() + 40
        fired = []
        while time.monotonic() < deadline and not fired:
            now = time.time()
            msg = StatsMessage(
                worker_id="w1",
                model_version="v-live",
                tau_infer=1e-6,
                tau_train=1e-4,
                window_start=now - 0.2,
                window_end=now,
                counts=Counts(total=100, bottom=30),
            )
            producer.send(stats, key=b"w1", value=encode(msg))
            producer.flush()
            time.sleep(0.2)
            if int(now * 5) % 10 == 0:
                fired = [a for a in read_topic(kafka_bootstrap, alerts, idle=0.3) if a["state"] == "firing"]
        assert fired, "no alert from the monitor process"
        assert fired[0]["rule"] in ("coverage_low", "bottom_rate_rise")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert 'zeroproof_monitor_coverage{model_version="v-live",window="short"}' in text
        assert 'zeroproof_monitor_alert_firing{model_version="v-live",rule="coverage_low"}' in text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        producer.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert "Traceback" not in err
    assert '"event": "monitor stopped"' in err or '"event":"monitor stopped"' in err
