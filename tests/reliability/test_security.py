"""Security: verified bundles only, Redis AUTH and TLS, Kafka SASL/TLS pass-through, secrets never in logs or
metrics, a configurable metrics bind address, and an explicit confirmation before a replay.

Already covered elsewhere (not repeated): bundle checksum / no-pickle at the library level
(tests/zeroproof/export/test_bundle.py), settings redaction (tests/workers/test_settings.py), Redis AUTH with
the right password and a redacted URL in the start-up log (tests/workers/test_integration.py), replay refusing
without --yes on a non-terminal (tests/workers/test_review_cli.py).
"""

from __future__ import annotations

import json
import os
import pty
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis

from harness.load import scrape_text, wait_until
from harness.services import free_port, start_redis, wait_for_port
from harness.worker import POLE, REPO, TopicReader, Topics, WorkerProc, known_pole_bundle, msg, produce, worker_env
from service.review import RedisReviewStore
from tests.reliability.figures import record
from tests.workers.test_review_cli import item
from workers.settings import WorkerSettings
from workers.transport import kafka as kafka_transport

REDIS_PW = "Zr-redis-pw-7f3a9c"
WRONG_PW = "Zr-wrong-pw-1b2c3d"
SASL_PW = "Zr-sasl-pw-5e6f7a"
SSL_PW = "Zr-sslkey-pw-8b9c0d"
SECRETS = (REDIS_PW, WRONG_PW, SASL_PW, SSL_PW)


def run_worker(env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "workers"], env=full, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


# --- bundles --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_tampered_bundle_refuses_to_start_with_one_line(tmp_path: Path) -> None:
    good = known_pole_bundle(tmp_path / "good.zpb")
    raw = bytearray(good.read_bytes())
    raw[-3] ^= 0x01  # one bit of the weights
    tampered = tmp_path / "tampered.zpb"
    tampered.write_bytes(bytes(raw))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(b"PK\x03\x04" + b"\x00" * 60)  # looks like a zip (TorchScript/pickle container), isn't
    import torch

    pickled = tmp_path / "pickled.pt"
    torch.save({"model_state_dict": {}}, pickled)  # a pickle inside a zip: must never be unpickled
    base = {"ZEROPROOF_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}", "ZEROPROOF_REDIS_URL": "redis://127.0.0.1:1/0"}
    results: dict[str, Any] = {}
    for name, path, extra in (
        ("tampered_weights", tampered, {}),
        ("pinned_checksum_mismatch", good, {"ZEROPROOF_MODEL_SHA256": "ab" * 32}),
        ("pickle_file", pickled, {}),
        ("fake_zip", evil, {}),
    ):
        t0 = time.monotonic()
        r = run_worker({**base, "ZEROPROOF_MODEL": str(path), **extra})
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (name, r.returncode, r.stderr[-2000:])
        assert len(lines) == 1 and "Traceback" not in r.stderr, (name, r.stderr[-2000:])
        assert path.name in lines[0], lines[0]
        line = lines[0].replace(str(tmp_path), "<tmp>")
        results[name] = {"exit_code": r.returncode, "stderr": line, "s": round(time.monotonic() - t0, 1)}
    assert "checksum mismatch" in results["tampered_weights"]["stderr"]
    assert "pinned" in results["pinned_checksum_mismatch"]["stderr"]
    record("security_bundles", results)


# --- Redis AUTH, secrets in logs and metrics --------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_secrets_never_in_logs_or_metrics_with_auth_and_sasl_set(
    kafka_bootstrap: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    server = start_redis(password=REDIS_PW)
    port = server.port
    secret_env = {"kafka_sasl_password": SASL_PW, "kafka_ssl_password": SSL_PW, "log_level": "debug"}
    wrong: WorkerProc | None = None
    right: WorkerProc | None = None
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    try:
        # 1. the wrong password: retries with clear lines, never says the password
        wrong = WorkerProc(
            worker_env(
                kafka_bootstrap,
                f"redis://:{WRONG_PW}@127.0.0.1:{port}/0",
                bundle,
                topics,
                startup_max_backoff_s="0.5",
                **secret_env,
            ),
            tmp_path / "wrong.log",
        )
        ev = wrong.wait_event("redis_unreachable", 40)
        assert wait_until(lambda: len([e for e in wrong.events() if e.get("event") == "redis_unreachable"]) >= 3, 20)
        metrics_wrong = scrape_text(wrong.metrics_port)
        assert wrong.terminate(20) == 0
        # 2. the right password in the URL (AUTH), SASL and TLS-key passwords set: a ⊥ record goes through
        right = WorkerProc(
            worker_env(kafka_bootstrap, f"redis://:{REDIS_PW}@127.0.0.1:{port}/0", bundle, topics, **secret_env),
            tmp_path / "right.log",
        )
        produce(kafka_bootstrap, topics.inputs, [(b"k", msg("pole", [POLE])), (b"k", msg("fine", [0.1]))])
        reader.read_until(lambda rs: len(rs) >= 2, 60)
        assert {o["id"]: o["status"] for o in reader.json()} == {"pole": "bottom", "fine": "ok"}
        r = redis.Redis(port=port, password=REDIS_PW)
        assert RedisReviewStore(r, topics.redis_prefix).pending_ids() == ["pole"]  # written through AUTH
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port, password=WRONG_PW).ping()
        metrics_right = scrape_text(right.metrics_port)
        assert right.terminate(30) == 0
        texts = {
            "wrong.log": wrong.log_path.read_text(errors="replace"),
            "right.log": right.log_path.read_text(errors="replace"),
            "metrics_wrong": metrics_wrong,
            "metrics_right": metrics_right,
        }
        leaks = {(name, s) for name, t in texts.items() for s in SECRETS if s in t}
        assert not leaks, leaks
        assert "redis://:***@127.0.0.1" in texts["right.log"]
        record(
            "security_secrets",
            {
                "secrets_checked": len(SECRETS),
                "places_checked": sorted(texts),
                "bytes_checked": sum(len(t) for t in texts.values()),
                "log_level": "debug",
                "leaks": len(leaks),
                "wrong_password_error": ev.get("error"),
                "auth_write_ok": True,
            },
        )
    finally:
        for w in (wrong, right):
            if w is not None:
                w.kill()
        reader.close()
        server.stop()


# --- Redis TLS ------------------------------------------------------------------------------------------------


def _tls_files(d: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not on PATH")
    ca_key, ca, key, csr, crt = (d / n for n in ("ca.key", "ca.crt", "srv.key", "srv.csr", "srv.crt"))
    run = lambda *a: subprocess.run([openssl, *a], check=True, capture_output=True)  # noqa: E731
    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(ca_key),
        "-out",
        str(ca),
        "-days",
        "1",
        "-subj",
        "/CN=zeroproof-test-ca",
    )
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
    ext = d / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run(
        "x509",
        "-req",
        "-in",
        str(csr),
        "-CA",
        str(ca),
        "-CAkey",
        str(ca_key),
        "-CAcreateserial",
        "-out",
        str(crt),
        "-days",
        "1",
        "-extfile",
        str(ext),
    )
    return ca, crt, key


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_redis_tls_and_auth_settings_work(tmp_path: Path) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server not on PATH")
    ca, crt, key = _tls_files(tmp_path)
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(crt),
            "--tls-key-file",
            str(key),
            "--tls-ca-cert-file",
            str(ca),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            REDIS_PW,
            "--save",
            "",
            "--dir",
            str(tmp_path),
        ],
        stdout=(tmp_path / "redis.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, proc=proc)
        s = WorkerSettings(redis_url=f"rediss://127.0.0.1:{port}/0", redis_ssl_ca_file=ca, redis_password=REDIS_PW)
        store = RedisReviewStore(s.redis_client(), "zp-tls:review")
        store.ping()
        assert store.record_batch([item("tls-1", 1)]) == 1
        assert store.pending_ids() == ["tls-1"]
        # without the CA the server's certificate is refused; a plain connection to the TLS port fails too
        no_ca = RedisReviewStore(
            WorkerSettings(redis_url=f"rediss://127.0.0.1:{port}/0", redis_password=REDIS_PW).redis_client()
        )
        with pytest.raises(Exception, match=r"(?i)certificate|ssl"):
            no_ca.ping()
        plain = RedisReviewStore(
            WorkerSettings(
                redis_url=f"redis://127.0.0.1:{port}/0", redis_password=REDIS_PW, redis_timeout_s=1.0
            ).redis_client()
        )
        with pytest.raises(Exception):  # noqa: B017 - any refusal will do
            plain.ping()
        record("security_redis_tls", {"tls_with_ca": "ok", "tls_without_ca": "refused", "plaintext_to_tls": "refused"})
    finally:
        proc.kill()
        proc.wait(5)


# --- Kafka SASL/TLS pass-through --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [("PLAINTEXT", None), ("SSL", None), ("SASL_PLAINTEXT", "PLAIN"), ("SASL_SSL", "SCRAM-SHA-512")],
)
def test_kafka_security_settings_reach_kafka_python(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, protocol: str, mechanism: str | None
) -> None:
    """Both clients get exactly the security options the settings name; secrets are unwrapped only there."""
    files = {n: tmp_path / n for n in ("ca.pem", "cert.pem", "key.pem")}
    for f in files.values():
        f.write_text("x")
    s = WorkerSettings(
        kafka_bootstrap="127.0.0.1:1",
        kafka_security_protocol=protocol,
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="svc-zeroproof",
        kafka_sasl_password=SASL_PW,
        kafka_ssl_cafile=files["ca.pem"],
        kafka_ssl_certfile=files["cert.pem"],
        kafka_ssl_keyfile=files["key.pem"],
        kafka_ssl_password=SSL_PW,
        kafka_ssl_check_hostname=False,
    )
    seen: dict[str, dict[str, Any]] = {}

    class Capture:
        def __init__(self, name: str) -> None:
            self.name = name

        def __call__(self, **kwargs: Any) -> object:
            seen[self.name] = kwargs
            return object()

    monkeypatch.setattr(kafka_transport, "KafkaConsumer", Capture("consumer"))
    monkeypatch.setattr(kafka_transport, "KafkaProducer", Capture("producer"))
    kafka_transport.KafkaConsumerTransport(s)
    kafka_transport.KafkaProducerTransport(s)
    tls = protocol in ("SSL", "SASL_SSL")
    sasl = protocol.startswith("SASL")
    for kwargs in seen.values():
        assert kwargs["security_protocol"] == protocol
        assert kwargs.get("ssl_cafile") == (str(files["ca.pem"]) if tls else None)
        assert kwargs.get("ssl_certfile") == (str(files["cert.pem"]) if tls else None)
        assert kwargs.get("ssl_keyfile") == (str(files["key.pem"]) if tls else None)
        assert kwargs.get("ssl_password") == (SSL_PW if tls else None)
        assert kwargs.get("ssl_check_hostname") == (False if tls else None)
        assert kwargs.get("sasl_mechanism") == mechanism
        assert kwargs.get("sasl_plain_username") == ("svc-zeroproof" if sasl else None)
        assert kwargs.get("sasl_plain_password") == (SASL_PW if sasl else None)
    assert set(seen) == {"consumer", "producer"}
    assert SASL_PW not in repr(s) and SSL_PW not in str(s.redacted())


def test_sasl_without_mechanism_is_refused() -> None:
    from service.settings import SettingsError
    from workers.settings import load_settings

    with pytest.raises(SettingsError, match="MECHANISM"):
        load_settings([], kafka_security_protocol="SASL_SSL")


# --- metrics bind address -------------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_metrics_bind_address_is_configurable(bundle: Path, tmp_path: Path) -> None:
    """``ZEROPROOF_METRICS_HOST`` (as for the monitor): a worker told to bind 127.0.0.1 must not listen on all
    interfaces. The endpoint is up before the worker reaches Kafka/Redis, so none are needed here."""
    env = {
        "ZEROPROOF_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
        "ZEROPROOF_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "ZEROPROOF_MODEL": str(bundle),
        "ZEROPROOF_METRICS_HOST": "127.0.0.1",
    }
    w = WorkerProc(env, tmp_path / "w.log", create_input_topic=False)  # there is no broker
    try:
        assert wait_until(lambda: bool(_listening(w.proc.pid, w.metrics_port)) or w.proc.poll() is not None, 60)
        addrs = _listening(w.proc.pid, w.metrics_port)
        assert w.proc.poll() is None, w.log_tail()
        record("security_metrics_bind", {"requested": "127.0.0.1", "listening_on": sorted(addrs)})
        assert addrs == {"127.0.0.1"}, addrs
    finally:
        w.kill()


def _listening(pid: int, port: int) -> set[str]:
    try:
        conns = psutil.Process(pid).net_connections(kind="inet")
    except psutil.Error:
        return set()
    return {c.laddr.ip for c in conns if c.status == psutil.CONN_LISTEN and c.laddr.port == port}


# --- replay confirmation --------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(120)
def test_replay_asks_on_a_terminal_and_only_yes_replays(redis_url: str, kafka_bootstrap: str) -> None:
    topics = Topics()
    store = RedisReviewStore(redis.Redis.from_url(redis_url), topics.redis_prefix)
    store.record_batch([item("r1", 1)])
    env = {
        "ZEROPROOF_REDIS_URL": redis_url,
        "ZEROPROOF_REDIS_KEY_PREFIX": topics.redis_prefix,
        "ZEROPROOF_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "ZEROPROOF_INPUT_TOPIC": topics.inputs,
    }
    answers: dict[str, Any] = {}
    for answer in ("", "n", "maybe", "y"):
        code, out = _review_on_tty(env, answer, "replay", "r1")
        answers[answer or "<enter>"] = {"exit": code, "prompted": "[y/N]" in out}
        assert "[y/N]" in out, out
    assert [a["exit"] for a in answers.values()] == [1, 1, 1, 0], answers
    [rec] = store.find("r1")
    assert rec.replays == 1  # only the explicit "y" replayed
    reader = TopicReader(kafka_bootstrap, topics.inputs)
    try:
        reader.read_until(lambda rs: len(rs) >= 1, 30)
        time.sleep(0.5)
        reader.read_until(lambda rs: False, 1.0)
        assert len(reader.records) == 1
    finally:
        reader.close()
    record("security_replay_confirmation", {"answers": answers, "replays_recorded": rec.replays})


def _review_on_tty(env: dict[str, str], answer: str, *args: str) -> tuple[int, str]:
    """Run ``zeroproof review ...`` with a pseudo-terminal as stdin, type ``answer`` + Enter when prompted."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("ZEROPROOF_")}
    full.update(env)
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "zeroproof", "review", *args],
        env=full,
        cwd=REPO,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        close_fds=True,
    )
    os.close(slave)
    out = b""
    sent = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        import select

        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                chunk = b""
            out += chunk
            if not sent and b"[y/N]" in out:
                os.write(master, answer.encode() + b"\n")
                sent = True
            if not chunk and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    code = proc.wait(30)
    os.close(master)
    return code, out.decode(errors="replace")


# --- Kafka TLS --------------------------------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.timeout(150)
def test_worker_over_kafka_tls(redis_url: str, topics: Topics, tmp_path: Path) -> None:
    """The worker's Kafka TLS settings against a real TLS endpoint: tansu behind a TLS-terminating proxy that it
    advertises, so every connection (bootstrap, group coordinator, fetch, produce) is TLS. With the CA the worker
    serves end to end; without it the certificate is refused and nothing is consumed or committed."""
    from harness.services import tansu_binary
    from tests.reliability.proxy import TlsTerminatingProxy

    ca, crt, key = _tls_files(tmp_path)
    real = free_port()
    proxy = TlsTerminatingProxy(real, str(crt), str(key))
    cmd = [str(tansu_binary()), "broker", "--listener-url", f"tcp://127.0.0.1:{real}"]
    cmd += ["--advertised-listener-url", f"tcp://127.0.0.1:{proxy.port}", "--storage-engine", "memory://tansu/"]
    broker = subprocess.Popen(cmd, stdout=(tmp_path / "tansu.log").open("wb"), stderr=subprocess.STDOUT, cwd=tmp_path)
    tls = {"security_protocol": "SSL", "ssl_cafile": str(ca)}
    bootstrap = f"127.0.0.1:{proxy.port}"
    workers: list[WorkerProc] = []
    reader: TopicReader | None = None
    try:
        wait_for_port(real, proc=broker)
        proxy.start()
        bundle = known_pole_bundle(tmp_path / "kp.zpb")
        n = 40
        produce(bootstrap, topics.inputs, ((b"arm", msg(i, [POLE if i % 10 == 0 else 0.1])) for i in range(n)), **tls)

        # without the CA: the broker's certificate is refused, the worker keeps retrying and serves nothing
        no_ca = worker_env(bootstrap, redis_url, bundle, topics, kafka_security_protocol="SSL")
        no_ca["ZEROPROOF_STARTUP_MAX_BACKOFF_S"] = "1"
        refused = WorkerProc(no_ca, tmp_path / "no-ca.log", create_input_topic=False)  # produced to above
        workers.append(refused)
        failure = refused.wait_event("kafka_unreachable", 60)
        assert refused.proc.poll() is None, refused.log_tail()
        refused.kill()
        assert "certificate verify failed" in refused.log_path.read_text(errors="replace"), refused.log_tail()

        env = worker_env(bootstrap, redis_url, bundle, topics, kafka_security_protocol="SSL", kafka_ssl_cafile=str(ca))
        w = WorkerProc(env, tmp_path / "tls.log", create_input_topic=False)
        workers.append(w)
        reader = TopicReader(bootstrap, topics.outputs, **tls)
        reader.read_until(lambda rs: len({json.loads(r.value)["id"] for r in rs}) >= n, 90)
        outs = {o["id"]: o for o in reader.json()}
        assert set(outs) == {str(i) for i in range(n)}, w.log_tail()
        assert {i for i, o in outs.items() if o["status"] == "bottom"} == {str(i) for i in range(0, n, 10)}
        assert w.terminate(30) == 0
        record(
            "kafka_tls",
            {
                "how": "tansu behind a TLS-terminating proxy it advertises (throw-away CA, certificate for 127.0.0.1)",
                "outputs_over_tls": len(outs),
                "tls_handshakes_at_proxy": proxy.handshakes,
                "without_ca": failure.get("error", "")[:160],
            },
        )
    finally:
        for wp in workers:
            wp.kill()
        if reader is not None:
            reader.close()
        proxy.close()
        broker.terminate()
        broker.wait(10)
