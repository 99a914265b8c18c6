"""kafka-python implementation of the transport interface (consumer group, manual commits, acked sends)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata

from workers.settings import WorkerSettings
from workers.transport.base import DeliveryHandle, RebalanceListener, Record, TopicPartition


def security_config(settings: WorkerSettings) -> dict[str, Any]:
    """TLS/SASL client options; secrets are unwrapped here and nowhere else."""
    cfg: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        cfg["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        if settings.kafka_ssl_cafile:
            cfg["ssl_cafile"] = str(settings.kafka_ssl_cafile)
        if settings.kafka_ssl_certfile:
            cfg["ssl_certfile"] = str(settings.kafka_ssl_certfile)
        if settings.kafka_ssl_keyfile:
            cfg["ssl_keyfile"] = str(settings.kafka_ssl_keyfile)
        if settings.kafka_ssl_password:
            cfg["ssl_password"] = settings.kafka_ssl_password.get_secret_value()
    if settings.kafka_security_protocol.startswith("SASL"):
        cfg["sasl_mechanism"] = settings.kafka_sasl_mechanism
        if settings.kafka_sasl_username:
            cfg["sasl_plain_username"] = settings.kafka_sasl_username
        if settings.kafka_sasl_password:
            cfg["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return cfg


def bootstrap_list(settings: WorkerSettings) -> list[str]:
    return settings.kafka_bootstrap.split(",")


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, inner: RebalanceListener) -> None:
        self.inner = inner

    def on_partitions_revoked(self, revoked: Any) -> None:
        self.inner.on_revoked([TopicPartition(tp.topic, tp.partition) for tp in revoked])

    def on_partitions_assigned(self, assigned: Any) -> None:
        self.inner.on_assigned([TopicPartition(tp.topic, tp.partition) for tp in assigned])


class KafkaConsumerTransport:
    """A group member with auto-commit off; ``commit`` is synchronous and takes next-offsets."""

    def __init__(self, settings: WorkerSettings, client_id: str | None = None) -> None:
        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap_list(settings),
            group_id=settings.group_id,
            client_id=client_id or settings.worker_id,
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            session_timeout_ms=settings.session_timeout_ms,
            heartbeat_interval_ms=settings.heartbeat_interval_ms,
            max_poll_interval_ms=settings.max_poll_interval_ms,
            fetch_max_wait_ms=settings.fetch_max_wait_ms,
            max_poll_records=settings.max_poll_records,
            **security_config(settings),
        )

    def subscribe(self, topic: str, listener: RebalanceListener) -> None:
        self._consumer.subscribe(topics=[topic], listener=_Listener(listener))

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        batches = self._consumer.poll(timeout_ms=max(0, int(timeout_s * 1000)), max_records=max_records)
        out: list[Record] = []
        for recs in batches.values():
            for r in recs:
                out.append(
                    Record(
                        r.topic,
                        r.partition,
                        r.offset,
                        r.key,
                        r.value,
                        int(r.timestamp or 0),
                        tuple((h[0], h[1]) for h in (r.headers or ())),
                    )
                )
        return out

    def pause(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._consumer.pause(*[KTopicPartition(tp.topic, tp.partition) for tp in partitions])

    def resume(self, partitions: Sequence[TopicPartition]) -> None:
        if partitions:
            self._consumer.resume(*[KTopicPartition(tp.topic, tp.partition) for tp in partitions])

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(tp.topic, tp.partition) for tp in self._consumer.assignment()}

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if offsets:
            self._consumer.commit(
                {KTopicPartition(tp.topic, tp.partition): OffsetAndMetadata(off, "", -1) for tp, off in offsets.items()}
            )

    def close(self) -> None:
        self._consumer.close(autocommit=False)


class _KafkaHandle:
    __slots__ = ("_future",)

    def __init__(self, future: Any) -> None:
        self._future = future

    def done(self) -> bool:
        return bool(self._future.is_done)

    def error(self) -> BaseException | None:
        if not self._future.is_done:
            return None
        exc = self._future.exception
        return exc if isinstance(exc, BaseException) else None


class _FailedHandle:
    __slots__ = ("_exc",)

    def __init__(self, exc: BaseException) -> None:
        self._exc = exc

    def done(self) -> bool:
        return True

    def error(self) -> BaseException | None:
        return self._exc


class KafkaProducerTransport:
    """Idempotent, acks=all producer; ``send`` never raises: a refused send is a failed handle."""

    def __init__(self, settings: WorkerSettings, client_id: str | None = None) -> None:
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap_list(settings),
            client_id=client_id or settings.worker_id,
            acks="all" if settings.producer_acks == "all" else 1,
            linger_ms=settings.producer_linger_ms,
            batch_size=settings.producer_batch_size,
            max_block_ms=10_000,
            retries=5,
            **security_config(settings),
        )

    def send(
        self, topic: str, key: bytes | None, value: bytes, headers: Sequence[tuple[str, bytes]] = ()
    ) -> DeliveryHandle:
        try:
            fut = self._producer.send(topic, value=value, key=key, headers=list(headers) or None)
        except Exception as exc:  # buffer full past max_block_ms, serialization, closed producer...
            return _FailedHandle(exc)
        return _KafkaHandle(fut)

    def flush(self, timeout_s: float) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float) -> None:
        self._producer.close(timeout=timeout_s)
