"""Console configuration: ``ZEROPROOF_*`` variables, overridden by ``--flags``, one line on error (exit 2).

The Kafka and Redis connections are the shared ``service`` parts, so a secured cluster is reached exactly as the
worker and the monitor reach it. The window settings carry the monitor's names (``ZEROPROOF_SHORT_WINDOW``...):
one environment gives the console and the monitor the same windows, hence the same numbers.
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
from collections.abc import Sequence
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator

from monitoring.settings import MonitorSettings, MonitorWindows
from service.kafka import KafkaConnectionSettings
from service.logs import LogLevel
from service.redis import RedisConnectionSettings
from service.settings import Duration, NamedSettingError, ServiceSettings, TopicSettings
from service.settings import SettingsError as SettingsError  # re-exported for callers


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``: addresses only this machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ConsoleSettings(MonitorWindows, TopicSettings, KafkaConnectionSettings, RedisConnectionSettings, ServiceSettings):
    """The review console: web server, access, pages. Its rates use the monitor's windows (same names)."""

    # --- the web server
    console_host: str = Field(default="127.0.0.1", min_length=1, description="bind address (loopback by default)")
    console_port: int = Field(default=8080, ge=1, le=65535, description="port of the web server")
    console_token: SecretStr | None = Field(default=None, description="access token (required off loopback)")
    console_user: str | None = Field(default=None, description="basic-auth user (with ZEROPROOF_CONSOLE_PASSWORD)")
    console_password: SecretStr | None = Field(default=None, description="basic-auth password (secret)")
    console_read_only: bool = Field(default=False, description="hide and refuse every action")
    console_reviewer: str | None = Field(default=None, description="default reviewer name (else the login name)")
    console_secret_key: SecretStr | None = Field(
        default=None, description="signs CSRF tokens and sessions; random per process when unset"
    )
    console_page_size: int = Field(default=50, ge=1, le=1000, description="review queue rows per page")
    console_chart_window: Duration = Field(default=3600.0, description="time span of the overview chart")
    console_refresh_s: float = Field(default=5.0, ge=0, description="overview refresh period in the browser; 0 = off")

    kafka_timeout: Duration = Field(default=30.0, description="request and bootstrap timeout of its Kafka clients")

    log_level: LogLevel = Field(default="info", description="debug, info, warning or error")
    log_json: bool = Field(default=True, description="JSON lines (false: human-readable console lines)")

    @field_validator("kafka_timeout", "console_chart_window")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("console_user", "console_reviewer")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> ConsoleSettings:
        if (self.console_user is None) != (self.console_password is None):
            raise NamedSettingError("console_password", "basic auth needs both ZEROPROOF_CONSOLE_USER and this")
        if self.console_token is not None and len(self.console_token.get_secret_value()) < 16:
            raise NamedSettingError("console_token", "must be at least 16 characters")
        if not is_loopback(self.console_host) and not self.auth_required:
            raise NamedSettingError(
                "console_host",
                f"{self.console_host} is not a loopback address: set ZEROPROOF_CONSOLE_TOKEN or "
                "ZEROPROOF_CONSOLE_USER and ZEROPROOF_CONSOLE_PASSWORD to serve it there",
            )
        return self

    @property
    def auth_required(self) -> bool:
        return self.console_token is not None or self.console_user is not None

    def default_reviewer(self) -> str:
        if self.console_reviewer:
            return self.console_reviewer
        try:
            return getpass.getuser()
        except Exception:
            return "reviewer"

    def url(self) -> str:
        host = self.console_host
        shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
        return f"http://{shown}:{self.console_port}/"

    def monitor_settings(self) -> MonitorSettings:
        """The monitor core's settings: our windows and Kafka connection, the monitor's defaults for the rest
        (built without reading the environment again: a rule setting meant for the monitor cannot stop us)."""
        values: dict[str, Any] = {name: getattr(self, name) for name in MonitorWindows.model_fields}
        values.update(
            {name: getattr(self, name) for name in KafkaConnectionSettings.model_fields},
            stats_topic=self.stats_topic,
            alerts_topic=self.alerts_topic,
            kafka_timeout=self.kafka_timeout,
            monitor_client_id="zeroproof-console",
        )
        defaults = {
            name: f.get_default(call_default_factory=True)
            for name, f in MonitorSettings.model_fields.items()
            if name not in values
        }
        return MonitorSettings.model_construct(**defaults, **values)


DESCRIPTION = "The review console (web). Every flag overrides its ZEROPROOF_* variable."


def build_arg_parser(prog: str = "zeroproof console") -> argparse.ArgumentParser:
    return ConsoleSettings.arg_parser(prog, DESCRIPTION)


def load_settings(argv: Sequence[str] | None = None, **overrides: Any) -> ConsoleSettings:
    """Environment, then CLI flags, then ``overrides``; raises :class:`SettingsError` with one clear line."""
    return ConsoleSettings.load(argv, "zeroproof console", DESCRIPTION, **overrides)
