"""kafka-python pass-through (no model): poll up to 500 records, send each one on unchanged, flush (every send
acknowledged), commit. The ceiling of any kafka-python app doing this job."""

from __future__ import annotations

import signal
import sys

import common
from kafka import KafkaConsumer, KafkaProducer


def main() -> int:
    args = common.arguments(__doc__ or "")
    consumer = KafkaConsumer(
        args.input,
        bootstrap_servers=args.bootstrap,
        group_id=args.group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=common.SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=common.HEARTBEAT_INTERVAL_MS,
        fetch_max_wait_ms=common.FETCH_MAX_WAIT_MS,
    )
    producer = KafkaProducer(bootstrap_servers=args.bootstrap, acks="all")
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    try:
        while not stop["now"]:
            batches = consumer.poll(timeout_ms=100, max_records=500)
            if not batches:
                continue
            futures = [producer.send(args.output, key=r.key, value=r.value) for recs in batches.values() for r in recs]
            producer.flush()
            for f in futures:
                f.get(0)  # raises if a send failed: nothing committed, redelivered on restart
            consumer.commit()
    finally:
        consumer.close(autocommit=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
