"""Tests start services with the same code as the embedded stack (``embedded.services``)."""

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

__all__ = [
    "TEST_CONSUMER_SETTINGS",
    "ManagedProcess",
    "docker_available",
    "free_port",
    "kafka_broker",
    "redis_server",
    "start_redis",
    "start_tansu",
    "tansu_binary",
    "wait_for_port",
]
