"""Registry of architectures a bundle may name.

A bundle stores an architecture name and its JSON keyword arguments, never code or pickles; loading looks
the name up here. Each registered class records its constructor arguments in ``init_kwargs``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

_REGISTRY: dict[str, type[nn.Module]] = {}
M = TypeVar("M", bound=type[nn.Module])


def register_architecture(name: str) -> Callable[[M], M]:
    def decorate(cls: M) -> M:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls:
            raise ValueError(f"architecture {name!r} already registered to {existing.__qualname__}")
        _REGISTRY[name] = cls
        cls._zeroproof_architecture = name  # type: ignore[attr-defined]
        return cls

    return decorate


def _load_builtins() -> None:
    # Importing the modules runs their @register_architecture decorators.
    import zeroproof.layers.projective
    import zeroproof.models.arm  # noqa: F401


def registered() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def build_architecture(name: str, kwargs: dict[str, Any]) -> nn.Module:
    _load_builtins()
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; known: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)


def architecture_of(model: nn.Module) -> tuple[str, dict[str, Any]]:
    """(registered name, constructor kwargs) of a model, or a clear error if it cannot be bundled."""
    name = getattr(type(model), "_zeroproof_architecture", None)
    kwargs = getattr(model, "init_kwargs", None)
    if name is None or not isinstance(kwargs, dict):
        raise TypeError(
            f"{type(model).__qualname__} is not a registered architecture; register it with "
            "@register_architecture or export it with torch.jit.save and serve the TorchScript file"
        )
    return name, dict(kwargs)
