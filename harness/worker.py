"""Shared helpers for worker tests: model files, record builders, a worker subprocess, topic readers."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.services import TEST_CONSUMER_SETTINGS, create_topics, free_port
from workers.transport.base import Record
from zeroproof.export import save_bundle
from zeroproof.inference import InferenceConfig
from zeroproof.layers import known_pole_model

REPO = Path(__file__).resolve().parents[1]
POLE = 0.5


def known_pole_bundle(path: Path, pole: float = POLE, version: str = "known-pole-1") -> Path:
    save_bundle(
        known_pole_model(pole), path, config=InferenceConfig(tau_infer=1e-6, tau_train=1e-4), model_version=version
    )
    return path


def rec(
    value: bytes | None, offset: int, key: bytes | None = b"robot-1", partition: int = 0, topic: str = "in"
) -> Record:
    return Record(topic, partition, offset, key, value, int(time.time() * 1000))


def msg(i: int | str, features: list[Any], **extra: Any) -> bytes:
    return json.dumps({"id": str(i), "features": features, **extra}).encode()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class Topics:
    """Unique topic names and group id for one test, as worker env vars."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:10])

    @property
    def inputs(self) -> str:
        return f"t{self.tag}.inputs"

    @property
    def outputs(self) -> str:
        return f"t{self.tag}.outputs"

    @property
    def dlq(self) -> str:
        return f"t{self.tag}.dlq"

    @property
    def fallback(self) -> str:
        return f"t{self.tag}.fallback"

    @property
    def stats(self) -> str:
        return f"t{self.tag}.stats"

    @property
    def group(self) -> str:
        return f"g{self.tag}"

    @property
    def redis_prefix(self) -> str:
        return f"zp{self.tag}:review"

    def env(self) -> dict[str, str]:
        return {
            "ZEROPROOF_INPUT_TOPIC": self.inputs,
            "ZEROPROOF_OUTPUT_TOPIC": self.outputs,
            "ZEROPROOF_DLQ_TOPIC": self.dlq,
            "ZEROPROOF_FALLBACK_TOPIC": self.fallback,
            "ZEROPROOF_STATS_TOPIC": self.stats,
            "ZEROPROOF_GROUP_ID": self.group,
            "ZEROPROOF_REDIS_KEY_PREFIX": self.redis_prefix,
        }


class WorkerProc:
    """``python -m workers`` as a child process, logs to a file we can grep.

    The input topic is created first (4 partitions) unless ``create_input_topic`` is False: tests then never
    depend on how a worker copes with a topic that appears after it started (``test_startup.py`` tests that).
    """

    def __init__(
        self, env: dict[str, str], log_path: Path, create_input_topic: bool = True, input_partitions: int = 4
    ) -> None:
        if create_input_topic and "ZEROPROOF_INPUT_TOPIC" in env and "ZEROPROOF_KAFKA_BOOTSTRAP" in env:
            create_topics(env["ZEROPROOF_KAFKA_BOOTSTRAP"], {env["ZEROPROOF_INPUT_TOPIC"]: input_partitions})
        self.log_path = log_path
        self.metrics_port = free_port()
        full = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
        full.update(
            {
                "ZEROPROOF_SESSION_TIMEOUT_MS": str(TEST_CONSUMER_SETTINGS["session_timeout_ms"]),
                "ZEROPROOF_HEARTBEAT_INTERVAL_MS": str(TEST_CONSUMER_SETTINGS["heartbeat_interval_ms"]),
                "ZEROPROOF_FETCH_MAX_WAIT_MS": str(TEST_CONSUMER_SETTINGS["fetch_max_wait_ms"]),
                "ZEROPROOF_METRICS_PORT": str(self.metrics_port),
                "ZEROPROOF_RELOAD_CHECK_S": "0.5",
                "OMP_NUM_THREADS": "1",
            }
        )
        # the whole suite can run on the other transport: ZEROPROOF_TEST_KAFKA_CLIENT=confluent
        if os.environ.get("ZEROPROOF_TEST_KAFKA_CLIENT"):
            full["ZEROPROOF_KAFKA_CLIENT"] = os.environ["ZEROPROOF_TEST_KAFKA_CLIENT"]
        full.update(env)
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "workers"], env=full, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def wait_event(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for ev in self.events():
                if ev.get("event") == name:
                    return ev
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited ({self.proc.returncode}) before {name}: {self.log_tail()}")
            time.sleep(0.1)
        raise AssertionError(f"no {name} event within {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def terminate(self, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def produce(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes]], **client: Any) -> int:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", **client)
    n = 0
    for key, value in items:
        p.send(topic, key=key, value=value)
        n += 1
    p.flush(timeout=30)
    p.close(timeout=5)
    return n


class TopicReader:
    """Reads a topic from the beginning without a consumer group (tansu: earliest only).

    No group: nothing to join (tansu holds a JoinGroup for session_timeout/2) and no rebalance to wait out, so a
    reader sees records as soon as they are acknowledged.
    """

    def __init__(self, bootstrap: str, topic: str, **client: Any) -> None:
        from kafka import KafkaConsumer

        self.consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            **TEST_CONSUMER_SETTINGS,
            **client,
        )
        self.records: list[Any] = []

    def read_until(self, done: Any, timeout: float) -> list[Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not done(self.records):
            for recs in self.consumer.poll(timeout_ms=200).values():
                self.records.extend(recs)
        return self.records

    def json(self) -> list[dict[str, Any]]:
        return [json.loads(r.value) for r in self.records]

    def close(self) -> None:
        self.consumer.close()


def worker_env(kafka: str, redis_url: str, model: Path, topics: Topics, **extra: str) -> dict[str, str]:
    env = {"ZEROPROOF_KAFKA_BOOTSTRAP": kafka, "ZEROPROOF_REDIS_URL": redis_url, "ZEROPROOF_MODEL": str(model)}
    env.update(topics.env())
    env.update({k.upper() if k.startswith("ZEROPROOF_") else "ZEROPROOF_" + k.upper(): v for k, v in extra.items()})
    return env


def feature_for(i: int) -> list[float | None]:
    """Mostly ordinary inputs; every 25th is the pole (⊥), every 25th+1 is in the gap, every 50th+7 is null (⊥)."""
    if i % 25 == 0:
        return [POLE]
    if i % 25 == 1:
        return [POLE + 1e-5]
    if i % 50 == 7:
        return [None]
    return [round((i % 97) / 97.0 * 4 - 2, 6)]


def bottom_ids(ids: range) -> set[str]:
    return {str(i) for i in ids if i % 25 == 0 or i % 50 == 7}


def committed_offsets(kafka: str, topics: Topics) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=kafka, group_id=topics.group, enable_auto_commit=False)
    try:
        parts = c.partitions_for_topic(topics.inputs) or set()
        return {p: (c.committed(TopicPartition(topics.inputs, p)) or 0) for p in parts}
    finally:
        c.close()
