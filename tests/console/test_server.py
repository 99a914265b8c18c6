"""The console as a process: refusing to start is one line and a clear exit code; started, it serves."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import pytest

from harness.services import free_port, wait_for_port
from harness.worker import REPO

pytestmark = pytest.mark.integration


def console(*args: str, module: str = "console") -> list[str]:
    return [sys.executable, "-m", module, *(["console"] if module == "zeroproof" else []), *args]


def run(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    full.update(env or {})
    return subprocess.run(cmd, env=full, cwd=REPO, capture_output=True, text=True, timeout=60)


def test_a_non_local_bind_without_credentials_does_not_start() -> None:
    r = run(console("--console-host", "0.0.0.0"))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "ZEROPROOF_CONSOLE_HOST" in lines[0] and "not a loopback address" in lines[0]
    r = run(console(module="zeroproof"), env={"ZEROPROOF_CONSOLE_HOST": "10.0.0.1"})
    assert r.returncode == 2 and r.stderr.startswith("zeroproof console: invalid setting ZEROPROOF_CONSOLE_HOST")
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = run(console("--console-port", str(port)))
    assert r.returncode == 1 and "cannot listen on 127.0.0.1:" in r.stderr and "Traceback" not in r.stderr


def test_it_serves_on_loopback_with_redis_and_kafka_away(redis_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    env.update(
        {
            "ZEROPROOF_CONSOLE_PORT": str(port),
            "ZEROPROOF_REDIS_URL": redis_url,
            "ZEROPROOF_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",  # nothing listens: the overview says so
            "ZEROPROOF_KAFKA_TIMEOUT": "2",
        }
    )
    proc = subprocess.Popen([sys.executable, "-m", "console"], env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_port(port, timeout=60, proc=proc)  # type: ignore[arg-type]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/queue", timeout=10) as resp:
            assert resp.status == 200 and b"Review queue" in resp.read()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as resp:
            assert b"Kafka not connected" in resp.read()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err[-2000:]
    assert '"event": "console up"' in err and f"http://127.0.0.1:{port}/" in err
