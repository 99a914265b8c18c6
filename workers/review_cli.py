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
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from service import secrets
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

    def one_record(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("id", help="the input id")
        parser.add_argument(
            "--source", help="TOPIC:PARTITION:OFFSET of the input, when several inputs share the id (see `show`)"
        )

    show = rsub.add_parser(
        "show", help="the full record of an input: input, N, D, masks, thresholds, source, audit trail"
    )
    one_record(show)
    show.set_defaults(func=_show)

    ack = rsub.add_parser("ack", help="mark reviewed (moves it off the pending list; kept in the audit trail)")
    one_record(ack)
    ack.add_argument("--note", help="a note kept with the acknowledgement")
    ack.add_argument("--reviewer", help="who acknowledges (default $ZEROPROOF_REVIEWER, else the login name)")
    ack.set_defaults(func=_ack)

    replay = rsub.add_parser("replay", help="re-publish the input to the input topic (asks for confirmation)")
    one_record(replay)
    replay.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    replay.add_argument("--kafka-bootstrap", help="overrides ZEROPROOF_KAFKA_BOOTSTRAP")
    replay.add_argument("--topic", help="target topic (default ZEROPROOF_INPUT_TOPIC)")
    replay.add_argument("--reviewer", help="who replays (default $ZEROPROOF_REVIEWER, else the login name)")
    replay.set_defaults(func=_replay)


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def terminal_safe(text: str) -> str:
    """Control characters (ESC, CR, ...) of ids and entities as ``\\xNN``: printed raw they would move the
    cursor, rewrite earlier lines or change the terminal's state."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def reviewer_name(args: argparse.Namespace) -> str:
    import getpass

    name = getattr(args, "reviewer", None) or os.environ.get("ZEROPROOF_REVIEWER")
    if not name:
        try:
            name = getpass.getuser()
        except Exception:
            name = "unknown"
    return f"cli:{name}"


def _settings(args: argparse.Namespace) -> WorkerSettings:
    overrides: dict[str, Any] = {}
    for name in ("redis_url", "redis_key_prefix", "kafka_bootstrap"):
        v = getattr(args, name, None)
        if v is not None:
            overrides[name] = v
    try:
        # the review tool never serves a model: ignore ZEROPROOF_MODEL and its file check.
        settings = load_settings([], model=None, thresholds_file=None, **overrides)
    except SettingsError as exc:
        raise ValueError(str(exc)) from None
    secrets.register(settings.secrets())
    return settings


def _store(args: argparse.Namespace) -> Any:
    from service.review import RedisReviewStore

    s = _settings(args)
    return RedisReviewStore(s.redis_client(), s.redis_key_prefix)


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
            sys.stderr.write(f"zeroproof review: error: redis: {secrets.scrub(str(exc))}\n")
            return 1

    return run


def _pick(store: Any, args: argparse.Namespace) -> Any:
    """The one record ``args`` name, or ``None`` after saying why on stderr."""
    if args.source:
        rec = store.get(args.source)
        if rec is None or rec.id != args.id:
            sys.stderr.write(
                f"zeroproof review: no record for id {terminal_safe(repr(args.id))} at {terminal_safe(args.source)}\n"
            )
            return None
        return rec
    records = store.find(args.id)
    if not records:
        sys.stderr.write(f"zeroproof review: no record for id {terminal_safe(repr(args.id))}\n")
        return None
    if len(records) > 1:
        sources = ", ".join(r.source for r in records)
        sys.stderr.write(
            f"zeroproof review: {len(records)} different inputs share id {terminal_safe(repr(args.id))}; "
            f"pass --source (one of {terminal_safe(sources)})\n"
        )
        return None
    return records[0]


@_reports_redis_errors
def _list(args: argparse.Namespace) -> int:
    store = _store(args)
    records = store.records("acked" if args.acked else "pending", args.limit)
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
        ident, entity, model = (
            terminal_safe(str(v)) if v is not None else "-" for v in (s["id"], s["entity"], s["model_version"])
        )
        out.write(f"{ident:<28} {entity:<16} {model:<18} {s['source']:<28} {s['deliveries']}\n")
    return 0


@_reports_redis_errors
def _show(args: argparse.Namespace) -> int:
    store = _store(args)
    if args.source:
        rec = _pick(store, args)
        records = [rec] if rec is not None else []
    else:
        records = store.find(args.id)
    if not records:
        sys.stderr.write(f"zeroproof review: no record for id {terminal_safe(repr(args.id))}\n")
        return 1
    if len(records) == 1:
        sys.stdout.write(json.dumps(records[0].full(), indent=2, sort_keys=True) + "\n")
        return 0
    # different inputs reused the id: every one of them, oldest first (JSON escapes control characters)
    sys.stderr.write(f"zeroproof review: {len(records)} different inputs share this id; showing all\n")
    sys.stdout.write(json.dumps([r.full() for r in records], indent=2, sort_keys=True) + "\n")
    return 0


@_reports_redis_errors
def _ack(args: argparse.Namespace) -> int:
    store = _store(args)
    rec = _pick(store, args)
    if rec is None or not store.ack(rec.source, reviewer_name(args), args.note):
        return 1
    sys.stdout.write(f"acknowledged {terminal_safe(rec.id)} ({rec.source})\n")
    return 0


@_reports_redis_errors
def _replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from service.review import RedisReviewStore

    store = RedisReviewStore(settings.redis_client(), settings.redis_key_prefix)
    rec = _pick(store, args)
    if rec is None:
        return 1
    topic = args.topic or settings.input_topic
    shown = terminal_safe(rec.id)
    if not args.yes:
        if not sys.stdin.isatty():
            sys.stderr.write("zeroproof review: replay re-publishes the input; confirm with --yes\n")
            return 1
        answer = input(f"replay {shown} ({rec.source}) to {topic} on {settings.kafka_bootstrap}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            sys.stderr.write("zeroproof review: not replayed\n")
            return 1
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    payload = json.dumps(rec.record.get("input", {})).encode()
    key = rec.record.get("key")
    try:
        producer = KafkaProducer(acks="all", **settings.kafka_python_client())
        meta = producer.send(
            topic,
            value=payload,
            key=key.encode() if isinstance(key, str) else None,
            headers=[("zeroproof-replay-of", rec.source.encode())],
        ).get(timeout=30)
        producer.close(timeout=5)
    except KafkaError as exc:
        sys.stderr.write(f"zeroproof review: error: kafka: {secrets.scrub(str(exc))}\n")
        return 1
    target = f"{topic}:{meta.partition}:{meta.offset}"
    store.mark_replayed(rec.source, reviewer_name(args), target)
    sys.stdout.write(f"replayed {shown} ({rec.source}) to {target}\n")
    return 0
