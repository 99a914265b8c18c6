"""A small loopback TCP proxy for fault injection: cut (refuse + close every connection), restore, add latency.

Used in front of the broker (tansu's memory engine loses everything on restart, so an outage is simulated by
cutting the path, not by stopping the broker) and in front of Redis (a slow downstream). A TLS-terminating
variant puts TLS in front of tansu.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

from harness.services import free_port


class TcpProxy:
    """``127.0.0.1:port`` → ``127.0.0.1:target``. Thread per direction; fine for tests, not for production."""

    def __init__(self, target_port: int, port: int | None = None, latency_s: float = 0.0) -> None:
        self.target_port = target_port
        self.port = port or free_port()
        self.latency_s = latency_s
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = False
        self.accepted = 0
        self.refused_while_cut = 0
        self.bytes_up = 0
        self.bytes_down = 0

    # --- control -------------------------------------------------------------------------------------------
    def start(self) -> TcpProxy:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(128)
        self._listener = s
        threading.Thread(target=self._accept_loop, args=(s,), daemon=True, name=f"proxy-{self.port}").start()
        return self

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def cut(self) -> None:
        """Stop listening (new connections are refused) and reset every open connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for c in conns:
            with contextlib.suppress(OSError):
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            with contextlib.suppress(OSError):
                c.close()

    def restore(self) -> None:
        if self._listener is None:
            deadline = time.monotonic() + 10
            while True:
                try:
                    self.start()
                    return
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)

    def close(self) -> None:
        self._stopped = True
        self.cut()

    # --- plumbing ------------------------------------------------------------------------------------------
    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._listener is not listener:
                client.close()
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if up and self.latency_s > 0:
                    time.sleep(self.latency_s)
                dst.sendall(data)
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


class TlsTerminatingProxy:
    """``127.0.0.1:port`` (TLS, the given certificate) → ``127.0.0.1:target`` (plaintext), on an asyncio loop in a
    thread. tansu has no TLS listener; with the broker advertising this proxy's address, every Kafka client talks
    TLS to a real Kafka-protocol broker, which is what the worker's Kafka TLS settings need to be tested against."""

    def __init__(self, target_port: int, certfile: str, keyfile: str, port: int | None = None) -> None:
        import ssl

        self.target_port = target_port
        self.port = port or free_port()
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(certfile, keyfile)
        self.handshakes = 0
        self._loop: Any = None
        self._server: Any = None
        self._ready = threading.Event()

    def start(self) -> TlsTerminatingProxy:
        threading.Thread(target=self._run, daemon=True, name=f"tls-proxy-{self.port}").start()
        if not self._ready.wait(10):
            raise RuntimeError("TLS proxy did not start")
        return self

    def close(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _run(self) -> None:
        import asyncio

        loop = asyncio.new_event_loop()
        self._loop = loop

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    writer.close()

        async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
            self.handshakes += 1
            try:
                up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                client_w.close()
                return
            await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))

        async def serve() -> None:
            self._server = await asyncio.start_server(handle, "127.0.0.1", self.port, ssl=self.context)
            self._ready.set()

        loop.run_until_complete(serve())
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.close()
