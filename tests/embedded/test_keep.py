"""`zeroproof run` starts the review console (URL in its first lines); `--keep` keeps the stack up after the report,
so the run just made can be reviewed in the browser, until Ctrl-C stops everything it started."""

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


@pytest.mark.timeout(300)
def test_keep_serves_the_console_after_the_report_until_ctrl_c(tmp_path: Path) -> None:
    model = tmp_path / "arm.zpb"
    subprocess.run(
        [sys.executable, "-m", "zeroproof", "train-arm", "--out", str(model), "--seconds", "5", "--max-steps", "800"],
        check=True,
        capture_output=True,
        timeout=180,
    )
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
