"""Fallback controllers: hold-last with max age and width check, constant broadcast, chain order."""

from __future__ import annotations

import pytest

from workers.fallback import ConstantSafe, ExternalController, FallbackChain, HoldLastSafe

pytestmark = pytest.mark.unit


def test_hold_last_respects_max_age_and_entity() -> None:
    h = HoldLastSafe(max_age_s=5.0)
    h.observe("r1", [1.0, 2.0], now=100.0)
    assert h.propose("r1", 2, now=104.0) is not None
    assert h.propose("r1", 2, now=105.5) is None  # too old
    assert h.propose("r2", 2, now=101.0) is None  # another entity
    assert h.propose("r1", 3, now=101.0) is None  # wrong width (model changed)


def test_hold_last_is_bounded() -> None:
    h = HoldLastSafe(max_age_s=5.0, max_entities=2)
    for i in range(3):
        h.observe(f"r{i}", [float(i)], now=1.0)
    assert h.propose("r0", 1, now=1.0) is None
    assert h.propose("r2", 1, now=1.0) is not None


def test_constant_broadcast_and_width() -> None:
    c1 = ConstantSafe([0.5])
    d = c1.propose("x", 3, now=0.0)
    assert d is not None and d.value == [0.5, 0.5, 0.5]
    assert ConstantSafe([1.0, 2.0]).propose("x", 3, now=0.0) is None


def test_chain_first_that_acts_wins() -> None:
    chain = FallbackChain([HoldLastSafe(1.0), ConstantSafe([0.0]), ExternalController()])
    d = chain.decide("r", 1, now=0.0)
    assert d is not None and d.controller == "constant"
    chain.observe("r", [7.0], now=0.0)
    d = chain.decide("r", 1, now=0.5)
    assert d is not None and (d.controller, d.value) == ("hold_last", [7.0])
    ext = FallbackChain([ExternalController()]).decide("r", 1, now=0.0)
    assert ext is not None and ext.external and ext.value is None
    assert FallbackChain([]).decide("r", 1, now=0.0) is None
