"""Worker configuration (contract §2): environment variables ``ZEROPROOF_*``, overridden by CLI flags.

Every field ``foo_bar`` is read from ``ZEROPROOF_FOO_BAR`` and can be overridden with ``--foo-bar``. List-like
settings are comma-separated strings (so that env and flags look the same). Secrets are ``SecretStr``: they
print as ``**********`` and are only unwrapped where a client is built. Invalid configuration is reported as
one line naming the setting (:func:`load_settings`), never a traceback. The reference (docs/configuration.md
and ``--help``) is generated from the field descriptions.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from service.kafka import KafkaConnectionSettings
from service.logs import LogLevel
from service.redis import RedisConnectionSettings
from service.settings import Duration, Milliseconds, NamedSettingError, ServiceSettings, TopicSettings, parse_duration
from service.settings import SettingsError as SettingsError  # re-exported for callers

Policy = Literal["accept", "fallback", "reject"]
#: Room kept in a produce request for what a record adds to its input's bytes (output fields, DLQ fields).
RECORD_OVERHEAD_BYTES = 16 * 1024
FALLBACK_KINDS = ("hold_last", "constant", "external")
#: Milliseconds with a fraction (the batch deadline may be below 1 ms).
PreciseMilliseconds = Annotated[float, BeforeValidator(lambda v: parse_duration(v, "ms") * 1000)]


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


class WorkerSettings(TopicSettings, KafkaConnectionSettings, RedisConnectionSettings, ServiceSettings):
    """The worker: model, topics, batching, delivery, routing and observability; see docs/configuration.md."""

    # --- model and topics (contract §2)
    model: Path | None = Field(default=None, description="model bundle or TorchScript file to serve (required)")
    model_sha256: str | None = Field(default=None, description="refuse a model file whose sha256 is not this")
    tau_infer: float | None = Field(
        default=None, description="⊥ below this |D|; overrides the bundle's (contract default 1e-6)"
    )
    tau_train: float | None = Field(
        default=None, description="gap below this |D|; overrides the bundle's (contract default 1e-4)"
    )
    thresholds_file: Path | None = Field(
        default=None, description="JSON {tau_infer, tau_train} watched for hot reload; wins over the settings"
    )
    group_id: str = Field(default="zeroproof-worker", min_length=1, description="the workers' Kafka consumer group")
    worker_id: str = Field(
        default_factory=_default_worker_id, description="names this worker in outputs, stats and logs (host-pid)"
    )
    metrics_port: int = Field(default=0, ge=0, le=65535, description="Prometheus endpoint port; 0 = off")
    metrics_host: str = Field(default="0.0.0.0", min_length=1, description="bind address of the metrics endpoint")

    # --- batching and flow control
    max_batch_size: int = Field(default=1024, ge=1, le=100_000, description="records per micro-batch at most")
    max_batch_delay_ms: PreciseMilliseconds = Field(
        default=20.0, gt=0, le=60_000, description="a batch is dispatched when its first record is this old"
    )
    max_in_flight_records: int | None = Field(
        default=None,
        ge=1,
        description="input records sent but not committed, however many batches (the crash duplicate bound); "
        "default: max_batch_size",
    )
    prepare_ahead: bool = Field(default=True, description="compute the next batch while one awaits its acks")
    dispatch_when_idle: bool = Field(
        default=True, description="start a batch as soon as the compute stage is free, not at the deadline"
    )
    idle_warm_interval_ms: Milliseconds = Field(
        default=0,
        ge=0,
        description="while the input is idle, run the model on a row of zeros this often so the first record after "
        "a quiet spell finds its code path warm (costs idle CPU: docs/worker.md); 0 = off",
    )
    max_poll_records: int = Field(default=2048, ge=1, description="records one poll returns at most")
    drain_timeout_s: Duration = Field(
        default=10.0, gt=0, description="on SIGTERM or revoke, wait this long for in-flight batches"
    )
    device: str = Field(default="auto", description="auto (CUDA when present), cpu or cuda[:N]")
    torch_threads: int = Field(
        default=1, ge=0, description="torch intra-op threads for the model on CPU; 0 = torch's default (one per core)"
    )

    # --- kafka client
    kafka_client: Literal["kafka-python", "confluent"] = Field(
        default="confluent",
        description="Kafka client library of the worker's transport: confluent (librdkafka) or kafka-python",
    )
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        default="earliest", description="where a new consumer group starts"
    )
    session_timeout_ms: Milliseconds = Field(default=10_000, ge=1000, description="consumer group session timeout")
    heartbeat_interval_ms: Milliseconds = Field(default=3_000, ge=100, description="consumer heartbeat interval")
    max_poll_interval_ms: Milliseconds = Field(
        default=300_000, ge=1000, description="longest gap between polls before the group evicts the worker"
    )
    fetch_max_wait_ms: Milliseconds = Field(default=5, ge=0, description="how long the broker may hold a fetch")
    idle_fetch_max_wait_ms: Milliseconds = Field(
        default=500,
        ge=0,
        le=10_000,
        description="the same once no record came for 1 s (an idle worker's fetch rate; a broker answers a held "
        "fetch as soon as a record arrives)",
    )
    producer_linger_ms: Milliseconds = Field(default=0, ge=0, description="producer linger (0: send at once)")
    producer_batch_size: int = Field(default=262_144, ge=1024, description="producer batch size, bytes")
    producer_acks: Literal["all", "1"] = Field(default="all", description="acknowledgements the producer waits for")
    producer_max_request_bytes: int = Field(
        default=2**20,
        ge=64 * 1024,
        description="largest record the worker produces (the broker's message.max.bytes must allow it)",
    )
    producer_stall_s: Duration = Field(
        default=5.0, gt=0, description="sends unacknowledged this long: flush, then a new producer"
    )
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        default="none", description="compression of the record batches the worker produces (docs/worker.md: cost)"
    )
    undecodable_retry_s: Duration = Field(
        default=30.0, ge=0, description="retry an input partition held at an undecodable batch; 0 = never"
    )

    # --- review log
    redis_allow_eviction: bool = Field(
        default=False, description="start even if Redis may evict review records (allkeys-* policy with maxmemory)"
    )

    # --- start-up
    startup_max_backoff_s: Duration = Field(
        default=30.0, gt=0, description="longest wait between retries of Redis and Kafka at start-up"
    )
    startup_timeout_s: Duration = Field(
        default=0.0, ge=0, description="give up start-up after this long; 0 = keep retrying until stopped"
    )

    # --- routing
    policy_ok: Policy = Field(default="accept", description="action for ok outputs: accept, fallback or reject")
    policy_gap: Policy = Field(default="fallback", description="action for gap outputs")
    policy_bottom: Policy = Field(default="fallback", description="action for ⊥ outputs")
    fallback_controllers: str = Field(
        default="hold_last,external", description="controllers tried in order: hold_last, constant, external"
    )
    fallback_max_age_s: Duration = Field(default=5.0, gt=0, description="hold_last holds a value this long at most")
    fallback_constant: str = Field(default="", description="the constant controller's value(s), comma list")
    fallback_max_entities: int = Field(default=100_000, ge=1, description="entities hold_last remembers at most")
    fallback_max_bytes: int = Field(
        default=64 * 2**20, ge=2**16, description="memory bound of hold_last (entities + values), bytes"
    )

    # --- observability and limits
    log_level: LogLevel = Field(default="info", description="debug, info, warning or error")
    kafka_log_level: LogLevel = Field(default="warning", description="level of the Kafka client's own log")
    bottom_log_rate: float = Field(default=10.0, ge=0, description="⊥ log events per second; the rest counted")
    max_message_bytes: int = Field(
        default=256 * 1024,
        ge=1024,
        le=900 * 1024,
        description="larger inputs (value + key + headers) go to the DLQ as too_large",
    )
    stats_labels: str = Field(default="", description="input label names broken down in stats (comma list)")
    stats_max_label_values: int = Field(
        default=100, ge=1, le=10_000, description="distinct values per stats label and batch; the rest pooled"
    )
    shadow_thresholds: str = Field(
        default="", description="candidate TAU_INFER:TAU_TRAIN pairs counted, not acted on (comma list)"
    )

    # --- hot reload
    reload_check_s: Duration = Field(
        default=2.0, ge=0, description="how often the model and thresholds files are checked; 0 = only on SIGHUP"
    )

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
        if self.max_in_flight_records is not None and self.max_in_flight_records < self.max_batch_size:
            raise NamedSettingError(
                "max_in_flight_records", f"must be at least max_batch_size ({self.max_batch_size}): a batch must fit"
            )
        if "ZEROPROOF_MAX_IN_FLIGHT_BATCHES" in os.environ:
            raise NamedSettingError(
                "max_in_flight_batches",
                "was replaced by ZEROPROOF_MAX_IN_FLIGHT_RECORDS (the duplicate bound is counted in records); unset it",
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
    def in_flight_record_limit(self) -> int:
        return self.max_in_flight_records or self.max_batch_size

    @property
    def max_batch_delay_s(self) -> float:
        return self.max_batch_delay_ms / 1000.0


DESCRIPTION = "Streaming strict-inference worker. Every flag overrides its ZEROPROOF_* environment variable."


def build_arg_parser(prog: str = "zeroproof-worker") -> argparse.ArgumentParser:
    return WorkerSettings.arg_parser(prog, DESCRIPTION)


def load_settings(argv: Sequence[str] | None = None, **overrides: Any) -> WorkerSettings:
    """Environment, then CLI flags, then ``overrides``; raises :class:`SettingsError` with one clear line."""
    return WorkerSettings.load(argv, "zeroproof-worker", DESCRIPTION, **overrides)
