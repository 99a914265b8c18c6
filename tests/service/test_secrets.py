"""Secrets never appear in what the services print (issue 12 §4): URL redaction for every shape a user writes,
one-line refusals that never quote the URL, scrubbing of log events, the shared connection settings."""

from __future__ import annotations

import json
from typing import Any

import pytest
import structlog
from pydantic import SecretStr

from monitoring.settings import MonitorSettings
from service import secrets
from service.alertmanager import AlertmanagerSettings
from service.kafka import KafkaConnectionSettings
from service.redis import check_redis_url
from service.secrets import redact_url, scrub, url_secrets
from workers.settings import SettingsError, WorkerSettings, load_settings

pytestmark = pytest.mark.unit

PW = "Zr-s3cr3t-pw"


@pytest.fixture(autouse=True)
def _no_registered_secrets() -> Any:
    secrets.forget_all()
    yield
    secrets.forget_all()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{PW}@h:6379/0", "redis://:***@h:6379/0"),
        (f"redis://user:{PW}@h:6379/0", "redis://user:***@h:6379/0"),
        (f"redis://h:6379/0?password={PW}", "redis://h:6379/0?password=***"),
        (f"redis://h:6379/0?db=1&Password={PW}&x=y", "redis://h:6379/0?db=1&Password=***&x=y"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("redis://u@h:6379/0", "redis://u@h:6379/0"),
        ("redis://:Qx9%23Wv7@h:1/0", "redis://:***@h:1/0"),
        ("redis://:Qx9#Wv7@h:1/0", "redis://***"),  # ambiguous: nothing but the scheme
        ("redis://:Qx9/Wv7@h:1/0", "redis://***"),
        (f"unix://:{PW}@/run/redis.sock?db=0", "unix://:***@/run/redis.sock?db=0"),
        (f"http://am:{PW}@alertmanager:9093", "http://am:***@alertmanager:9093"),
    ],
)
def test_redacted_urls_never_hold_any_part_of_a_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    for piece in ("s3cr3t", "Qx9", "Wv7"):
        assert piece not in redact_url(url)


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis://:Qx9#Wv7@h:6379/0", "percent-encode"),
        ("redis://:Qx9/Wv7@h:6379/0", "percent-encode"),
        ("redis://:Qx9?Wv7@h:6379/0", "percent-encode"),  # '?' ends the host: no host left
        ("redis://h:99999/0", "1 to 65535"),
        ("redis://h:0/0", "1 to 65535"),
        ("redis://h:port/0", "1 to 65535"),
        ("redis://h:6379/zero", "database number"),
        ("http://h:6379/0", "scheme"),
        ("unix://:Qx9Wv7@", "socket path"),
    ],
)
def test_an_invalid_redis_url_is_one_line_that_never_quotes_it(url: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        check_redis_url(url)
    with pytest.raises(SettingsError) as err:
        load_settings([], redis_url=url)
    line = str(err.value)
    assert "\n" not in line and line.startswith("invalid setting ZEROPROOF_REDIS_URL")
    assert "Qx9" not in line and "Wv7" not in line and "@h" not in line and "99999" not in line


def test_valid_shapes_are_accepted() -> None:
    for url in (
        "redis://localhost:6379/0",
        "rediss://:pw@redis.example:6380/3",
        "redis://[::1]:6379/0",
        "redis://h",
        "redis://h:6379/0?password=a@b",
        "unix:///run/redis.sock?db=2",
        "redis://u:p%2Fq%23r@h:6379/0",
    ):
        check_redis_url(url)


def test_every_secret_of_the_settings_is_known_for_scrubbing() -> None:
    s = WorkerSettings(
        redis_url=f"redis://h:6379/0?password={PW}",
        redis_password="also-Secret",
        kafka_sasl_password="sasl-Secret",
        kafka_ssl_password="sslkey-Secret",
    )
    found = set(s.secrets())
    assert {PW, "also-Secret", "sasl-Secret", "sslkey-Secret"} <= found
    assert PW not in json.dumps(s.redacted()) and "Secret" not in json.dumps(s.redacted())
    assert s.redacted()["redis_url"] == "redis://h:6379/0?password=***"


def test_scrubbing_removes_registered_secrets_from_text_and_log_events() -> None:
    secrets.register([PW, "abc", None, ""])  # too short to scrub: "abc"
    assert scrub(f"Error connecting to {PW}@h") == "Error connecting to ***@h"
    assert scrub("abc stays") == "abc stays"
    with structlog.testing.capture_logs(processors=[secrets.scrub_event]) as logs:
        structlog.get_logger().error("startup_failed", error=f"host {PW}", nested={"k": [PW, 1]}, exc=ValueError(PW))
    assert PW not in repr(logs) and logs[0]["error"] == "host ***"


def test_url_secrets_take_the_widest_reading_of_an_ambiguous_url() -> None:
    found = url_secrets("redis://:Zr#pw-sec/ret@h:6379/0")
    assert "Zr#pw-sec/ret" in found and "pw-sec" in found


def test_the_monitor_uses_the_workers_kafka_connection_definition() -> None:
    for name, field in KafkaConnectionSettings.model_fields.items():
        assert MonitorSettings.model_fields[name].annotation == field.annotation, name
        assert WorkerSettings.model_fields[name].annotation == field.annotation, name
    m = MonitorSettings(
        kafka_bootstrap="b1:9093,b2:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="mon",
        kafka_sasl_password=PW,
        kafka_ssl_cafile="/etc/ssl/ca.pem",
    )
    client = m.kafka_python_client()
    assert client["bootstrap_servers"] == ["b1:9093", "b2:9093"]
    assert (client["security_protocol"], client["sasl_mechanism"], client["sasl_plain_password"]) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        PW,
    )
    assert client["ssl_cafile"] == "/etc/ssl/ca.pem"
    with pytest.raises(ValueError, match="SASL_MECHANISM"):
        MonitorSettings(kafka_security_protocol="SASL_PLAINTEXT")
    with pytest.raises(ValueError, match="port 1-65535"):
        WorkerSettings(kafka_bootstrap="h:99999")


def test_alertmanager_basic_bearer_and_url_credentials() -> None:
    basic = AlertmanagerSettings(
        alertmanager_url="https://am:9093", alertmanager_username="zp", alertmanager_password=PW
    )
    assert basic.alertmanager_headers()["Authorization"].startswith("Basic ")
    assert basic.alertmanager_endpoint() == "https://am:9093/api/v2/alerts"
    in_url = AlertmanagerSettings(alertmanager_url=f"http://zp:{PW}@am:9093/")
    assert in_url.alertmanager_headers() == basic.alertmanager_headers()
    assert in_url.alertmanager_endpoint() == "http://am:9093/api/v2/alerts"  # no credentials in the URL we call
    bearer = AlertmanagerSettings(alertmanager_url="http://am:9093", alertmanager_bearer_token=SecretStr(PW))
    assert bearer.alertmanager_headers() == {"Authorization": f"Bearer {PW}"}
    assert PW in bearer.alertmanager_secrets() and PW in in_url.alertmanager_secrets()
    with pytest.raises(ValueError, match="not both"):
        AlertmanagerSettings(alertmanager_url="http://am:9093", alertmanager_username="a", alertmanager_bearer_token=PW)
    with pytest.raises(ValueError, match="CA file not found"):
        AlertmanagerSettings(alertmanager_url="https://am:9093", alertmanager_ca_file="/nope/ca.pem")
