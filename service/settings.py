"""The base of every service's settings: environment ``ZEROPROOF_*`` first, CLI flags over it, one clear line
(naming the variable and its flag) instead of a traceback, a redacted view for logs, the secrets to scrub from
everything else, and the reference text that ``--help`` and docs/configuration.md both show.

Fields are plain; the parts (``KafkaConnectionSettings``, ``RedisConnectionSettings``, ``AlertmanagerSettings``)
are mixed in by each service, so ``ZEROPROOF_KAFKA_BOOTSTRAP`` means the same to the worker and the monitor.

Durations: a number in the unit the setting's name says (``_s`` seconds, ``_ms`` milliseconds, no unit: seconds)
or a string with its own unit (``500ms``, ``90s``, ``5m``, ``1h``), for every duration of every service.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Self

from pydantic import AliasChoices, BeforeValidator, Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.secrets import redact_url, url_secrets

ENV_PREFIX = "ZEROPROOF_"


class SettingsError(Exception):
    """One line naming the bad setting, ready to print."""


class NamedSettingError(ValueError):
    """Raised inside a validator to blame a specific setting (e.g. one derived from several fields)."""

    def __init__(self, name: str, msg: str) -> None:
        super().__init__(msg)
        self.name = name


# --- durations ------------------------------------------------------------------------------------------------
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|m|h)?\s*$")


def parse_duration(value: Any, unit: str = "s") -> float:
    """Seconds from ``300`` (in ``unit``), ``"300"`` (in ``unit``) or ``"5m"``; negative or non-finite refused."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number or a number with a unit (ms, s, m, h)")
    if isinstance(value, int | float):
        seconds = float(value) * _UNITS[unit]
    elif isinstance(value, str):
        m = _DURATION.match(value)
        if m is None:
            raise ValueError(f"{value!r} is not a duration (a number, or a number with ms/s/m/h)")
        seconds = float(m.group(1)) * _UNITS[m.group(2) or unit]
    else:
        raise ValueError("a duration is a number or a number with a unit (ms, s, m, h)")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("a duration must be finite and >= 0")
    return seconds


def _milliseconds(value: Any) -> int:
    return round(parse_duration(value, "ms") * 1000)


#: A duration in seconds; a bare number is seconds.
Duration = Annotated[float, BeforeValidator(parse_duration)]
#: A duration in whole milliseconds (for ``*_ms`` settings); a bare number is milliseconds.
Milliseconds = Annotated[int, BeforeValidator(_milliseconds)]


# --- naming -----------------------------------------------------------------------------------------------------
def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_names(name: str, field: FieldInfo) -> list[str]:
    """The variables a field is read from: ``ZEROPROOF_<NAME>``, or its aliases (an old name kept working)."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return [str(a).upper() for a in alias.choices if isinstance(a, str) and a.upper().startswith(ENV_PREFIX)]
    return [ENV_PREFIX + name.upper()]


def describe_validation_error(cls: type[BaseSettings], exc: ValidationError) -> str:
    """``invalid setting ZEROPROOF_X (--x): message`` for the first error (never the offending value: it may be a
    secret)."""
    err = exc.errors(include_url=False)[0]
    ctx_error = (err.get("ctx") or {}).get("error")
    if isinstance(ctx_error, NamedSettingError):
        name, msg = ctx_error.name, str(ctx_error)
    else:
        loc = [str(p) for p in err.get("loc", ()) if not isinstance(p, int)]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if not loc:
            return f"invalid settings: {msg}"
        name = loc[0]
    field = cls.model_fields.get(name)
    env = env_names(name, field)[0] if field is not None else ENV_PREFIX + name.upper()
    return f"invalid setting {env} ({flag_name(name)}): {msg}"


@dataclass(frozen=True)
class SettingDoc:
    """One setting as ``--help`` and docs/configuration.md show it."""

    name: str
    env: list[str]
    flag: str
    default: str
    description: str
    part: str


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        return "(computed)"
    d = field.default
    if d is None:
        return "none"
    if isinstance(d, SecretStr):
        d = d.get_secret_value()
    if isinstance(d, bool):
        return str(d).lower()
    if isinstance(d, float) and d.is_integer() and abs(d) < 1e15:
        return str(int(d))
    return str(d) if str(d) != "" else '""'


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="ignore", validate_default=True, case_sensitive=False, populate_by_name=True
    )

    # --- views ------------------------------------------------------------------------------------------------
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

    # --- reference, flags, loading ----------------------------------------------------------------------------
    @classmethod
    def reference(cls) -> list[SettingDoc]:
        """Every setting with its variables, flag, default and description, in the order of the parts."""
        owners = {}
        for klass in reversed(cls.__mro__):
            for name in getattr(klass, "__annotations__", {}):
                if name in cls.model_fields:
                    owners[name] = klass
        out = []
        for name, field in cls.model_fields.items():
            owner = owners.get(name, cls)
            part = (owner.__doc__ or owner.__name__).strip().splitlines()[0].rstrip(".")
            out.append(
                SettingDoc(
                    name=name,
                    env=env_names(name, field),
                    flag=flag_name(name),
                    default=_default_text(field),
                    description=(field.description or "").strip(),
                    part=part if owner is not cls else "",
                )
            )
        return out

    @classmethod
    def arg_parser(cls, prog: str, description: str) -> argparse.ArgumentParser:
        """One ``--flag`` per field, with the same text as docs/configuration.md; unset flags stay ``None`` so the
        environment (then the default) applies."""
        parser = argparse.ArgumentParser(prog=prog, description=description)
        for doc in cls.reference():
            env = " or ".join(doc.env)
            text = f"{doc.description} (env {env}; default {doc.default})" if doc.description else f"(env {env})"
            parser.add_argument(doc.flag, dest=doc.name, default=None, metavar="VALUE", help=text.replace("%", "%%"))
        return parser

    @classmethod
    def load(
        cls, argv: Sequence[str] | None = None, prog: str | None = None, description: str = "", **overrides: Any
    ) -> Self:
        """Environment, then CLI flags, then ``overrides``; raises :class:`SettingsError` with one clear line."""
        args = cls.arg_parser(prog or cls.__name__, description).parse_args(argv)
        values = {k: v for k, v in vars(args).items() if v is not None}
        values.update(overrides)
        try:
            return cls(**values)
        except ValidationError as exc:
            raise SettingsError(describe_validation_error(cls, exc)) from None


class TopicSettings(BaseSettings):
    """Topics (contract §2: one environment names them for every service)."""

    input_topic: str = Field(default="zeroproof.inputs", min_length=1, description="input messages (key = entity)")
    output_topic: str = Field(default="zeroproof.outputs", min_length=1, description="one output per valid input")
    fallback_topic: str = Field(
        default="zeroproof.fallback", min_length=1, description="requests for the external fallback controller"
    )
    dlq_topic: str = Field(default="zeroproof.dlq", min_length=1, description="inputs that cannot be served")
    stats_topic: str = Field(default="zeroproof.stats", min_length=1, description="the workers' per-batch stats")
    alerts_topic: str = Field(
        default="zeroproof.alerts", min_length=1, description="the monitor's alert events (read back after a restart)"
    )
