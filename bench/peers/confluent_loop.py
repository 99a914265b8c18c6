"""Hand-written confluent-kafka (librdkafka) batch loop: take what has arrived (up to 1000 records), run the model
on the batch, produce the outputs, wait for their acknowledgements (flush), then commit synchronously."""

from __future__ import annotations

import signal
import sys

import common
from confluent_kafka import Consumer, Producer


def main() -> int:
    args = common.arguments(__doc__ or "")
    model = common.Model(args.model)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": common.SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": common.HEARTBEAT_INTERVAL_MS,
            "fetch.wait.max.ms": common.FETCH_MAX_WAIT_MS,
        }
    )
    producer = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "enable.idempotence": True})
    failed: list[object] = []

    def delivered(err: object, msg: object) -> None:
        if err is not None:
            failed.append(err)

    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    consumer.subscribe([args.input])
    try:
        while not stop["now"]:
            first = consumer.poll(0.1)
            if first is None:
                continue
            msgs = [m for m in [first, *consumer.consume(999, 0)] if m.error() is None]
            if not msgs:
                continue
            for m, out in zip(msgs, model.encoded([m.value() for m in msgs]), strict=True):
                producer.produce(args.output, out, m.key(), on_delivery=delivered)
            producer.flush()
            if failed:
                raise RuntimeError(f"delivery failed: {failed[0]}")  # nothing committed: redelivered on restart
            consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
