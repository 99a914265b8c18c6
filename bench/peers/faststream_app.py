"""FastStream on aiokafka with a batch subscriber: the handler gets what the consumer has fetched (up to 1000
records), runs the model on the batch and publishes the outputs in one acknowledged batch (``publish_batch``
waits for the broker's answer). ``AckPolicy.NACK_ON_ERROR`` commits once the handler has returned and rewinds
the batch if it raised (``AckPolicy.ACK`` would commit a failed batch too)."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import common
from faststream import AckPolicy, FastStream
from faststream.kafka import KafkaBroker
from faststream.kafka.annotations import KafkaMessage


def build(args: Any) -> FastStream:
    model = common.Model(args.model)
    # a batch of up to 1000 outputs goes out as one record batch: aiokafka's default buffer (16 KiB) overflows
    broker = KafkaBroker(args.bootstrap, acks="all", max_batch_size=1024 * 1024)

    @broker.subscriber(
        args.input,
        batch=True,
        max_records=1000,
        group_id=args.group,
        auto_offset_reset="earliest",
        ack_policy=AckPolicy.NACK_ON_ERROR,
        session_timeout_ms=common.SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=common.HEARTBEAT_INTERVAL_MS,
        fetch_max_wait_ms=common.FETCH_MAX_WAIT_MS,
    )
    async def infer(msg: KafkaMessage) -> None:
        values = [m.value for m in msg.raw_message]
        await broker.publish_batch(*model.encoded(values), topic=args.output)

    return FastStream(broker)


def main() -> int:
    args = common.arguments(__doc__ or "")
    asyncio.run(build(args).run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
