"""The Kafka transport the settings ask for: ``ZEROPROOF_KAFKA_CLIENT`` = ``kafka-python`` (default) | ``confluent``.

Both implement the interface of ``workers.transport.base`` with the same delivery promises; the worker, its
tests and the reliability suite switch between them with this one setting. Client libraries are imported only
when chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from workers.settings import WorkerSettings
from workers.transport.base import Consumer, Producer

if TYPE_CHECKING:
    from workers.metrics import WorkerMetrics

KAFKA_CLIENTS = ("kafka-python", "confluent")


class StartupProducer(Producer, Protocol):
    """The worker's main producer also prepares start-up: output topics' metadata, the input topic's partitions."""

    def warm(self, topics: Sequence[str], timeout_s: float = 30.0) -> Mapping[str, int]: ...

    def topic_partitions(self, topic: str, timeout_s: float = 1.0) -> int: ...


class UndecodableAware(Consumer, Protocol):
    @property
    def undecodable(self) -> Mapping[Any, Any]: ...


def consumer_transport(
    settings: WorkerSettings, log: Any = None, metrics: WorkerMetrics | None = None, client_id: str | None = None
) -> UndecodableAware:
    if settings.kafka_client == "confluent":
        from workers.transport.confluent import ConfluentConsumerTransport

        return ConfluentConsumerTransport(settings, client_id=client_id, log=log, metrics=metrics)
    from workers.transport.kafka import KafkaConsumerTransport

    return KafkaConsumerTransport(settings, client_id=client_id, log=log, metrics=metrics)


def producer_transport(
    settings: WorkerSettings, isolated: bool = False, client_id: str | None = None
) -> StartupProducer:
    if settings.kafka_client == "confluent":
        from workers.transport.confluent import ConfluentProducerTransport

        return ConfluentProducerTransport(settings, client_id=client_id, isolated=isolated)
    from workers.transport.kafka import KafkaProducerTransport

    return KafkaProducerTransport(settings, client_id=client_id, isolated=isolated)
