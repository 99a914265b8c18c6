"""Shared plumbing for the services' pydantic settings: environment ``ZEROPROOF_*`` first, CLI flags over it, and
one clear line (naming the variable and its flag) instead of a traceback when something is invalid."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings

ENV_PREFIX = "ZEROPROOF_"
S = TypeVar("S", bound=BaseSettings)


class SettingsError(Exception):
    """One line naming the bad setting, ready to print."""


class NamedSettingError(ValueError):
    """Raised inside a validator to blame a specific setting (e.g. one derived from several fields)."""

    def __init__(self, name: str, msg: str) -> None:
        super().__init__(msg)
        self.name = name


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def settings_arg_parser(
    cls: type[BaseSettings], prog: str, description: str, show_defaults: bool = False
) -> argparse.ArgumentParser:
    """One ``--flag`` per field; unset flags stay ``None`` so the environment (then the default) applies."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    for name, field in cls.model_fields.items():
        env = ENV_PREFIX + name.upper()
        default = f", default {field.default!r}" if show_defaults else ""
        parser.add_argument(flag_name(name), dest=name, default=None, metavar="VALUE", help=f"(env {env}{default})")
    return parser


def describe_validation_error(exc: ValidationError) -> str:
    """``invalid setting ZEROPROOF_X (--x): message`` for the first error."""
    err = exc.errors()[0]
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, NamedSettingError):
        return f"invalid setting {ENV_PREFIX}{ctx_error.name.upper()} ({flag_name(ctx_error.name)}): {ctx_error}"
    loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
    msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
    if loc:
        name = loc[0]
        return f"invalid setting {ENV_PREFIX}{name.upper()} ({flag_name(name)}): {msg}"
    return f"invalid settings: {msg}"


def load_settings_from(
    parser: argparse.ArgumentParser, cls: type[S], argv: Sequence[str] | None, overrides: dict[str, Any]
) -> S:
    """Environment, then CLI flags, then ``overrides``; raises :class:`SettingsError` with one clear line."""
    args = parser.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if v is not None}
    values.update(overrides)
    try:
        return cls(**values)
    except ValidationError as exc:
        raise SettingsError(describe_validation_error(exc)) from None
