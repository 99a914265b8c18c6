"""A small loopback TCP proxy for fault injection: cut (refuse + close every connection), restore, add latency.

Used in front of the broker (tansu's memory engine loses everything on restart, so an outage is simulated by
cutting the path, not by stopping the broker) and in front of Redis (a slow downstream).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from tests.support.services import free_port


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
