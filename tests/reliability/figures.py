"""Figures for the reliability suite: each scenario prints its figures and merges them into one JSON file.

Tests may run in any order (or alone), so each writes only its own section under a file lock; the rest of
the file is kept. ``ZEROPROOF_RELIABILITY_JSON`` redirects the file (the default is the committed copy).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_PATH = REPO / "bench" / "results" / "reliability.json"


def results_path() -> Path:
    return Path(os.environ.get("ZEROPROOF_RELIABILITY_JSON", str(DEFAULT_PATH)))


def worker_kafka_client() -> str:
    """The transport the workers of this run use (``ZEROPROOF_TEST_KAFKA_CLIENT``, else the worker's default)."""
    from workers.settings import WorkerSettings

    return os.environ.get("ZEROPROOF_TEST_KAFKA_CLIENT") or str(WorkerSettings.model_fields["kafka_client"].default)


def record(section: str, figures: dict[str, Any]) -> dict[str, Any]:
    """Print ``figures`` and store them as ``scenarios[section]`` (atomic replace under an flock)."""
    stamped = {
        **figures,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "worker_kafka_client": worker_kafka_client(),
    }
    print(f"\nRELIABILITY {section}: {json.dumps(stamped, sort_keys=True)}")
    path = results_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = Path(tempfile.gettempdir()) / "zeroproof-reliability-json.lock"  # never unlinked: one inode for all
    with lock.open("a") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        doc: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            doc = json.loads(path.read_text())
        if not isinstance(doc, dict):
            doc = {}
        doc["suite"] = "tests/reliability"
        doc["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
        doc["note"] = (
            "Broker (tansu, memory engine), Redis, workers and the test itself share the same CPU cores; "
            "timings vary run to run. Each section is rewritten by its own test."
        )
        doc.setdefault("scenarios", {})[section] = stamped
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)
    return stamped
