"""Fallback controllers: what acts when the policy for a status (gap, ⊥) says ``fallback``.

A controller either proposes a value for an entity, or routes the decision elsewhere (``external``), or says it
cannot act (``None``). Controllers are tried in the configured order; the first that acts wins. If none can,
the action becomes ``reject`` (no value is better than an invented one).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from workers.settings import WorkerSettings


@dataclass(frozen=True, slots=True)
class Decision:
    controller: str
    value: list[float] | None
    external: bool = False


class FallbackController(Protocol):
    """``observe`` sees every accepted (safe) model value; ``propose`` is asked when a fallback is needed."""

    name: str

    def observe(self, entity: str, value: list[float], now: float) -> None: ...

    def propose(self, entity: str, width: int, now: float) -> Decision | None: ...


#: Rough bytes per held entry beyond the entity's characters and the values: the tuple, the list, dict slots.
_ENTRY_OVERHEAD = 200


def _entry_bytes(entity: str, value: list[float]) -> int:
    return _ENTRY_OVERHEAD + len(entity) + 32 * len(value)


class HoldLastSafe:
    """Hold the last accepted value per entity, for at most ``max_age_s``; memory bounded by entity count and by
    bytes (least recently updated first out), because entities come from inputs: 200 distinct 400 KB keys held
    76 MB when only the count was bounded.

    Keyed by entity, which is also the Kafka key, so an entity's history lives on the worker that owns its
    partition. After a rebalance the new owner starts empty: it falls through to the next controller until it
    has seen a safe value, which is the conservative choice.
    """

    name = "hold_last"

    def __init__(self, max_age_s: float, max_entities: int = 100_000, max_bytes: int = 64 * 2**20) -> None:
        self.max_age_s = max_age_s
        self.max_entities = max_entities
        self.max_bytes = max_bytes
        self.bytes = 0
        self._last: OrderedDict[str, tuple[list[float], float]] = OrderedDict()

    def observe(self, entity: str, value: list[float], now: float) -> None:
        last = self._last
        old = last.get(entity)
        if old is not None:
            self.bytes -= _entry_bytes(entity, old[0])
        last[entity] = (value, now)
        last.move_to_end(entity)
        self.bytes += _entry_bytes(entity, value)
        while len(last) > self.max_entities or (self.bytes > self.max_bytes and len(last) > 1):
            gone, (gone_value, _) = last.popitem(last=False)
            self.bytes -= _entry_bytes(gone, gone_value)

    def propose(self, entity: str, width: int, now: float) -> Decision | None:
        got = self._last.get(entity)
        if got is None or now - got[1] > self.max_age_s or len(got[0]) != width:
            return None
        return Decision(self.name, got[0])

    def forget(self) -> None:
        self._last.clear()
        self.bytes = 0


class ConstantSafe:
    """A configured safe value (one number broadcast to every output, or one per output)."""

    name = "constant"

    def __init__(self, value: Sequence[float]) -> None:
        if not value:
            raise ValueError("constant fallback needs at least one value")
        self.value = list(value)

    def observe(self, entity: str, value: list[float], now: float) -> None:
        return None

    def propose(self, entity: str, width: int, now: float) -> Decision | None:
        if len(self.value) == width:
            return Decision(self.name, self.value)
        if len(self.value) == 1:
            return Decision(self.name, self.value * width)
        return None


class ExternalController:
    """Hands the decision to an external controller: the worker publishes the request on ``zeroproof.fallback``
    (same key) and the output names ``external`` with no value of its own. Always able to act."""

    name = "external"

    def observe(self, entity: str, value: list[float], now: float) -> None:
        return None

    def propose(self, entity: str, width: int, now: float) -> Decision | None:
        return Decision(self.name, None, external=True)


class FallbackChain:
    def __init__(self, controllers: Sequence[FallbackController]) -> None:
        self.controllers = list(controllers)
        self._observers = [c for c in self.controllers if not isinstance(c, (ConstantSafe, ExternalController))]

    @property
    def has_observers(self) -> bool:
        return bool(self._observers)

    def observe(self, entity: str, value: list[float], now: float) -> None:
        for c in self._observers:
            c.observe(entity, value, now)

    def observe_latest(self, latest: Mapping[str, list[float]], now: float) -> None:
        """Show the observers the latest accepted value of each entity, ``latest`` ordered by each entity's last
        accepted row. The pipeline gathers a batch's rows this way and calls it before the chain next decides: a
        controller that keeps the latest value per entity (``hold_last``, least recently updated first out) ends
        up as if it had observed every row in turn, as long as an entity's values keep their width (one model
        output per group), at one call per entity instead of one per row."""
        for c in self._observers:
            for entity, value in latest.items():
                c.observe(entity, value, now)

    def decide(self, entity: str, width: int, now: float) -> Decision | None:
        for c in self.controllers:
            d = c.propose(entity, width, now)
            if d is not None:
                return d
        return None


def build_chain(settings: WorkerSettings) -> FallbackChain:
    controllers: list[FallbackController] = []
    for name in settings.controller_names:
        if name == "hold_last":
            controllers.append(
                HoldLastSafe(settings.fallback_max_age_s, settings.fallback_max_entities, settings.fallback_max_bytes)
            )
        elif name == "constant":
            controllers.append(ConstantSafe(settings.fallback_constant_values))
        elif name == "external":
            controllers.append(ExternalController())
    return FallbackChain(controllers)
