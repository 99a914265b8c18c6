"""The base of every service's settings: a redacted view for logs and the secrets to scrub from everything else.

Fields are plain; the parts (``KafkaConnectionSettings``, ``RedisConnectionSettings``, ``AlertmanagerSettings``)
are mixed in by each service, so ``ZEROPROOF_KAFKA_BOOTSTRAP`` means the same to the worker and the monitor.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings

from service.secrets import redact_url, url_secrets


class ServiceSettings(BaseSettings):
    def redacted(self) -> dict[str, Any]:
        """Settings safe to log: secrets as ``**********``, URLs without credentials."""
        out = self.model_dump(mode="json")
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and name.endswith("_url"):
                out[name] = redact_url(value.get_secret_value())
            elif isinstance(value, str) and name.endswith("_url"):
                out[name] = redact_url(value)
        return out

    def secrets(self) -> list[str]:
        """Every secret these settings hold (passwords, tokens, credentials inside URLs), for scrubbing."""
        found: list[str] = []
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and name.endswith("_url"):
                found += url_secrets(value.get_secret_value())  # the credentials, not the whole (loggable) URL
            elif isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, str) and name.endswith("_url"):
                found += url_secrets(value)
        return [s for s in found if s]
