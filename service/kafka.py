"""Kafka connection settings (``ZEROPROOF_KAFKA_*``): one definition for every client of every service, TLS and
SASL included, so a secured cluster is reached the same way by the worker, the monitor, the console and the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class UndecodableInputError(RuntimeError):
    """Input the consumer cannot decode and cannot hold back on its own (it cannot tell which partition it is
    on): the service stops (exit code 3) instead of skipping it or retrying forever."""


def check_bootstrap(value: str) -> str:
    """``host:port[,host:port...]`` with ports 1-65535, normalised (spaces and empty entries dropped)."""
    hosts = [h.strip() for h in value.split(",") if h.strip()]
    if not hosts:
        raise ValueError("needs at least one host:port")
    for h in hosts:
        host, sep, port = h.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{h!r} is not host:port (port 1-65535)")
    return ",".join(hosts)


class KafkaConnectionSettings(BaseSettings):
    """Kafka connection (every service, TLS and SASL included).

    Secrets stay ``SecretStr`` until :meth:`kafka_security` unwraps them."""

    kafka_bootstrap: str = Field(default="localhost:9092", description="brokers, host:port[,host:port...]")
    kafka_security_protocol: SecurityProtocol = Field(
        default="PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_mechanism: SaslMechanism | None = Field(
        default=None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER (needed for SASL_*)"
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user")
    kafka_sasl_password: SecretStr | None = Field(default=None, description="SASL password (secret)")
    kafka_ssl_cafile: Path | None = Field(default=None, description="CA bundle that signed the brokers' certificates")
    kafka_ssl_certfile: Path | None = Field(default=None, description="client certificate (mutual TLS)")
    kafka_ssl_keyfile: Path | None = Field(default=None, description="client key (mutual TLS)")
    kafka_ssl_password: SecretStr | None = Field(default=None, description="password of the client key (secret)")
    kafka_ssl_check_hostname: bool = Field(default=True, description="check the broker certificate's host name")

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap(cls, v: str) -> str:
        return check_bootstrap(v)

    @model_validator(mode="after")
    def _sasl(self) -> KafkaConnectionSettings:
        if self.kafka_security_protocol.startswith("SASL") and self.kafka_sasl_mechanism is None:
            raise ValueError("kafka_security_protocol SASL_* needs ZEROPROOF_KAFKA_SASL_MECHANISM")
        return self

    @property
    def kafka_bootstrap_list(self) -> list[str]:
        return self.kafka_bootstrap.split(",")

    def kafka_secrets(self) -> list[str]:
        return [s.get_secret_value() for s in (self.kafka_sasl_password, self.kafka_ssl_password) if s is not None]

    def kafka_security(self) -> dict[str, Any]:
        """TLS/SASL options in kafka-python's names; the one place their secrets are unwrapped."""
        cfg: dict[str, Any] = {"security_protocol": self.kafka_security_protocol}
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            cfg["ssl_check_hostname"] = self.kafka_ssl_check_hostname
            if self.kafka_ssl_cafile:
                cfg["ssl_cafile"] = str(self.kafka_ssl_cafile)
            if self.kafka_ssl_certfile:
                cfg["ssl_certfile"] = str(self.kafka_ssl_certfile)
            if self.kafka_ssl_keyfile:
                cfg["ssl_keyfile"] = str(self.kafka_ssl_keyfile)
            if self.kafka_ssl_password:
                cfg["ssl_password"] = self.kafka_ssl_password.get_secret_value()
        if self.kafka_security_protocol.startswith("SASL"):
            cfg["sasl_mechanism"] = self.kafka_sasl_mechanism
            if self.kafka_sasl_username:
                cfg["sasl_plain_username"] = self.kafka_sasl_username
            if self.kafka_sasl_password:
                cfg["sasl_plain_password"] = self.kafka_sasl_password.get_secret_value()
        return cfg

    def librdkafka_security(self) -> dict[str, Any]:
        """The same TLS/SASL options in librdkafka's names (confluent-kafka clients); secrets unwrapped here too."""
        cfg: dict[str, Any] = {"security.protocol": self.kafka_security_protocol.lower()}
        if self.kafka_security_protocol in ("SSL", "SASL_SSL"):
            cfg["ssl.endpoint.identification.algorithm"] = "https" if self.kafka_ssl_check_hostname else "none"
            if self.kafka_ssl_cafile:
                cfg["ssl.ca.location"] = str(self.kafka_ssl_cafile)
            if self.kafka_ssl_certfile:
                cfg["ssl.certificate.location"] = str(self.kafka_ssl_certfile)
            if self.kafka_ssl_keyfile:
                cfg["ssl.key.location"] = str(self.kafka_ssl_keyfile)
            if self.kafka_ssl_password:
                cfg["ssl.key.password"] = self.kafka_ssl_password.get_secret_value()
        if self.kafka_security_protocol.startswith("SASL"):
            cfg["sasl.mechanism"] = self.kafka_sasl_mechanism
            if self.kafka_sasl_username:
                cfg["sasl.username"] = self.kafka_sasl_username
            if self.kafka_sasl_password:
                cfg["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        return cfg

    def kafka_python_client(self) -> dict[str, Any]:
        """``bootstrap_servers`` plus security: the keyword arguments every kafka-python client starts from."""
        return {"bootstrap_servers": self.kafka_bootstrap_list, **self.kafka_security()}
