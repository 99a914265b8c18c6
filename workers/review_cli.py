"""``zeroproof review list|show|ack|replay``: the reviewer's side of the ⊥ log (contract §2).

Connection settings come from the same ``ZEROPROOF_*`` variables as the worker (``ZEROPROOF_REDIS_URL``,
``ZEROPROOF_KAFKA_BOOTSTRAP``, ``ZEROPROOF_INPUT_TOPIC``...), or ``--redis-url`` / ``--kafka-bootstrap``.
``replay`` re-publishes the recorded input to the input topic (same key, same id) and asks for confirmation
unless ``--yes`` is given.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from typing import Any

from workers.settings import SettingsError, WorkerSettings, load_settings


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("review", help="list, show, acknowledge and replay ⊥ review records")
    p.add_argument("--redis-url", help="overrides ZEROPROOF_REDIS_URL")
    p.add_argument("--redis-key-prefix", help="overrides ZEROPROOF_REDIS_KEY_PREFIX")
    rsub = p.add_subparsers(dest="review_command", metavar="ACTION")
    rsub.required = True

    ls = rsub.add_parser("list", help="pending records (oldest first)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.add_argument("--acked", action="store_true", help="list acknowledged records instead")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (0 = all)")
    ls.set_defaults(func=_list)

    show = rsub.add_parser("show", help="the full record of one input: input, N, D, masks, thresholds, source")
    show.add_argument("id")
    show.set_defaults(func=_show)

    ack = rsub.add_parser("ack", help="mark reviewed (moves it off the pending list)")
    ack.add_argument("id")
    ack.set_defaults(func=_ack)

    replay = rsub.add_parser("replay", help="re-publish the input to the input topic (asks for confirmation)")
    replay.add_argument("id")
    replay.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    replay.add_argument("--kafka-bootstrap", help="overrides ZEROPROOF_KAFKA_BOOTSTRAP")
    replay.add_argument("--topic", help="target topic (default ZEROPROOF_INPUT_TOPIC)")
    replay.set_defaults(func=_replay)


def _settings(args: argparse.Namespace) -> WorkerSettings:
    overrides: dict[str, Any] = {}
    for name in ("redis_url", "redis_key_prefix", "kafka_bootstrap"):
        v = getattr(args, name, None)
        if v is not None:
            overrides[name] = v
    try:
        # the review tool never serves a model: ignore ZEROPROOF_MODEL and its file check.
        return load_settings([], model=None, thresholds_file=None, **overrides)
    except SettingsError as exc:
        raise ValueError(str(exc)) from None


def _store(args: argparse.Namespace) -> Any:
    from workers.review import RedisReviewStore, redis_client

    s = _settings(args)
    return RedisReviewStore(redis_client(s), s.redis_key_prefix)


def _redis_errors() -> tuple[type[BaseException], ...]:
    import redis

    return (redis.RedisError,)


def _reports_redis_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A Redis failure anywhere in a review command is one line on stderr and exit code 1, never a traceback."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except _redis_errors() as exc:
            sys.stderr.write(f"zeroproof review: error: redis: {exc}\n")
            return 1

    return run


@_reports_redis_errors
def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    records = store.list("acked" if args.acked else "pending", args.limit)
    out = sys.stdout
    if args.json:
        for r in records:
            out.write(json.dumps(r.summary(), sort_keys=True) + "\n")
        return 0
    if not records:
        out.write("no pending ⊥ records\n" if not args.acked else "no acknowledged records\n")
        return 0
    out.write(f"{'ID':<28} {'ENTITY':<16} {'MODEL':<18} {'SOURCE':<28} DELIVERIES\n")
    for r in records:
        s = r.summary()
        out.write(
            f"{s['id']:<28} {s['entity'] or '-':<16} {s['model_version'] or '-':<18} {s['source']:<28} "
            f"{s['deliveries']}\n"
        )
    return 0


@_reports_redis_errors
def _show(args: argparse.Namespace) -> int:
    store = _store(args)
    rec = store.get(args.id)
    if rec is None:
        sys.stderr.write(f"zeroproof review: no record for id {args.id!r}\n")
        return 1
    sys.stdout.write(json.dumps(rec.full(), indent=2, sort_keys=True) + "\n")
    return 0


@_reports_redis_errors
def _ack(args: argparse.Namespace) -> int:
    store = _store(args)
    ok = store.ack(args.id)
    if not ok:
        sys.stderr.write(f"zeroproof review: no record for id {args.id!r}\n")
        return 1
    sys.stdout.write(f"acknowledged {args.id}\n")
    return 0


@_reports_redis_errors
def _replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from workers.review import RedisReviewStore, redis_client

    store = RedisReviewStore(redis_client(settings), settings.redis_key_prefix)
    rec = store.get(args.id)
    if rec is None:
        sys.stderr.write(f"zeroproof review: no record for id {args.id!r}\n")
        return 1
    topic = args.topic or settings.input_topic
    if not args.yes:
        if not sys.stdin.isatty():
            sys.stderr.write("zeroproof review: replay re-publishes the input; confirm with --yes\n")
            return 1
        answer = input(f"replay {args.id} to {topic} on {settings.kafka_bootstrap}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            sys.stderr.write("zeroproof review: not replayed\n")
            return 1
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from workers.transport.kafka import bootstrap_list, security_config

    payload = json.dumps(rec.record.get("input", {})).encode()
    key = rec.record.get("key")
    try:
        producer = KafkaProducer(bootstrap_servers=bootstrap_list(settings), acks="all", **security_config(settings))
        meta = producer.send(
            topic,
            value=payload,
            key=key.encode() if isinstance(key, str) else None,
            headers=[("zeroproof-replay-of", args.id.encode())],
        ).get(timeout=30)
        producer.close(timeout=5)
    except KafkaError as exc:
        sys.stderr.write(f"zeroproof review: error: kafka: {exc}\n")
        return 1
    store.mark_replayed(args.id)
    sys.stdout.write(f"replayed {args.id} to {topic}:{meta.partition}:{meta.offset}\n")
    return 0
