"""Kafka seen through a small interface, so the worker loop is testable without a broker.

``base`` defines the interface, ``kafka`` implements it with kafka-python, ``memory`` in-process (unit tests).
"""

from workers.transport.base import (
    Consumer,
    DeliveryHandle,
    Producer,
    ProducerFactory,
    RebalanceListener,
    Record,
    RecordRefusedError,
    TopicPartition,
)

__all__ = [
    "Consumer",
    "DeliveryHandle",
    "Producer",
    "ProducerFactory",
    "RebalanceListener",
    "Record",
    "RecordRefusedError",
    "TopicPartition",
]
