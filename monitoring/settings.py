"""Monitor configuration (contract §2): environment variables ``ZEROPROOF_*``, overridden by CLI flags.

Every field ``foo_bar`` is read from ``ZEROPROOF_FOO_BAR`` and can be overridden with ``--foo-bar``, like the
worker's settings. Durations are seconds, or a number with a unit (``500ms``, ``90s``, ``5m``, ``1h``). Invalid
configuration is reported as one line naming the setting (:func:`load_settings`), never a traceback.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from service.alertmanager import AlertmanagerSettings
from service.kafka import KafkaConnectionSettings
from service.settings import ServiceSettings
from zeroproof.utils.settings import (
    ENV_PREFIX,
    NamedSettingError,
    load_settings_from,
    settings_arg_parser,
)
from zeroproof.utils.settings import SettingsError as SettingsError  # re-exported for callers

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: Any) -> float:
    """``300``, ``"300"``, ``"5m"`` → 300.0 seconds; negative or non-finite durations are rejected."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or e.g. '5m'")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m is None:
            raise ValueError(f"{value!r} is not a duration (seconds, or a number with ms/s/m/h)")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError("a duration is a number of seconds or e.g. '5m'")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be finite and >= 0")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class MonitorSettings(KafkaConnectionSettings, AlertmanagerSettings, ServiceSettings):
    """Everything the monitor reads at start-up. Defaults follow the seed: coverage < 90%, gap > 5%, ⊥ rise."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", case_sensitive=False)

    # Shared with the workers (contract §2); Kafka and Alertmanager connections are the parts of ``service``.
    kafka_timeout: Duration = 30.0
    stats_topic: str = Field(default="zeroproof.stats", min_length=1)
    alerts_topic: str = Field(default="zeroproof.alerts", min_length=1)
    group_id: str = Field(default="zeroproof-monitor", min_length=1)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "0.0.0.0"
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"

    # Aggregation.
    monitor_label: str | None = None
    short_window: Duration = 300.0
    long_window: Duration = 3600.0
    bucket: Duration = 5.0
    eval_interval: Duration = 15.0
    allowed_lateness: Duration = 5.0
    worker_idle_after: Duration = 60.0
    max_series_labels: int = Field(default=200, ge=1)
    max_clock_skew: Duration = 600.0

    # Rules (value thresholds, clear levels for hysteresis, pending durations).
    coverage_threshold: Rate = 0.90
    coverage_clear: Rate = 0.92
    coverage_pending: Duration = 60.0
    gap_threshold: Rate = 0.05
    gap_clear: Rate = 0.04
    gap_pending: Duration = 60.0
    bottom_rise_factor: float = Field(default=3.0, ge=1.0)
    bottom_rise_floor: Rate = 0.02
    bottom_rise_clear_factor: float = Field(default=1.5, ge=1.0)
    bottom_rise_clear_floor: Rate = 0.01
    bottom_rise_pending: Duration = 60.0
    bottom_rise_max_p: float = Field(default=1e-4, gt=0.0, le=1.0)
    min_volume: int = Field(default=200, ge=0)
    baseline_min_volume: int = Field(default=1000, ge=0)
    clear_for: Duration = 60.0
    no_data_after: Duration = 120.0

    # Sinks.
    alertmanager_resend: Duration = 60.0
    alertmanager_timeout: Duration = 5.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = True

    @field_validator("monitor_label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @field_validator("bucket", "eval_interval", "short_window", "long_window", "alertmanager_timeout", "kafka_timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MonitorSettings:
        def multiple(name: str, value: float) -> None:
            ratio = value / self.bucket
            if abs(ratio - round(ratio)) > 1e-9:
                raise _field_error(name, f"must be a multiple of ZEROPROOF_BUCKET ({self.bucket:g}s)")

        for name in ("short_window", "long_window", "eval_interval"):
            multiple(name, getattr(self, name))
        if self.long_window <= self.short_window:
            raise _field_error("long_window", "must be longer than ZEROPROOF_SHORT_WINDOW")
        if self.coverage_clear < self.coverage_threshold:
            raise _field_error("coverage_clear", "must be >= ZEROPROOF_COVERAGE_THRESHOLD (hysteresis)")
        if self.gap_clear > self.gap_threshold:
            raise _field_error("gap_clear", "must be <= ZEROPROOF_GAP_THRESHOLD (hysteresis)")
        if self.bottom_rise_clear_factor > self.bottom_rise_factor:
            raise _field_error("bottom_rise_clear_factor", "must be <= ZEROPROOF_BOTTOM_RISE_FACTOR (hysteresis)")
        if self.bottom_rise_clear_floor > self.bottom_rise_floor:
            raise _field_error("bottom_rise_clear_floor", "must be <= ZEROPROOF_BOTTOM_RISE_FLOOR (hysteresis)")
        if self.no_data_after <= 0:
            raise _field_error("no_data_after", "must be > 0")
        return self

    @property
    def baseline_window(self) -> float:
        """The trailing baseline of the ⊥-rise rule: the long window minus the short one."""
        return self.long_window - self.short_window


def _field_error(name: str, msg: str) -> NamedSettingError:
    return NamedSettingError(name, msg)


def build_arg_parser(prog: str = "zeroproof-monitor") -> argparse.ArgumentParser:
    return settings_arg_parser(
        MonitorSettings,
        prog,
        "Aggregates zeroproof.stats and fires alerts. Every flag overrides its ZEROPROOF_* variable.",
        show_defaults=True,
    )


def load_settings(argv: Sequence[str] | None = None, **overrides: Any) -> MonitorSettings:
    """Environment, then CLI flags, then ``overrides``; raises :class:`SettingsError` with one clear line."""
    return load_settings_from(build_arg_parser(), MonitorSettings, argv, overrides)
