"""`zeroproof run` (what `make run` starts), end to end on a short scenario: real broker, Redis, worker, monitor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def arm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("model") / "arm.zpb"
    subprocess.run(
        [sys.executable, "-m", "zeroproof", "train-arm", "--out", str(path), "--seconds", "8", "--max-steps", "1500"],
        check=True,
        capture_output=True,
        timeout=180,
    )
    return path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    return {**env, "PYTHONUNBUFFERED": "1"}


@pytest.mark.timeout(300)
def test_run_shows_the_system_working_and_leaves_nothing_running(arm_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "zeroproof",
            "run",
            "--duration",
            "24",
            "--rate",
            "250",
            "--model",
            str(arm_bundle),
            "--out",
            str(out),
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "coverage=" in proc.stdout and "=== zeroproof run: report ===" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    outputs = report["outputs"]
    assert outputs["distinct_ids"] == outputs["expected"] > 5000  # every valid input got an output
    malformed = sum(v for k, v in report["produced"].items() if k.startswith("malformed"))
    assert sum(outputs["dlq_reasons"].values()) == malformed > 0  # and every malformed one is in the DLQ
    assert outputs["status"].get("bottom", 0) > 0 and outputs["status"].get("gap", 0) > 0
    assert report["review_queue"]["pending"] == outputs["status"]["bottom"]  # each ⊥ input recorded once
    assert report["alerts_fired"] >= 1 and report["alerts_resolved"] >= 1  # the fault burst fires and resolves
    assert (out / "rates.png").stat().st_size > 10_000 and (out / "report.md").exists()
    assert len((out / "review-queue.jsonl").read_text().splitlines()) == report["review_queue"]["pending"]
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(out) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []


@pytest.mark.timeout(200)
def test_ctrl_c_stops_every_process_it_started(arm_bundle: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "zeroproof", "run", "--duration", "120", "--model", str(arm_bundle), "--out", str(out)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 90
    for line in proc.stdout:
        if "msg/s" in line or time.monotonic() > deadline:
            break
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= 4  # broker, redis, worker, monitor
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=90)[0]
    assert proc.returncode == 130, rest[-2000:]
    assert "interrupted" in rest
    time.sleep(0.5)
    assert [c.pid for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE] == []


@pytest.mark.timeout(300)
def test_keep_serves_the_console_after_the_report_until_ctrl_c(arm_bundle: Path, tmp_path: Path) -> None:
    """The console URL is in the first lines; `--keep` serves the run's review queue after the report; Ctrl-C
    stops everything."""
    model = arm_bundle
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    cmd = [sys.executable, "-m", "zeroproof", "run", "--duration", "6", "--rate", "150", "--keep"]
    cmd += ["--console-port", "0", "--model", str(model), "--out", str(tmp_path / "run")]
    proc = subprocess.Popen(
        cmd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 200
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("kept running") or time.monotonic() > deadline:
                break
        assert lines and lines[-1].startswith("kept running"), "".join(lines[-30:])
        [url_line] = [i for i, line in enumerate(lines) if line.startswith("console: http://127.0.0.1:")]
        assert url_line < 6  # among the first lines
        url = lines[url_line].split()[1]
        report = json.loads((tmp_path / "run" / "report.json").read_text())
        with urllib.request.urlopen(url + "queue", timeout=10) as resp:
            page = resp.read().decode()
        assert f'<strong id="match-count">{report["review_queue"]["pending"]}</strong>' in page
        with urllib.request.urlopen(url + "overview.json", timeout=10) as resp:
            overview = json.loads(resp.read())
        assert overview["pending_total"] == report["review_queue"]["pending"] > 0
        assert [v["model_version"] for v in overview["versions"]] == ["arm-ik-1"]
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 5  # broker, Redis, worker, monitor, console: all still up
        assert all(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    finally:
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=90)[0]
    assert proc.returncode == 0, rest[-2000:]
    _, alive = psutil.wait_procs(children, timeout=10)
    assert alive == []  # Ctrl-C stopped everything the run started
