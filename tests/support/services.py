"""Tests start services with the same code as the embedded stack (``embedded.services``)."""

from __future__ import annotations

import contextlib
from typing import Any

from embedded.services import (
    TEST_CONSUMER_SETTINGS,
    ManagedProcess,
    docker_available,
    free_port,
    kafka_broker,
    redis_server,
    start_redis,
    start_tansu,
    tansu_binary,
    wait_for_port,
)


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
