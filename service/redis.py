"""Redis connection settings (``ZEROPROOF_REDIS_*``), shared by the worker, the console and ``zeroproof review``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from service.secrets import UrlShapeError, redact_url, split_userinfo, url_secrets
from service.settings import Duration

REDIS_SCHEMES = ("redis", "rediss", "unix")


def check_redis_url(url: str) -> None:
    """Raise ``ValueError`` with a message that never quotes the URL (it may hold a password)."""
    scheme = url.partition("://")[0] if "://" in url else ""
    if scheme not in REDIS_SCHEMES:
        raise ValueError(f"scheme must be redis://, rediss:// or unix://, got {scheme + '://' if scheme else 'none'}")
    try:
        _, _, _, rest = split_userinfo(url)
    except UrlShapeError as exc:
        raise ValueError(str(exc)) from None
    netloc = rest
    for stop in "/?#":
        netloc = netloc.partition(stop)[0]
    path = rest[len(netloc) :].partition("?")[0].partition("#")[0]
    if scheme == "unix":
        if not path:
            raise ValueError("a unix:// URL needs the socket path, e.g. unix:///run/redis.sock")
        return
    host, colon, port = netloc.rpartition(":") if not netloc.endswith("]") else (netloc, "", "")
    if not colon:
        host, port = netloc, ""
    if not host:
        raise ValueError("no host (if the password holds '?' or '@', percent-encode it: '?' as %3F, '@' as %40)")
    if colon and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError("the port must be a number from 1 to 65535")
    if path not in ("", "/") and not path[1:].isdigit():
        raise ValueError("the path must be a database number, e.g. /0")


class RedisConnectionSettings(BaseSettings):
    """Redis connection (the review log).

    Secrets stay ``SecretStr`` until a client is built."""

    redis_url: SecretStr = Field(
        default=SecretStr("redis://localhost:6379/0"),
        description="redis://[user:password@]host:port/db (rediss:// for TLS, unix:// for a socket); percent-encode "
        "special characters of a password",
    )
    redis_password: SecretStr | None = Field(default=None, description="AUTH password instead of in the URL (secret)")
    redis_ssl_ca_file: Path | None = Field(default=None, description="CA bundle for rediss://")
    redis_timeout_s: Duration = Field(default=2.0, gt=0, description="socket and connect timeout")
    redis_key_prefix: str = Field(
        default="zeroproof:review", min_length=1, description="prefix of the review log's keys"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: SecretStr) -> SecretStr:
        check_redis_url(v.get_secret_value())
        return v

    def redis_url_redacted(self) -> str:
        return redact_url(self.redis_url.get_secret_value())

    def redis_secrets(self) -> list[str]:
        out = url_secrets(self.redis_url.get_secret_value())
        if self.redis_password is not None:
            out.append(self.redis_password.get_secret_value())
        return out

    def redis_client(self) -> Any:
        """A ``redis.Redis`` (AUTH from the URL or ``redis_password``, TLS CA for ``rediss://``)."""
        import redis

        timeout = self.redis_timeout_s
        kwargs: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        if self.redis_password is not None:
            kwargs["password"] = self.redis_password.get_secret_value()
        url = self.redis_url.get_secret_value()
        if url.startswith("rediss://") and self.redis_ssl_ca_file is not None:
            kwargs["ssl_ca_certs"] = str(self.redis_ssl_ca_file)
        return redis.Redis.from_url(url, **kwargs)
