"""``zeroproof run``: the whole system on one machine, with nothing to install by hand.

Starts (unless told to use existing ones) a Kafka-protocol broker (tansu) and Redis, makes sure the reference arm
model exists (trains it on first run), starts a worker and the monitor as child processes, produces robot-arm
events with a mid-run fault, shows live progress, and ends with a report (JSON, Markdown, PNG plot). Every process
it started is stopped at the end or on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

import orjson

from embedded.arm_events import ScenarioConfig, produce
from embedded.options import StackOptions, Timeline
from embedded.services import ManagedProcess, free_port, start_redis, start_tansu

#: kafka-python settings tansu needs (see shared notes): fast group joins, short fetch waits.
TANSU_CLIENT_ENV = {
    "ZEROPROOF_SESSION_TIMEOUT_MS": "6000",
    "ZEROPROOF_HEARTBEAT_INTERVAL_MS": "1000",
    "ZEROPROOF_FETCH_MAX_WAIT_MS": "50",
}


class Child:
    """A child process in its own process group, logging to a file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_event(self, event: str, timeout: float) -> bool:
        """Until the child logs ``event`` (a JSON log line) or exits; False on exit or timeout."""
        deadline = time.monotonic() + timeout
        needle = f'"event": "{event}"'
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), self.log_path.open(errors="replace") as f:
                if any(needle in line for line in f):
                    return True
            if not self.alive():
                return False
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()
        return self.proc.returncode


def _say(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def ensure_model(options: StackOptions, out: TextIO) -> Path:
    """Reuse the reference arm bundle, or train it once (at most ``train_seconds``)."""
    path = options.model_path
    if path.is_file():
        _say(out, f"model: reusing {path}")
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    _say(out, f"model: training the reference arm model (first run, <= {options.train_seconds:.0f} s) -> {path}")
    cmd = [
        sys.executable,
        "-m",
        "zeroproof",
        "train-arm",
        "--out",
        str(path),
        "--seconds",
        str(options.train_seconds),
        "--report",
        str(path.with_suffix(".eval.json")),
    ]
    subprocess.run(cmd, check=True)
    return path


@contextlib.contextmanager
def services(options: StackOptions, out: TextIO) -> Iterator[tuple[str, str]]:
    """Yield (bootstrap, redis_url): the ones named in the environment, or fresh local ones."""
    started: list[ManagedProcess] = []
    try:
        bootstrap = os.environ.get("ZEROPROOF_KAFKA_BOOTSTRAP")
        if bootstrap:
            _say(out, f"kafka: using {bootstrap}")
        else:
            broker = start_tansu(workdir=options.out_dir)
            started.append(broker)
            bootstrap = broker.extra["bootstrap"]
            _say(out, f"kafka: started tansu on {bootstrap}")
        redis_url = os.environ.get("ZEROPROOF_REDIS_URL")
        if redis_url:
            _say(out, "redis: using ZEROPROOF_REDIS_URL")
        else:
            redis = start_redis(workdir=options.out_dir)
            started.append(redis)
            redis_url = redis.extra["url"]
            _say(out, f"redis: started redis-server on port {redis.port}")
        yield bootstrap, redis_url
    finally:
        for proc in reversed(started):
            proc.stop()


def child_env(bootstrap: str, redis_url: str, extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(TANSU_CLIENT_ENV)
    env.update({"ZEROPROOF_KAFKA_BOOTSTRAP": bootstrap, "ZEROPROOF_REDIS_URL": redis_url, "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def monitor_env(options: StackOptions) -> dict[str, str]:
    """Windows and pending times scaled to a one-minute run, so alerts fire and resolve while you watch."""
    short = max(5.0, options.duration_s / 12)
    return {
        "ZEROPROOF_GROUP_ID": "zeroproof-monitor-embedded",
        "ZEROPROOF_SHORT_WINDOW": str(short),
        "ZEROPROOF_LONG_WINDOW": str(max(short * 4, options.duration_s)),
        "ZEROPROOF_BUCKET": "1",
        "ZEROPROOF_EVAL_INTERVAL": "1",
        "ZEROPROOF_ALLOWED_LATENESS": "1",
        "ZEROPROOF_COVERAGE_PENDING": "2",
        "ZEROPROOF_GAP_PENDING": "2",
        "ZEROPROOF_BOTTOM_RISE_PENDING": "2",
        "ZEROPROOF_CLEAR_FOR": "3",
        "ZEROPROOF_MIN_VOLUME": "50",
        "ZEROPROOF_BASELINE_MIN_VOLUME": "200",
        "ZEROPROOF_NO_DATA_AFTER": "15",
        "ZEROPROOF_MONITOR_LABEL": "site",
        "ZEROPROOF_METRICS_PORT": str(options.monitor_metrics_port),
    }


class LiveView(threading.Thread):
    """Follows zeroproof.stats and zeroproof.alerts, prints one progress line a second, keeps the timeline."""

    def __init__(
        self, bootstrap: str, out: TextIO, stats_topic: str = "zeroproof.stats", alerts_topic: str = "zeroproof.alerts"
    ) -> None:
        super().__init__(name="live-view", daemon=True)
        self.bootstrap = bootstrap
        self.out = out
        self.topics = (stats_topic, alerts_topic)
        self.timeline = Timeline()
        self.stop_event = threading.Event()
        self.started_at = time.time()
        self._bucket: dict[str, float] = {}

    def run(self) -> None:
        from kafka import KafkaConsumer

        consumer = KafkaConsumer(
            *self.topics,
            bootstrap_servers=self.bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            group_id=None,
            fetch_max_wait_ms=50,
        )
        last_print = time.time()
        try:
            while not self.stop_event.is_set():
                for tp, records in consumer.poll(timeout_ms=200).items():
                    for rec in records:
                        self._ingest(tp.topic, rec.value)
                now = time.time()
                if now - last_print >= 1.0:
                    self._flush(now)
                    last_print = now
            self._flush(time.time())
        finally:
            consumer.close()

    def _ingest(self, topic: str, raw: bytes) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if topic == self.topics[1]:
            msg["_seen_at"] = time.time() - self.started_at
            self.timeline.alerts.append(msg)
            state = msg.get("state", "?")
            _say(
                self.out,
                f"  ALERT {state.upper():8s} {msg.get('rule')} value={msg.get('value')} "
                f"threshold={msg.get('threshold')} model={msg.get('model_version')}",
            )
            return
        counts = msg.get("counts", {})
        for key in ("total", "bottom", "gap", "fallback", "rejected"):
            self._bucket[key] = self._bucket.get(key, 0) + counts.get(key, 0)
            self.timeline.totals[key] = self.timeline.totals.get(key, 0) + int(counts.get(key, 0))
        self._bucket["dlq"] = self._bucket.get("dlq", 0) + msg.get("dlq", 0)
        self.timeline.totals["dlq"] = self.timeline.totals.get("dlq", 0) + int(msg.get("dlq", 0))

    def _flush(self, now: float) -> None:
        b, self._bucket = self._bucket, {}
        total = b.get("total", 0)
        if not total and not b.get("dlq"):
            return
        bottom_rate = b.get("bottom", 0) / total if total else 0.0
        gap_rate = b.get("gap", 0) / total if total else 0.0
        point = {
            "t": now - self.started_at,
            "total": total,
            "bottom_rate": bottom_rate,
            "gap_rate": gap_rate,
            "coverage": 1 - bottom_rate - gap_rate,
            "fallback": b.get("fallback", 0),
            "dlq": b.get("dlq", 0),
        }
        self.timeline.points.append(point)
        firing = self.firing()
        _say(
            self.out,
            f"  t={point['t']:5.1f}s  {total:6.0f} msg/s  coverage={point['coverage']:.3f}  "
            f"gap={gap_rate:.3f}  ⊥={bottom_rate:.3f}  fallbacks={point['fallback']:.0f}  "
            f"dlq={point['dlq']:.0f}  alerts firing={len(firing)}",
        )

    def firing(self) -> set[tuple[str, str]]:
        state: dict[tuple[str, str], str] = {}
        for a in self.timeline.alerts:
            state[(str(a.get("rule")), str(a.get("model_version")))] = str(a.get("state"))
        return {k for k, v in state.items() if v == "firing"}


def console_port(wanted: int) -> int:
    """``wanted`` if it is free on loopback, else any free port (a second run, or something else on 8080)."""
    import socket

    if wanted:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s, contextlib.suppress(OSError):
            s.bind(("127.0.0.1", wanted))
            return wanted
    return free_port()


def start_console(options: StackOptions, bootstrap: str, redis_url: str, out: TextIO) -> tuple[Child, str]:
    """The review console on loopback, with the monitor's windows (same numbers as the monitor)."""
    port = console_port(options.console_port)
    env = child_env(bootstrap, redis_url, {**monitor_env(options), "ZEROPROOF_CONSOLE_PORT": str(port)})
    env.pop("ZEROPROOF_CONSOLE_HOST", None)  # loopback: no token needed, nothing exposed
    # Niced: on a small machine its start-up (imports, replaying the stats topic) must not delay the worker's.
    cmd = [sys.executable, "-m", "console"]
    if shutil.which("nice"):
        cmd = ["nice", "-n", "10", *cmd]
    child = Child("console", cmd, env, options.out_dir / "console.log")
    url = f"http://127.0.0.1:{port}/"
    _say(out, f"console: {url}  (overview and review queue of this run; log {child.log_path})")
    return child, url


def wait_until_stopped(out: TextIO, url: str) -> None:
    """``--keep``: everything stays up until Ctrl-C (the caller stops it all then)."""
    _say(out, f"kept running: console {url} , broker, Redis, worker and monitor; press Ctrl-C to stop")

    def _term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM (a process manager, `timeout`) ends it like Ctrl-C: everything stopped

    signal.signal(signal.SIGTERM, _term)
    stop = threading.Event()
    while not stop.wait(3600):
        pass


def run_stack(options: StackOptions, out: TextIO = sys.stdout) -> int:
    from embedded.report import build_report, count_outputs, write_report

    options.out_dir.mkdir(parents=True, exist_ok=True)
    _say(out, f"zeroproof run: embedded stack for {options.duration_s:.0f} s; files in {options.out_dir}")
    model = ensure_model(options, out)
    children: list[Child] = []
    live: LiveView | None = None
    interrupted = False
    kept = False  # --keep: the report is out and Ctrl-C is the normal end
    counts: dict[str, int] = {}
    try:
        with services(options, out) as (bootstrap, redis_url):
            worker_env = child_env(
                bootstrap,
                redis_url,
                {
                    "ZEROPROOF_MODEL": str(model),
                    "ZEROPROOF_WORKER_ID": "embedded-worker-1",
                    "ZEROPROOF_METRICS_PORT": str(options.worker_metrics_port),
                },
            )
            children.append(
                Child("worker", [sys.executable, "-m", "workers"], worker_env, options.out_dir / "worker.log")
            )
            children.append(
                Child(
                    "monitor",
                    [sys.executable, "-m", "monitoring"],
                    child_env(bootstrap, redis_url, monitor_env(options)),
                    options.out_dir / "monitor.log",
                )
            )
            console, console_url = start_console(options, bootstrap, redis_url, out)
            children.append(console)
            # Events start once the worker serves and the monitor listens: produced earlier, the fault burst would
            # reach them as a backlog, squeezed into a moment of event time too short to fire an alert.
            for child, ready in zip(children, ("partitions_assigned", "state rebuilt"), strict=False):
                if not child.wait_for_event(ready, timeout=120):
                    _say(out, f"{child.name} is not ready (see {child.log_path}); producing anyway")
            _say(out, "worker serving, monitor listening")
            live = LiveView(bootstrap, out)
            live.start()
            scenario = ScenarioConfig(
                arms=options.arms, rate_per_second=options.rate_per_second, duration_s=options.duration_s
            )
            _say(
                out,
                f"producer: {options.arms} arms, {options.rate_per_second:.0f} events/s, fault burst at "
                f"{scenario.fault_start * scenario.duration_s:.0f}-{scenario.fault_end * scenario.duration_s:.0f} s",
            )
            produce(bootstrap, "zeroproof.inputs", scenario, counts=counts)
            for child in children:
                if not child.alive():
                    _say(out, f"{child.name} exited early (code {child.proc.returncode}); see {child.log_path}")
            expected = sum(v for k, v in counts.items() if not k.startswith("malformed"))
            outputs = count_outputs(bootstrap, expected, timeout_s=options.drain_timeout_s)
            time.sleep(3.0)  # let the monitor see the last stats and resolve what recovered
            live.stop_event.set()
            live.join(timeout=10)
            if not options.keep:
                for child in reversed(children):
                    child.stop()
            report = build_report(options, counts, outputs, live.timeline, redis_url, bootstrap)
            paths = write_report(report, live.timeline, options.out_dir)
            _say(out, report["summary_text"])
            _say(out, f"report: {paths['markdown']}  plot: {paths['plot']}  json: {paths['json']}")
            if options.keep:
                kept = True
                wait_until_stopped(out, console_url)
    except KeyboardInterrupt:
        interrupted = not (options.keep and kept)
        _say(out, "interrupted: stopping everything this run started" if interrupted else "stopping everything")
    finally:
        if live is not None:
            live.stop_event.set()
        for child in reversed(children):
            child.stop()
    (options.out_dir / "options.json").write_text(json.dumps(asdict(options), default=str, indent=2))
    return 130 if interrupted else 0
