"""The monitor process is SIGKILLed during an incident and started again while the incident goes on: the alert
stays firing exactly once (no duplicate firing) and is never resolved while the incident lasts (no false
resolve). The in-process restart (clean close, simulated clock, full fire → resolve history) is covered by
tests/monitoring/test_restart_and_silence.py; this is the process-level, wall-clock, SIGKILL variant."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from harness.load import scrape, wait_until
from harness.monitor import read_topic, unique, wall_clock_monitor_env
from harness.services import create_topics, free_port
from monitoring.simulate import encode
from service.wire import Counts, StatsMessage
from tests.reliability.figures import record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MODEL = "v-incident"
OBSERVE_S = 8.0


def start_monitor(bootstrap: str, stats: str, alerts: str, group: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = wall_clock_monitor_env(
        bootstrap,
        stats,
        alerts,
        port,
        group_id=group,
        bottom_rise_pending="2s",
        gap_pending="2s",
        clear_for="2s",
        min_volume="100",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "monitoring"], env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT
    )


class Incident:
    """Stats of one worker, 5 per second: 30% ⊥ (coverage 70%) while ``bad`` is set."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self.topic = topic
        self.stop = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            now = time.time()
            m = StatsMessage(
                worker_id="w1",
                model_version=MODEL,
                tau_infer=1e-6,
                tau_train=1e-4,
                window_start=now - 0.2,
                window_end=now,
                counts=Counts(total=100, bottom=30),
                batch_seq=self.sent,
            )
            self.producer.send(self.topic, key=b"w1", value=encode(m))
            self.producer.flush()
            self.sent += 1
            self.stop.wait(0.2)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.producer.close()


def states(alerts: list[dict[str, Any]]) -> Counter[tuple[str, str]]:
    return Counter((a["rule"], a["state"]) for a in alerts if a.get("model_version") == MODEL)


@pytest.mark.timeout(150)
def test_monitor_sigkill_mid_incident_no_duplicate_no_false_resolve(kafka_bootstrap: str, tmp_path: Path) -> None:
    stats, alerts, group = unique("stats"), unique("alerts"), unique("monitor")
    create_topics(kafka_bootstrap, {stats: 2, alerts: 1})
    port = free_port()
    log = tmp_path / "monitor.log"
    incident = Incident(kafka_bootstrap, stats)
    first = start_monitor(kafka_bootstrap, stats, alerts, group, port, log)
    second: subprocess.Popen[bytes] | None = None
    try:
        incident.thread.start()
        fired: list[dict[str, Any]] = []

        def firing() -> bool:
            fired[:] = [a for a in read_topic(kafka_bootstrap, alerts, idle=0.3) if a["state"] == "firing"]
            return bool(fired)

        assert wait_until(firing, 60, every=0.5), log.read_text()[-3000:]
        time.sleep(2.0)  # let every rule that is going to fire do so
        before = states(read_topic(kafka_bootstrap, alerts, idle=0.5))
        rules = sorted({r for r, s in before if s == "firing"})
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = time.monotonic()
        time.sleep(3.0)  # the incident goes on with no monitor
        second = start_monitor(kafka_bootstrap, stats, alerts, group, port, log)
        assert wait_until(lambda: bool(scrape(port)), 60, every=0.2), log.read_text()[-3000:]
        back_s = time.monotonic() - killed_at
        # the restarted monitor evaluates the ongoing incident for a while: 8 evaluation intervals
        still: dict[str, float] = {}
        deadline = time.monotonic() + OBSERVE_S
        while time.monotonic() < deadline:
            m = scrape(port)
            for r in rules:
                v = m.get(f'zeroproof_monitor_alert_firing{{model_version="{MODEL}",rule="{r}"}}')
                if v is not None:
                    still[r] = v
            time.sleep(0.5)
        after = states(read_topic(kafka_bootstrap, alerts, idle=0.5))
        assert second.poll() is None, log.read_text()[-3000:]
        dup = {r: after[(r, "firing")] for r in rules if after[(r, "firing")] != 1}
        resolved = {r: after[(r, "resolved")] for r in rules if after[(r, "resolved")]}
        assert rules, before
        assert not dup, f"duplicate firing alerts after the restart: {dup}"
        assert not resolved, f"resolved while the incident went on: {resolved}"
        assert all(still.get(r) == 1.0 for r in rules), still  # the restarted monitor knows they fire
        second.send_signal(signal.SIGTERM)
        assert second.wait(30) == 0
        record(
            "monitor_sigkill",
            {
                "rules_firing_before_kill": rules,
                "monitor_down_s": round(back_s, 1),
                "observed_after_restart_s": OBSERVE_S,
                "firing_alerts_per_rule_after_restart": {r: after[(r, "firing")] for r in rules},
                "resolved_alerts_during_incident": sum(after[(r, "resolved")] for r in rules),
                "firing_gauge_after_restart": still,
                "stats_messages": incident.sent,
            },
        )
    finally:
        incident.close()
        for p in (first, second):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(10)
