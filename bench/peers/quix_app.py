"""Quix Streams, as its documentation shows: a StreamingDataFrame that applies the model to each message and
writes the result to the output topic. Quix commits at its checkpoints (every ``commit_interval``, default 5 s),
after flushing its producer and checking every delivery, so an offset is committed only once its outputs are
acknowledged (at-least-once, its default guarantee)."""

from __future__ import annotations

import logging
import sys

import common
from quixstreams import Application


def main() -> int:
    args = common.arguments(__doc__ or "")
    model = common.Model(args.model)
    app = Application(
        broker_address=args.bootstrap,
        consumer_group=args.group,
        auto_offset_reset="earliest",
        consumer_extra_config={
            "session.timeout.ms": common.SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": common.HEARTBEAT_INTERVAL_MS,
            "fetch.wait.max.ms": common.FETCH_MAX_WAIT_MS,
        },
        producer_extra_config={"acks": "all"},
        use_changelog_topics=False,
        loglevel=logging.WARNING,
    )
    source = app.topic(args.input, value_deserializer="json")
    sink = app.topic(args.output, value_serializer="json")
    sdf = app.dataframe(source)
    sdf = sdf.apply(model.one)
    sdf.to_topic(sink)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
