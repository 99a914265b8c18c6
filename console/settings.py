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
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from monitoring.settings import Duration, MonitorSettings
from service.kafka import KafkaConnectionSettings
from service.redis import RedisConnectionSettings
from service.settings import ServiceSettings
from zeroproof.utils.settings import ENV_PREFIX, NamedSettingError, load_settings_from, settings_arg_parser
from zeroproof.utils.settings import SettingsError as SettingsError  # re-exported for callers

#: The window settings shared with the monitor (same names, same meaning).
WINDOW_FIELDS = (
    "monitor_label",
    "short_window",
    "long_window",
    "bucket",
    "eval_interval",
    "allowed_lateness",
    "worker_idle_after",
    "max_series_labels",
    "max_clock_skew",
)


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` and ``localhost``: addresses only this machine can reach."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class ConsoleSettings(KafkaConnectionSettings, RedisConnectionSettings, ServiceSettings):
    """Everything the console reads at start-up."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False)

    # --- the web server
    console_host: str = Field(default="127.0.0.1", min_length=1, description="bind address (loopback by default)")
    console_port: int = Field(default=8080, ge=1, le=65535)
    console_token: SecretStr | None = Field(default=None, description="access token (required off loopback)")
    console_user: str | None = Field(default=None, description="basic-auth user (with ZEROPROOF_CONSOLE_PASSWORD)")
    console_password: SecretStr | None = None
    console_read_only: bool = Field(default=False, description="hide and refuse every action")
    console_reviewer: str | None = Field(default=None, description="default reviewer name (else the login name)")
    console_secret_key: SecretStr | None = Field(
        default=None, description="signs CSRF tokens and sessions; random per process when unset"
    )
    console_page_size: int = Field(default=50, ge=1, le=1000)
    console_chart_window: Duration = 3600.0
    console_refresh_s: float = Field(default=5.0, ge=0, description="overview refresh period in the browser; 0 = off")

    # --- shared with the worker and the monitor
    redis_key_prefix: str = "zeroproof:review"
    input_topic: str = Field(default="zeroproof.inputs", min_length=1)
    stats_topic: str = Field(default="zeroproof.stats", min_length=1)
    alerts_topic: str = Field(default="zeroproof.alerts", min_length=1)
    dlq_topic: str = Field(default="zeroproof.dlq", min_length=1)
    kafka_timeout: Duration = 30.0

    # --- the monitor's windows (see monitoring/settings.py)
    monitor_label: str | None = None
    short_window: Duration = 300.0
    long_window: Duration = 3600.0
    bucket: Duration = 5.0
    eval_interval: Duration = 15.0
    allowed_lateness: Duration = 5.0
    worker_idle_after: Duration = 60.0
    max_series_labels: int = Field(default=200, ge=1)
    max_clock_skew: Duration = 600.0

    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True

    @field_validator("bucket", "eval_interval", "short_window", "long_window", "kafka_timeout", "console_chart_window")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @field_validator("monitor_label", "console_user", "console_reviewer")
    @classmethod
    def _blank_is_none(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @model_validator(mode="after")
    def _consistent(self) -> ConsoleSettings:
        for name in ("short_window", "long_window", "eval_interval"):
            ratio = getattr(self, name) / self.bucket
            if abs(ratio - round(ratio)) > 1e-9:
                raise NamedSettingError(name, f"must be a multiple of ZEROPROOF_BUCKET ({self.bucket:g}s)")
        if self.long_window <= self.short_window:
            raise NamedSettingError("long_window", "must be longer than ZEROPROOF_SHORT_WINDOW")
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
        values: dict[str, Any] = {name: getattr(self, name) for name in WINDOW_FIELDS}
        values.update(
            {name: getattr(self, name) for name in KafkaConnectionSettings.model_fields},
            stats_topic=self.stats_topic,
            alerts_topic=self.alerts_topic,
            kafka_timeout=self.kafka_timeout,
            group_id="zeroproof-console",
        )
        defaults = {
            name: f.get_default(call_default_factory=True)
            for name, f in MonitorSettings.model_fields.items()
            if name not in values
        }
        return MonitorSettings.model_construct(**defaults, **values)


def build_arg_parser(prog: str = "zeroproof console") -> argparse.ArgumentParser:
    return settings_arg_parser(
        ConsoleSettings,
        prog,
        "The review console (web). Every flag overrides its ZEROPROOF_* variable.",
        show_defaults=True,
    )


def load_settings(argv: Sequence[str] | None = None, **overrides: Any) -> ConsoleSettings:
    """Environment, then CLI flags, then ``overrides``; raises :class:`SettingsError` with one clear line."""
    return load_settings_from(build_arg_parser(), ConsoleSettings, argv, overrides)
