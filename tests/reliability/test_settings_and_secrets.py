"""Secrets and settings as an operator meets them (issue 12 §4), through real processes.

Before the fixes: ``redis://host/0?password=...`` was logged in full by the ``starting`` line; a password with an
unencoded ``#`` or ``/`` was logged and echoed by ``startup_failed`` and ``zeroproof review list``; port 99999
gave a traceback; a thresholds file with ``tau_train < tau_infer`` was reported as pydantic's help URL; SIGHUP
during start-up retries killed the worker without a line; the monitor could not reach a secured cluster and
sent no credentials to Alertmanager.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer

from harness.load import wait_until
from harness.monitor import read_topic, unique, wall_clock_monitor_env
from harness.services import create_topics, free_port, start_redis, tansu_binary, wait_for_port
from harness.worker import POLE, REPO, TopicReader, Topics, WorkerProc, msg, produce, worker_env
from monitoring.simulate import encode
from service.wire import Counts, StatsMessage
from tests.reliability.figures import record
from tests.reliability.test_security import _tls_files, run_worker
from tests.workers.test_review_cli import review

pytestmark = [pytest.mark.integration]

PW = "Zr-q9Wv7-pw"
AM_USER, AM_PW = "zp", "Zr-am-pw-4d5e6f"
#: bcrypt of AM_PW (Alertmanager's web config wants a hash; computed once with the bcrypt package, cost 4)
AM_PW_BCRYPT = "$2b$04$C.i.d2ATY/oE2Rn9B71TleENkITeBOUuTFhjGk3vdwS/u2l9eNGBC"


@pytest.mark.timeout(150)
def test_redis_passwords_never_printed_whatever_the_url_shape(
    kafka_bootstrap: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    server = start_redis(password=PW)
    figures: dict[str, object] = {}
    try:
        # 1. the password as a query parameter works, and the starting line shows it masked
        url = f"redis://127.0.0.1:{server.port}/0?password={PW}"
        w = WorkerProc(worker_env(kafka_bootstrap, url, bundle, topics), tmp_path / "query.log")
        reader = TopicReader(kafka_bootstrap, topics.outputs)
        try:
            produce(kafka_bootstrap, topics.inputs, [(b"arm", msg("pole", [POLE]))])
            reader.read_until(lambda rs: len(rs) >= 1, 60)
            assert reader.json()[0]["status"] == "bottom"
            starting = w.wait_event("starting", 5)
            assert starting["settings"]["redis_url"] == f"redis://127.0.0.1:{server.port}/0?password=***"
            assert w.terminate() == 0
            assert PW not in w.log_path.read_text()
        finally:
            w.kill()
            reader.close()
        # 2. shapes that cannot be parsed safely: one line, exit 2, no part of the password, for worker and CLI
        lines = {}
        for name, bad in {
            "unencoded_hash": f"redis://:Qx9#{PW}@127.0.0.1:{server.port}/0",
            "unencoded_slash": f"redis://:Qx9/{PW}@127.0.0.1:{server.port}/0",
            "port_99999": f"redis://:{PW}@127.0.0.1:99999/0",
        }.items():
            env = worker_env(kafka_bootstrap, bad, bundle, topics)
            r = run_worker(env)
            cli = review({"ZEROPROOF_REDIS_URL": bad}, "list")
            for proc in (r, cli):
                out = proc.stdout + proc.stderr
                assert proc.returncode == 2, (name, out[-2000:])
                assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in out, (name, out)
                assert "ZEROPROOF_REDIS_URL" in proc.stderr
                assert PW not in out and "Qx9" not in out, (name, out)
            lines[name] = r.stderr.strip()
        figures["refused_urls"] = lines
        record("secrets_redis_url_shapes", figures)
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_thresholds_file_errors_name_the_file_at_start_up_and_on_reload(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    bad = tmp_path / "thresholds.json"
    bad.write_text(json.dumps({"tau_infer": 1e-3, "tau_train": 1e-4}))
    env = worker_env(kafka_bootstrap, redis_url, bundle, topics, thresholds_file=str(bad))
    r = run_worker(env)
    line = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(bad) in line and "tau_train (0.0001) must be >= tau_infer (0.001)" in line, line
    assert "errors.pydantic.dev" not in r.stderr
    bad.write_text(json.dumps({"tau_infer": 1e-6, "tau_train": 1e-4}))
    w = WorkerProc(env, tmp_path / "w.log")
    try:
        w.wait_event("partitions_assigned", 60)
        bad.write_text(json.dumps({"tau_infer": 1e-2, "tau_train": 1e-3}))
        w.proc.send_signal(signal.SIGHUP)
        failed = w.wait_event("reload_failed", 20)
        assert str(bad) in failed["error"] and "must be >= tau_infer" in failed["error"], failed
        assert w.proc.poll() is None
        assert w.terminate() == 0
    finally:
        w.kill()
    record("settings_thresholds_file", {"startup_exit": r.returncode, "startup_line": line, "reload": failed["error"]})


@pytest.mark.timeout(120)
def test_sighup_during_start_up_retries_is_kept_for_later(
    kafka_bootstrap: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    port = free_port()
    env = worker_env(kafka_bootstrap, f"redis://127.0.0.1:{port}/0", bundle, topics, startup_max_backoff_s="0.5")
    w = WorkerProc(env, tmp_path / "w.log")
    server = None
    try:
        w.wait_event("redis_unreachable", 60)
        for _ in range(3):
            w.proc.send_signal(signal.SIGHUP)
            time.sleep(0.2)
        w.wait_event("reload_requested_during_startup", 10)
        assert w.proc.poll() is None, "SIGHUP during start-up killed the worker"
        server = start_redis(port=port)
        w.wait_event("partitions_assigned", 60)
        w.wait_event("model_reloaded", 20)  # the request was carried over and served once running
        assert w.terminate() == 0
    finally:
        w.kill()
        if server is not None:
            server.stop()


def _alertmanager(tmp_path: Path, crt: Path, key: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        pytest.skip("Alertmanager not installed (apt-get install prometheus-alertmanager; .ci/run does)")
    port = free_port()
    (tmp_path / "am.yml").write_text('route:\n  receiver: "null"\nreceivers:\n  - name: "null"\n')
    (tmp_path / "web.yml").write_text(
        f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\nbasic_auth_users:\n  {AM_USER}: {AM_PW_BCRYPT}\n"
    )
    cmd = [binary, f"--config.file={tmp_path / 'am.yml'}", f"--storage.path={tmp_path / 'am-data'}"]
    cmd += [
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
        f"--web.config.file={tmp_path / 'web.yml'}",
    ]
    proc = subprocess.Popen(cmd, stdout=(tmp_path / "am.log").open("wb"), stderr=subprocess.STDOUT)
    wait_for_port(port, proc=proc)
    return proc, port


@pytest.mark.timeout(180)
def test_monitor_over_kafka_tls_posts_to_alertmanager_with_basic_auth_and_a_ca(tmp_path: Path) -> None:
    """The monitor's Kafka TLS settings (the worker's own definition) against tansu behind a TLS-terminating
    proxy, and its Alertmanager credentials against a real Alertmanager that requires HTTPS and basic auth."""
    import ssl

    from tests.reliability.proxy import TlsTerminatingProxy

    ca, crt, key = _tls_files(tmp_path)
    am, am_port = _alertmanager(tmp_path, crt, key)
    real = free_port()
    proxy = TlsTerminatingProxy(real, str(crt), str(key))
    cmd = [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{real}"]
    cmd += ["--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}", "--storage-engine", "memory://tansu/"]
    broker = subprocess.Popen(cmd, stdout=(tmp_path / "tansu.log").open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path)
    tls = {"security_protocol": "SSL", "ssl_cafile": str(ca)}
    bootstrap = f"127.0.0.1:{proxy.port}"
    mon: subprocess.Popen[bytes] | None = None
    producer: KafkaProducer | None = None
    try:
        wait_for_port(real, proc=broker)
        proxy.start()
        stats, alerts = unique("stats"), unique("alerts")
        create_topics(bootstrap, {stats: 1, alerts: 1}, **tls)
        env = wall_clock_monitor_env(
            bootstrap,
            stats,
            alerts,
            free_port(),
            min_volume="100",
            kafka_security_protocol="SSL",
            kafka_ssl_cafile=str(ca),
            alertmanager_url=f"https://127.0.0.1:{am_port}",
            alertmanager_username=AM_USER,
            alertmanager_password=AM_PW,
            alertmanager_ca_file=str(ca),
            alertmanager_resend="2s",
        )
        mon = subprocess.Popen([sys.executable, "-m", "monitoring"], env=env, cwd=REPO, stderr=subprocess.PIPE)
        producer = KafkaProducer(bootstrap_servers=bootstrap, **tls)

        ctx = ssl.create_default_context(cafile=str(ca))
        basic = "Basic " + base64.b64encode(f"{AM_USER}:{AM_PW}".encode()).decode()

        def in_alertmanager() -> list[dict[str, Any]]:
            req = urllib.request.Request(f"https://127.0.0.1:{am_port}/api/v2/alerts", headers={"Authorization": basic})
            with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                return list(json.loads(resp.read()))

        def publish_and_check() -> bool:
            now = time.time()
            stats_msg = StatsMessage(
                worker_id="w1",
                model_version="v-tls",
                tau_infer=1e-6,
                tau_train=1e-4,
                window_start=now - 0.2,
                window_end=now,
                counts=Counts(total=100, bottom=30),
            )
            assert producer is not None
            producer.send(stats, key=b"w1", value=encode(stats_msg)).get(timeout=10)
            return any(a["labels"]["model_version"] == "v-tls" for a in in_alertmanager())

        assert wait_until(publish_and_check, 90, every=0.2), "no alert reached Alertmanager"
        fired = read_topic(bootstrap, alerts, idle=0.5, **tls)
        assert any(a["state"] == "firing" and a["model_version"] == "v-tls" for a in fired)
        mon.send_signal(signal.SIGTERM)
        assert mon.wait(30) == 0
        err = mon.stderr.read().decode() if mon.stderr else ""
        assert AM_PW not in err and "Traceback" not in err
        assert '"alertmanager_url": "https://127.0.0.1:' in err and '"alertmanager_password": "**********"' in err
        record(
            "monitor_tls_and_alertmanager_auth",
            {
                "kafka": "TLS (tansu behind a TLS-terminating proxy), CA from ZEROPROOF_KAFKA_SSL_CAFILE",
                "alertmanager": "real Alertmanager, HTTPS with our CA, basic auth required",
                "alert_in_alertmanager": True,
                "alert_on_topic": True,
                "password_in_monitor_log": False,
            },
        )
    finally:
        if producer is not None:
            producer.close()
        if mon is not None and mon.poll() is None:
            mon.kill()
            mon.wait(10)
        proxy.close()
        broker.terminate()
        broker.wait(10)
        am.terminate()
        am.wait(10)
