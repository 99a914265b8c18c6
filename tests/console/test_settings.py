"""Console settings: loopback by default, authentication required anywhere else, the monitor's windows."""

from __future__ import annotations

import pytest

from console.settings import ConsoleSettings, SettingsError, is_loopback, load_settings

pytestmark = pytest.mark.unit
TOKEN = "t0ken-that-is-long-enough"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("ZEROPROOF_"):
            monkeypatch.delenv(name)


def test_defaults_serve_loopback_port_8080_without_authentication() -> None:
    s = load_settings([])
    assert (s.console_host, s.console_port, s.auth_required, s.console_read_only) == ("127.0.0.1", 8080, False, False)
    assert s.url() == "http://127.0.0.1:8080/"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_addresses_need_no_credentials(host: str) -> None:
    assert is_loopback(host)
    assert load_settings(["--console-host", host]).console_host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "console.example.org"])
def test_any_other_address_needs_a_token_or_basic_auth(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(SettingsError, match=r"^invalid setting ZEROPROOF_CONSOLE_HOST .*not a loopback address"):
        load_settings(["--console-host", host])
    assert load_settings(["--console-host", host, "--console-token", TOKEN]).auth_required
    s = load_settings(["--console-host", host, "--console-user", "ana", "--console-password", "pw-of-ana"])
    assert s.auth_required


def test_half_configured_or_weak_credentials_are_refused() -> None:
    with pytest.raises(SettingsError, match="ZEROPROOF_CONSOLE_PASSWORD"):
        load_settings(["--console-user", "ana"])
    with pytest.raises(SettingsError, match=r"ZEROPROOF_CONSOLE_TOKEN .*16 characters"):
        load_settings(["--console-token", "short"])


def test_secrets_are_registered_and_never_in_the_redacted_view() -> None:
    s = load_settings(
        ["--console-token", TOKEN, "--console-user", "ana", "--console-password", "pw-of-ana"],
        redis_url="redis://:redis-pass-1@127.0.0.1:6379/0",
    )
    assert {TOKEN, "pw-of-ana", "redis-pass-1"} <= set(s.secrets())
    shown = str(s.redacted())
    assert TOKEN not in shown and "pw-of-ana" not in shown and "redis-pass-1" not in shown


def test_windows_are_the_monitors_and_its_rule_settings_cannot_stop_the_console(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ZEROPROOF_SHORT_WINDOW", "1m")
    monkeypatch.setenv("ZEROPROOF_LONG_WINDOW", "10m")
    monkeypatch.setenv("ZEROPROOF_COVERAGE_THRESHOLD", "not a number")  # the monitor's business, not ours
    ms = load_settings([]).monitor_settings()
    assert (ms.short_window, ms.long_window, ms.bucket, ms.eval_interval) == (60.0, 600.0, 5.0, 15.0)
    with pytest.raises(SettingsError, match="ZEROPROOF_LONG_WINDOW"):
        load_settings(["--long-window", "30"])
    with pytest.raises(SettingsError, match=r"ZEROPROOF_SHORT_WINDOW .*multiple of ZEROPROOF_BUCKET"):
        load_settings(["--short-window", "62"])


def test_every_setting_has_the_console_or_a_shared_name() -> None:
    # one environment configures the worker, the monitor and the console: no console-only name without the prefix
    from monitoring.settings import MonitorSettings
    from workers.settings import WorkerSettings

    shared = set(MonitorSettings.model_fields) | set(WorkerSettings.model_fields)
    own = [n for n in ConsoleSettings.model_fields if n not in shared]
    assert own and all(n.startswith("console_") for n in own)
