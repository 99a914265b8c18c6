"""Start the console: settings, logging, Redis, the Kafka feed, then uvicorn on a socket we bound ourselves
(so a port in use is one clear line, not a server traceback)."""

from __future__ import annotations

import contextlib
import signal
import socket
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import structlog

from console.settings import ConsoleSettings, SettingsError, load_settings
from service import logs, secrets

log = structlog.get_logger("zeroproof.console")


def _bind(settings: ConsoleSettings) -> socket.socket:
    host = settings.console_host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP: asyncio sets TCP_NODELAY only on such sockets; without it a response written in two parts
    # waits for the client's delayed ACK (40 ms on every keep-alive request).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, settings.console_port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _index_until_done(store: object, stop: threading.Event) -> None:
    """Index records written before the secondary indexes existed; retried while Redis is away."""
    from service.review import RedisReviewStore

    assert isinstance(store, RedisReviewStore)
    delay = 1.0
    while not stop.is_set():
        try:
            n = store.ensure_index()
            if n:
                log.info("review records indexed", count=n)
            return
        except Exception as exc:  # Redis down at start-up: the pages say so; try again
            log.warning("indexing review records failed; retrying", error=secrets.scrub(str(exc))[:300])
            stop.wait(delay)
            delay = min(delay * 2, 30.0)


def _server_class() -> type[Any]:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, except that SIGTERM/SIGINT end it with exit code 0 after the graceful stop (uvicorn
        re-raises the signal, which would kill the process before our own shutdown and its last log line)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return Server


def main(argv: Sequence[str] | None = None, prog: str = "zeroproof-console") -> int:
    try:
        settings = load_settings(argv)
    except SettingsError as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    secrets.register(settings.secrets())
    logs.configure("zeroproof-console", settings.log_level, json=settings.log_json)
    log.info("configuration", **settings.redacted())
    try:
        sock = _bind(settings)
    except OSError as exc:
        sys.stderr.write(
            f"{prog}: cannot listen on {settings.console_host}:{settings.console_port} "
            f"(ZEROPROOF_CONSOLE_HOST / ZEROPROOF_CONSOLE_PORT): {exc.strerror or exc}\n"
        )
        return 1

    import uvicorn

    from console.app import KafkaReplayer, create_app
    from console.feeds import KafkaFeeds
    from service.review import RedisReviewStore

    store = RedisReviewStore(settings.redis_client(), settings.redis_key_prefix)
    stop = threading.Event()
    feeds = KafkaFeeds(settings)
    feeds.start()
    threading.Thread(target=_index_until_done, args=(store, stop), name="console-index", daemon=True).start()
    replayer = KafkaReplayer(settings)

    def shutdown() -> None:
        stop.set()
        feeds.stop()
        replayer.close()

    app = create_app(settings, store, feeds, replayer, on_shutdown=shutdown)
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", server_header=False, timeout_graceful_shutdown=5
    )
    server = _server_class()(config)
    log.info("console up", url=settings.url(), read_only=settings.console_read_only, auth=settings.auth_required)
    try:
        server.run(sockets=[sock])
    finally:
        shutdown()
        feeds.join(timeout=5)
        log.info("console stopped")
    return 0
