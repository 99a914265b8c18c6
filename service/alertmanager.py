"""Alertmanager connection settings (``ZEROPROOF_ALERTMANAGER_*``): the URL, basic or bearer authentication and a
CA bundle for HTTPS. The URL may carry ``user:password@`` itself; it is never logged with it."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings

from service.secrets import redact_url, url_secrets


class AlertmanagerSettings(BaseSettings):
    """Alertmanager connection (the monitor's webhook).

    Credentials go in an ``Authorization`` header, never in the URL that is called or logged."""

    alertmanager_url: str | None = Field(default=None, description="http(s)://host:9093 of Alertmanager (v2 API)")
    alertmanager_username: str | None = Field(default=None, description="basic auth user")
    alertmanager_password: SecretStr | None = Field(default=None, description="basic auth password (secret)")
    alertmanager_bearer_token: SecretStr | None = Field(
        default=None, description="bearer token instead of basic auth (secret)"
    )
    alertmanager_ca_file: Path | None = Field(default=None, description="CA bundle for an https:// Alertmanager")

    @field_validator("alertmanager_url")
    @classmethod
    def _alertmanager(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        try:
            parts = urlsplit(v.strip())
            parts.port  # noqa: B018 - raises for a port out of range
        except ValueError:
            raise ValueError("expected an http(s) URL of Alertmanager, e.g. http://alertmanager:9093") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("expected an http(s) URL of Alertmanager, e.g. http://alertmanager:9093")
        return v.strip().rstrip("/")

    @field_validator("alertmanager_ca_file")
    @classmethod
    def _ca(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"CA file not found: {v}")
        return v

    @model_validator(mode="after")
    def _one_auth(self) -> AlertmanagerSettings:
        basic = self.alertmanager_username is not None or self.alertmanager_password is not None
        if basic and self.alertmanager_bearer_token is not None:
            raise ValueError("set either ZEROPROOF_ALERTMANAGER_USERNAME/_PASSWORD or _BEARER_TOKEN, not both")
        return self

    def alertmanager_endpoint(self) -> str | None:
        """The v2 alerts endpoint, without credentials (those go in a header)."""
        if self.alertmanager_url is None:
            return None
        parts = urlsplit(self.alertmanager_url)
        netloc = parts.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if parts.port:
            netloc += f":{parts.port}"
        url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        return url if url.endswith("/api/v2/alerts") else url.rstrip("/") + "/api/v2/alerts"

    def alertmanager_headers(self) -> dict[str, str]:
        """``Authorization`` from the bearer token, the basic-auth settings or the URL's user info."""
        if self.alertmanager_bearer_token is not None:
            return {"Authorization": f"Bearer {self.alertmanager_bearer_token.get_secret_value()}"}
        user, password = self.alertmanager_username, self.alertmanager_password
        if user is None and password is None and self.alertmanager_url is not None:
            parts = urlsplit(self.alertmanager_url)
            if parts.username is not None or parts.password is not None:
                return _basic(unquote(parts.username or ""), unquote(parts.password or ""))
            return {}
        if user is None and password is None:
            return {}
        return _basic(user or "", password.get_secret_value() if password is not None else "")

    def alertmanager_ssl_context(self) -> ssl.SSLContext | None:
        if self.alertmanager_ca_file is None:
            return None
        return ssl.create_default_context(cafile=str(self.alertmanager_ca_file))

    def alertmanager_url_redacted(self) -> str | None:
        return redact_url(self.alertmanager_url) if self.alertmanager_url else None

    def alertmanager_secrets(self) -> list[str]:
        out = url_secrets(self.alertmanager_url or "")
        for s in (self.alertmanager_password, self.alertmanager_bearer_token):
            if s is not None:
                out.append(s.get_secret_value())
        if self.alertmanager_headers():
            out.append(self.alertmanager_headers()["Authorization"].split(" ", 1)[1])
        return out


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}
