"""Worker configuration (contract §2): environment variables ``ZEROPROOF_*``, overridden by CLI flags.

Every field ``foo_bar`` is read from ``ZEROPROOF_FOO_BAR`` and can be overridden with ``--foo-bar``. List-like
settings are comma-separated strings (so that env and flags look the same). Secrets are ``SecretStr``: they
print as ``**********`` and are only unwrapped where a client is built. Invalid configuration is reported as
one line naming the setting (:func:`load_settings`), never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from service.kafka import KafkaConnectionSettings
from service.redis import RedisConnectionSettings
from service.settings import ServiceSettings
from zeroproof.utils.settings import ENV_PREFIX, NamedSettingError, load_settings_from, settings_arg_parser
from zeroproof.utils.settings import SettingsError as SettingsError  # re-exported for callers

Policy = Literal["accept", "fallback", "reject"]
#: Room kept in a produce request for what a record adds to its input's bytes (output fields, DLQ fields).
RECORD_OVERHEAD_BYTES = 16 * 1024
FALLBACK_KINDS = ("hold_last", "constant", "external")


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def parse_float_list(text: str) -> list[float]:
    """``"0.0, 1.5"`` → ``[0.0, 1.5]``; every entry must be a finite number."""
    values = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        v = float(part)
        if not math.isfinite(v):
            raise ValueError(f"{part!r} is not a finite number")
        values.append(v)
    return values


def parse_threshold_pairs(text: str) -> list[tuple[float, float | None]]:
    """``"1e-5:1e-3, 1e-7:none"`` → candidate (tau_infer, tau_train) pairs, validated like ``InferenceConfig``."""
    from zeroproof.inference import InferenceConfig

    pairs: list[tuple[float, float | None]] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        ti_text, sep, tt_text = part.partition(":")
        if not sep:
            raise ValueError(f"{part!r} is not TAU_INFER:TAU_TRAIN")
        tt = None if tt_text.strip().lower() in ("", "none") else float(tt_text)
        cfg = InferenceConfig(tau_infer=float(ti_text), tau_train=tt)
        pairs.append((cfg.tau_infer, cfg.tau_train))
    return pairs


class WorkerSettings(KafkaConnectionSettings, RedisConnectionSettings, ServiceSettings):
    """All worker settings; see docs/configuration.md for the table. Kafka and Redis connection settings are the
    shared parts of ``service.kafka`` and ``service.redis``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_default=True)

    # --- endpoints and topics (contract §2)
    model: Path | None = None
    model_sha256: str | None = None
    tau_infer: float | None = None
    tau_train: float | None = None
    thresholds_file: Path | None = None
    input_topic: str = "zeroproof.inputs"
    output_topic: str = "zeroproof.outputs"
    fallback_topic: str = "zeroproof.fallback"
    dlq_topic: str = "zeroproof.dlq"
    stats_topic: str = "zeroproof.stats"
    alerts_topic: str = "zeroproof.alerts"
    group_id: str = "zeroproof-worker"
    worker_id: str = Field(default_factory=_default_worker_id)
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = Field(default="0.0.0.0", min_length=1, description="bind address of the metrics endpoint")

    # --- batching and flow control
    max_batch_size: int = Field(default=1024, ge=1, le=100_000)
    max_batch_delay_ms: float = Field(default=20.0, gt=0, le=60_000)
    max_in_flight_batches: int = Field(default=1, ge=1, le=64)
    prepare_ahead: bool = Field(default=True, description="compute the next batch while one awaits its acks")
    dispatch_when_idle: bool = Field(
        default=True, description="start a batch as soon as the compute stage is free, not at the deadline"
    )
    max_poll_records: int = Field(default=2048, ge=1)
    drain_timeout_s: float = Field(default=10.0, gt=0)
    device: str = "auto"
    torch_threads: int = Field(
        default=1, ge=0, description="torch intra-op threads for the model on CPU; 0 = torch's default (one per core)"
    )

    # --- kafka client
    kafka_client: Literal["kafka-python", "confluent"] = Field(
        default="kafka-python",
        description="Kafka client library of the worker's transport: kafka-python or confluent (librdkafka)",
    )
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    session_timeout_ms: int = Field(default=10_000, ge=1000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=100)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    fetch_max_wait_ms: int = Field(default=5, ge=0)
    producer_linger_ms: int = Field(default=0, ge=0)
    producer_batch_size: int = Field(default=262_144, ge=1024)
    producer_acks: Literal["all", "1"] = "all"
    producer_max_request_bytes: int = Field(
        default=2**20,
        ge=64 * 1024,
        description="largest record the worker produces (the broker's message.max.bytes must allow it)",
    )
    producer_stall_s: float = Field(default=5.0, gt=0, description="unacked sends this old: flush, then new producer")
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="none", description="compression of the record batches the worker produces (docs/worker.md: cost)"
    )
    undecodable_retry_s: float = Field(
        default=30.0, ge=0, description="retry an input partition held at an undecodable batch; 0 = never"
    )

    # --- redis client
    redis_key_prefix: str = "zeroproof:review"
    redis_allow_eviction: bool = Field(
        default=False, description="start even if Redis may evict review records (allkeys-* policy with maxmemory)"
    )

    # --- start-up
    startup_max_backoff_s: float = Field(default=30.0, gt=0)
    startup_timeout_s: float = Field(default=0.0, ge=0, description="0 = keep retrying until stopped")

    # --- routing
    policy_ok: Policy = "accept"
    policy_gap: Policy = "fallback"
    policy_bottom: Policy = "fallback"
    fallback_controllers: str = "hold_last,external"
    fallback_max_age_s: float = Field(default=5.0, gt=0)
    fallback_constant: str = ""
    fallback_max_entities: int = Field(default=100_000, ge=1)
    fallback_max_bytes: int = Field(
        default=64 * 2**20, ge=2**16, description="memory bound of hold_last (entities + values), bytes"
    )

    # --- observability
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    kafka_log_level: Literal["debug", "info", "warning", "error"] = "warning"
    bottom_log_rate: float = Field(default=10.0, ge=0, description="⊥ log events per second; the rest counted")
    max_message_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=900 * 1024,
        description="larger inputs (value + key + headers) go to the DLQ as too_large",
    )
    stats_labels: str = ""
    stats_max_label_values: int = Field(
        default=100, ge=1, le=10_000, description="distinct values per stats label and batch; the rest pooled"
    )
    shadow_thresholds: str = ""

    # --- hot reload
    reload_check_s: float = Field(default=2.0, ge=0, description="0 = only on SIGHUP")

    @field_validator("tau_infer", "tau_train")
    @classmethod
    def _threshold(cls, v: float | None) -> float | None:
        if v is not None and (not math.isfinite(v) or v < 0):
            raise ValueError(f"must be a finite number >= 0, got {v!r}")
        return v

    @field_validator("model")
    @classmethod
    def _model_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"model file not found: {v}")
        return v

    @field_validator("thresholds_file")
    @classmethod
    def _thresholds_file(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"thresholds file not found: {v}")
        return v

    @field_validator("fallback_controllers")
    @classmethod
    def _controllers(cls, v: str) -> str:
        names = [n.strip() for n in v.split(",") if n.strip()]
        for n in names:
            if n not in FALLBACK_KINDS:
                raise ValueError(f"unknown controller {n!r}; choose from {', '.join(FALLBACK_KINDS)}")
        return ",".join(names)

    @field_validator("fallback_constant")
    @classmethod
    def _constant(cls, v: str) -> str:
        parse_float_list(v)
        return v

    @field_validator("shadow_thresholds")
    @classmethod
    def _shadow(cls, v: str) -> str:
        parse_threshold_pairs(v)
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto" and not (v == "cpu" or v.startswith("cuda")):
            raise ValueError(f"must be auto, cpu or cuda[:N], got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        if self.tau_infer is not None and self.tau_train is not None and self.tau_train < self.tau_infer:
            raise ValueError("tau_train must be >= tau_infer (the gap is [tau_infer, tau_train))")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        if "constant" in self.controller_names and not self.fallback_constant_values:
            raise ValueError("fallback_controllers names 'constant' but ZEROPROOF_FALLBACK_CONSTANT is empty")
        if self.max_message_bytes + RECORD_OVERHEAD_BYTES > self.producer_max_request_bytes:
            raise NamedSettingError(
                "max_message_bytes",
                f"must leave {RECORD_OVERHEAD_BYTES} bytes below ZEROPROOF_PRODUCER_MAX_REQUEST_BYTES "
                f"({self.producer_max_request_bytes}): an output carries its input's key and labels",
            )
        if self.drain_timeout_s * 1000 >= self.max_poll_interval_ms:
            raise ValueError("drain_timeout_s must stay below max_poll_interval_ms")
        return self

    # --- parsed views
    @property
    def controller_names(self) -> list[str]:
        return [n for n in self.fallback_controllers.split(",") if n]

    @property
    def fallback_constant_values(self) -> list[float]:
        return parse_float_list(self.fallback_constant)

    @property
    def shadow_pairs(self) -> list[tuple[float, float | None]]:
        return parse_threshold_pairs(self.shadow_thresholds)

    @property
    def stats_label_names(self) -> list[str]:
        return [n.strip() for n in self.stats_labels.split(",") if n.strip()]

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0


def build_arg_parser(prog: str = "zeroproof-worker") -> argparse.ArgumentParser:
    return settings_arg_parser(
        WorkerSettings,
        prog,
        "Streaming strict-inference worker. Every flag overrides its ZEROPROOF_* environment variable.",
    )


def load_settings(argv: Sequence[str] | None = None, **overrides: Any) -> WorkerSettings:
    """Environment, then CLI flags, then ``overrides``; raises :class:`SettingsError` with one clear line."""
    return load_settings_from(build_arg_parser(), WorkerSettings, argv, overrides)
