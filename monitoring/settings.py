"""Monitor configuration (contract §2): environment variables ``ZEROPROOF_*``, overridden by CLI flags.

Every field ``foo_bar`` is read from ``ZEROPROOF_FOO_BAR`` and can be overridden with ``--foo-bar``, like the
worker's settings. Durations are seconds, or a number with a unit (``500ms``, ``90s``, ``5m``, ``1h``). Invalid
configuration is reported as one line naming the setting (:func:`load_settings`), never a traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings

from service.alertmanager import AlertmanagerSettings
from service.kafka import KafkaConnectionSettings
from service.logs import LogLevel
from service.settings import Duration, NamedSettingError, ServiceSettings, TopicSettings
from service.settings import SettingsError as SettingsError  # re-exported for callers

Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class MonitorWindows(BaseSettings):
    """Monitor windows (the monitor's and the console's rates are computed over them)."""

    monitor_label: str | None = Field(
        default=None, description="input label to break rates down by (workers must list it in STATS_LABELS)"
    )
    short_window: Duration = Field(default=300.0, description="the window the rules judge")
    long_window: Duration = Field(default=3600.0, description="the long window (and the ⊥-rise baseline)")
    bucket: Duration = Field(default=5.0, description="aggregation bucket; windows are multiples of it")
    eval_interval: Duration = Field(default=15.0, description="rules are evaluated at multiples of this")
    allowed_lateness: Duration = Field(default=5.0, description="how late a batch may arrive and still count")
    worker_idle_after: Duration = Field(
        default=60.0, description="a worker this far behind that sends nothing no longer holds evaluation back"
    )
    max_series_labels: int = Field(
        default=200, ge=1, description="label values per model version; the rest pooled as __other__"
    )
    max_clock_skew: Duration = Field(default=600.0, description="stats from further in the future are skipped")

    @field_validator("monitor_label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return v.strip() or None if v is not None else None

    @field_validator("bucket", "eval_interval", "short_window", "long_window")
    @classmethod
    def _positive_window(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @model_validator(mode="after")
    def _windows(self) -> MonitorWindows:
        for name in ("short_window", "long_window", "eval_interval"):
            ratio = getattr(self, name) / self.bucket
            if abs(ratio - round(ratio)) > 1e-9:
                raise NamedSettingError(name, f"must be a multiple of ZEROPROOF_BUCKET ({self.bucket:g}s)")
        if self.long_window <= self.short_window:
            raise NamedSettingError("long_window", "must be longer than ZEROPROOF_SHORT_WINDOW")
        return self

    @property
    def baseline_window(self) -> float:
        """The trailing baseline of the ⊥-rise rule: the long window minus the short one."""
        return self.long_window - self.short_window


class MonitorSettings(MonitorWindows, TopicSettings, KafkaConnectionSettings, AlertmanagerSettings, ServiceSettings):
    """The monitor: windows, rules and sinks. Defaults follow the seed: coverage < 90%, gap > 5%, ⊥ rise."""

    # --- topics and endpoints (contract §2)
    kafka_timeout: Duration = Field(default=30.0, description="request and bootstrap timeout of its Kafka clients")
    monitor_client_id: str = Field(
        default="zeroproof-monitor",
        min_length=1,
        validation_alias=AliasChoices("monitor_client_id", "ZEROPROOF_MONITOR_CLIENT_ID", "ZEROPROOF_GROUP_ID"),
        description="prefix of its Kafka client ids (joins no group; ZEROPROOF_GROUP_ID is still read)",
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus endpoint port; 0 = off")
    metrics_host: str = Field(default="0.0.0.0", min_length=1, description="bind address of the metrics endpoint")
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="none", description="compression of the alert records it produces"
    )

    # --- rules: thresholds, clear levels (hysteresis), pending durations
    coverage_threshold: Rate = Field(default=0.90, description="coverage_low fires below this")
    coverage_clear: Rate = Field(default=0.92, description="... and resolves at or above this")
    coverage_pending: Duration = Field(default=60.0, description="... after holding this long")
    gap_threshold: Rate = Field(default=0.05, description="gap_rate_high fires above this")
    gap_clear: Rate = Field(default=0.04, description="... and resolves at or below this")
    gap_pending: Duration = Field(default=60.0, description="... after holding this long")
    bottom_rise_factor: float = Field(default=3.0, ge=1.0, description="bottom_rate_rise: short ⊥ rate vs baseline")
    bottom_rise_floor: Rate = Field(default=0.02, description="... and at least this ⊥ rate")
    bottom_rise_clear_factor: float = Field(default=1.5, ge=1.0, description="... resolves below this factor")
    bottom_rise_clear_floor: Rate = Field(default=0.01, description="... or below this rate")
    bottom_rise_pending: Duration = Field(default=60.0, description="... after holding this long")
    bottom_rise_max_p: float = Field(
        default=1e-4, gt=0.0, le=1.0, description="significance the rise must reach (one-sided binomial test)"
    )
    min_volume: int = Field(default=200, ge=0, description="predictions in the short window needed to judge")
    baseline_min_volume: int = Field(default=1000, ge=0, description="predictions in the baseline for the ⊥ rise")
    clear_for: Duration = Field(default=60.0, description="the clear level must hold this long before resolving")
    no_data_after: Duration = Field(default=120.0, description="silence that fires no_data")

    # --- sinks
    alertmanager_resend: Duration = Field(default=60.0, description="re-send period of firing alerts")
    alertmanager_timeout: Duration = Field(default=5.0, description="per POST to Alertmanager")
    log_level: LogLevel = Field(default="info", description="debug, info, warning or error")
    log_json: bool = Field(default=True, description="JSON lines (false: human-readable console lines)")

    @field_validator("alertmanager_timeout", "kafka_timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be > 0")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> MonitorSettings:
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


def _field_error(name: str, msg: str) -> NamedSettingError:
    return NamedSettingError(name, msg)


DESCRIPTION = "Aggregates zeroproof.stats and fires alerts. Every flag overrides its ZEROPROOF_* variable."


def build_arg_parser(prog: str = "zeroproof-monitor") -> argparse.ArgumentParser:
    return MonitorSettings.arg_parser(prog, DESCRIPTION)


def load_settings(argv: Sequence[str] | None = None, **overrides: Any) -> MonitorSettings:
    """Environment, then CLI flags, then ``overrides``; raises :class:`SettingsError` with one clear line."""
    return MonitorSettings.load(argv, "zeroproof-monitor", DESCRIPTION, **overrides)
