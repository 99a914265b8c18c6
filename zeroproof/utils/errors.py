"""One-line error messages for people: configuration mistakes should read as a sentence, not a traceback."""

from __future__ import annotations

from pydantic import ValidationError


def one_line(exc: BaseException) -> str:
    """``ValidationError`` → ``"setting: message; other: message"``; anything else → ``str(exc)`` on one line."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ())) or exc.title
            msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}")
        return "; ".join(parts)
    return " ".join(str(exc).split())
