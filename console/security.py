"""Who may use the console and how a state-changing request proves it came from one of its own pages.

- Authentication (required off loopback, see settings): HTTP basic auth (``ZEROPROOF_CONSOLE_USER`` /
  ``ZEROPROOF_CONSOLE_PASSWORD``), or the token (``ZEROPROOF_CONSOLE_TOKEN``) as ``Authorization: Bearer`` or
  entered once on ``/login`` (then a signed cookie). Compared in constant time.
- CSRF: every POST carries ``csrf``, an HMAC of the browser's session cookie under the process secret; a
  request from another site cannot read the cookie, so it cannot forge the field. A cross-origin ``Origin``
  header is refused before that.
- Headers: a Content-Security-Policy that allows only this origin's own script and style files (no inline script
  can run even if some markup slipped through), no framing, no sniffing, no caching of pages.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets as pysecrets
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlsplit

from console.settings import ConsoleSettings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SESSION_COOKIE = "zp_session"
AUTH_COOKIE = "zp_auth"
REVIEWER_COOKIE = "zp_reviewer"
#: Paths anyone may fetch: the login form (and its POST), the stylesheet and script, the health check.
PUBLIC = re.compile(r"^/(login|healthz|static/[A-Za-z0-9._-]+)$")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def clean_name(name: str, limit: int = 64) -> str:
    """A reviewer name as stored in the audit trail: printable, trimmed, bounded."""
    return _CONTROL.sub("", name).strip()[:limit]


class Guard:
    """The process secret and the checks built on it."""

    def __init__(self, settings: ConsoleSettings) -> None:
        self.s = settings
        key = settings.console_secret_key
        self.secret = key.get_secret_value().encode() if key is not None else pysecrets.token_bytes(32)

    def _mac(self, purpose: str, value: str) -> str:
        return hmac.new(self.secret, f"{purpose}:{value}".encode(), hashlib.sha256).hexdigest()

    def csrf_token(self, session: str) -> str:
        return self._mac("csrf", session)

    def csrf_ok(self, session: str | None, token: str | None) -> bool:
        if not session or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), token)

    def token_ok(self, token: str) -> bool:
        expected = self.s.console_token
        return expected is not None and hmac.compare_digest(expected.get_secret_value().encode(), token.encode())

    def auth_cookie(self) -> str:
        """What the login cookie holds: a MAC of the token (changing the token logs everyone out)."""
        token = self.s.console_token.get_secret_value() if self.s.console_token else ""
        return self._mac("auth", hashlib.sha256(token.encode()).hexdigest())

    def authenticate(self, headers: dict[bytes, bytes], cookies: dict[str, str]) -> tuple[bool, str | None]:
        """``(allowed, basic-auth user)``."""
        if not self.s.auth_required:
            return True, None
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "basic" and self.s.console_user and self.s.console_password is not None:
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False, None
            ok = hmac.compare_digest(user.encode(), self.s.console_user.encode()) & hmac.compare_digest(
                password.encode(), self.s.console_password.get_secret_value().encode()
            )
            return (True, user) if ok else (False, None)
        if scheme.lower() == "bearer" and self.token_ok(value.strip()):
            return True, None
        cookie = cookies.get(AUTH_COOKIE)
        if cookie and self.s.console_token is not None and hmac.compare_digest(cookie, self.auth_cookie()):
            return True, None
        return False, None


def parse_cookies(headers: dict[bytes, bytes]) -> dict[str, str]:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(headers.get(b"cookie", b"").decode("latin-1"))
    except Exception:  # a malformed Cookie header is no cookie, not an error page
        return {}
    return {k: m.value for k, m in jar.items()}


def _same_origin(headers: dict[bytes, bytes]) -> bool:
    origin = headers.get(b"origin")
    if origin is None or origin == b"null":
        return origin is None
    host = headers.get(b"host", b"").decode("latin-1")
    return urlsplit(origin.decode("latin-1")).netloc == host


class GuardMiddleware:
    """Pure ASGI: authentication, the session cookie, the Origin check, the security headers."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        cookies = parse_cookies(headers)
        session = cookies.get(SESSION_COOKIE)
        new_session = None
        if not session or not re.fullmatch(r"[0-9a-f]{32}", session):
            session = new_session = pysecrets.token_hex(16)
        state = scope.setdefault("state", {})
        state["session"] = session
        state["cookies"] = cookies

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                hs = list(message.get("headers", []))
                hs += SECURITY_HEADERS
                if new_session is not None:
                    cookie = f"{SESSION_COOKIE}={new_session}; Path=/; HttpOnly; SameSite=Strict"
                    hs.append((b"set-cookie", cookie.encode()))
                message["headers"] = hs
            await send(message)

        path = scope.get("path", "/")
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD") and not _same_origin(headers):
            await _plain(send_with_headers, 403, "cross-origin request refused")
            return
        allowed, user = self.guard.authenticate(headers, cookies)
        state["user"] = user
        if not allowed and not PUBLIC.match(path):
            if method in ("GET", "HEAD") and self.guard.s.console_token is not None:
                await _redirect(send_with_headers, "/login")
            else:
                extra = [(b"www-authenticate", b'Basic realm="zeroproof console"')] if self.guard.s.console_user else []
                await _plain(send_with_headers, 401, "authentication required", extra)
            return
        await self.app(scope, receive, send_with_headers)


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = (text + "\n").encode()
    headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers + (extra or [])})
    await send({"type": "http.response.body", "body": body})


async def _redirect(send: Send, location: str) -> None:
    await send({"type": "http.response.start", "status": 303, "headers": [(b"location", location.encode())]})
    await send({"type": "http.response.body", "body": b""})
