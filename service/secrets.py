"""Secrets never reach a log line, a metric, a page or stderr.

Two layers. Settings keep passwords in ``SecretStr`` and URLs are shown through :func:`redact_url`, which never
prints any part of a password whatever the URL's shape. Behind that, every secret the process knows
(:func:`register`) is scrubbed from every log event (:func:`scrub_event`, a structlog processor) and from the
one-line errors written to stderr (:func:`scrub`): an exception message that quotes part of a URL (a client
library that misparses an unencoded ``#`` or ``/`` in a password and names the "host") cannot leak it either.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

#: Query parameters that carry credentials in connection URLs (``redis://host/0?password=...``).
SECRET_QUERY_KEYS = re.compile(r"(?i)pass|pwd|secret|token|auth|credential|key$")
MASK = "***"
#: Secrets shorter than this are not scrubbed from free text: a 1-3 character "password" would mask every
#: occurrence of those letters in every log line (they are still never printed by the settings themselves).
MIN_SCRUB_LEN = 4

_lock = threading.Lock()
_secrets: set[str] = set()


class UrlShapeError(ValueError):
    """A URL whose user info cannot be told apart from its host or path (never quotes the URL)."""


def split_userinfo(url: str) -> tuple[str, str | None, str | None, str]:
    """``scheme://user:password@rest`` → ``(scheme, user, password, rest)``; user/password ``None`` if absent.

    The user info ends at the last ``@`` before the query (an ``@`` inside ``?a=b@c`` is not one). A ``/`` or ``#``
    inside the user info (an unencoded password character) makes the URL ambiguous for every client library, so
    it is refused instead of guessed at; the error never quotes the URL.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", None, None, url
    query_at = rest.find("?")
    at = rest.rfind("@", 0, query_at if query_at >= 0 else len(rest))
    if at < 0:
        return scheme, None, None, rest
    userinfo, after = rest[:at], rest[at + 1 :]
    if "/" in userinfo or "#" in userinfo:
        raise UrlShapeError(
            "the password (or user name) contains '/', '?', '#' or '@': percent-encode it (e.g. '#' as %23)"
        )
    user, colon, password = userinfo.partition(":")
    return scheme, unquote(user) or None, unquote(password) if colon else None, after


def url_secrets(url: str) -> list[str]:
    """Every secret in a URL: the password (raw and decoded) and credential-like query values."""
    found: list[str] = []
    _, sep, rest = url.partition("://")
    at = rest.rfind("@")  # the widest reading: whatever precedes the last '@' may be (part of) a password
    if sep and at >= 0:
        _, colon, password = rest[:at].partition(":")
        if colon and password:
            found += [password, unquote(password)]
            found += [piece for piece in re.split(r"[/?#@]", password) if piece]
    query = url.partition("?")[2].partition("#")[0]
    for key, value in parse_qsl(query, keep_blank_values=False):
        if value and SECRET_QUERY_KEYS.search(key):
            found += [value, quote(value, safe="")]
    return found


def redact_url(url: str) -> str:
    """The URL with every credential replaced by ``***``; for an ambiguous URL only its scheme."""
    try:
        scheme, user, password, rest = split_userinfo(url)
    except UrlShapeError:
        return f"{url.partition('://')[0]}://{MASK}"
    head, qmark, query = rest.partition("?")
    if qmark:
        query, hash_, fragment = query.partition("#")
        parts = []
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            parts.append(f"{key}={MASK}" if eq and value and SECRET_QUERY_KEYS.search(unquote(key)) else item)
        head = f"{head}?{'&'.join(parts)}" + (f"#{fragment}" if hash_ else "")
    if user is None and password is None:
        return f"{scheme}://{head}" if scheme else head
    auth = f"{quote(user or '', safe='')}:{MASK}" if password is not None else quote(user or "", safe="")
    return f"{scheme}://{auth}@{head}"


def register(values: Iterable[str | None]) -> None:
    """Remember secrets of this process, so that :func:`scrub` removes them from any text."""
    with _lock:
        for v in values:
            if v and len(v) >= MIN_SCRUB_LEN:
                _secrets.add(v)


def registered() -> frozenset[str]:
    with _lock:
        return frozenset(_secrets)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***`` (longest first, so no tail is left over)."""
    secrets = registered()
    if not secrets:
        return text
    for s in sorted(secrets, key=len, reverse=True):
        if s in text:
            text = text.replace(s, MASK)
    return text


def _scrub_value(value: Any) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Mapping):
        return {k: _scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_value(v) for v in value]
    if isinstance(value, BaseException):
        return scrub(repr(value))
    return value


def scrub_event(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: no registered secret survives in any field of any event."""
    if not registered():
        return event
    for key, value in list(event.items()):
        event[key] = _scrub_value(value)
    return event


def forget_all() -> None:
    """Tests: start from no registered secrets."""
    with _lock:
        _secrets.clear()
