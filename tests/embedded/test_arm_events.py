from __future__ import annotations

import math
from collections import Counter

import orjson
import pytest
from pydantic import ValidationError

from embedded.arm_events import ArmFleet, ScenarioConfig, schedule
from service.wire import INPUT

pytestmark = pytest.mark.unit


def generate(config: ScenarioConfig) -> list[tuple[float, object]]:
    fleet = ArmFleet(config)
    return [(t, fleet.next_event(t)) for t, due in schedule(config) for _ in range(due)]


def test_schedule_delivers_the_configured_rate() -> None:
    cfg = ScenarioConfig(rate_per_second=250, duration_s=4)
    assert sum(due for _, due in schedule(cfg)) == pytest.approx(1000, abs=3)


def test_scenario_mix_is_deterministic_and_has_every_kind() -> None:
    cfg = ScenarioConfig(rate_per_second=2000, duration_s=20, malformed_fraction=0.01, unreachable_fraction=0.01)
    events = generate(cfg)
    again = generate(cfg)
    assert [(e.kind, e.features) for _, e in events] == [(e.kind, e.features) for _, e in again]
    kinds = Counter(e.kind.split(":")[0] for _, e in events)
    assert kinds["malformed"] == pytest.approx(400, rel=0.25)
    assert kinds["unreachable"] == pytest.approx(400, rel=0.25)
    assert kinds["near_singular"] > 0
    assert {e.entity for _, e in events} == {f"arm-{i}" for i in range(cfg.arms)}


def test_valid_events_are_contract_inputs_and_malformed_ones_are_not() -> None:
    cfg = ScenarioConfig(rate_per_second=2000, duration_s=10, malformed_fraction=0.05)
    for _t, ev in generate(cfg):
        if ev.kind.startswith("malformed"):
            kind = ev.kind.split(":")[1]
            if kind == "wrong_feature_count":
                assert len(orjson.loads(ev.value)["features"]) == 3
                continue
            with pytest.raises((ValidationError, ValueError, UnicodeDecodeError)):
                INPUT.validate_json(ev.value.decode("utf-8"))
        else:
            msg = INPUT.validate_json(ev.value)
            assert msg["id"] == ev.id and msg.get("entity") == ev.entity and len(msg["features"]) == 4
            assert msg["labels"]["site"] in cfg.sites
            assert all(isinstance(f, float) and math.isfinite(f) for f in msg["features"])


def test_near_singular_events_only_in_the_fault_window_and_unreachable_are_exactly_singular() -> None:
    cfg = ScenarioConfig(rate_per_second=2000, duration_s=20, unreachable_fraction=0.01)
    for t, ev in generate(cfg):
        if ev.kind == "near_singular":
            assert cfg.in_fault(t) and 1e-8 <= abs(ev.features[1]) <= 10**-3.5
        if ev.kind == "unreachable":
            theta1, theta2, dx, dy = ev.features
            assert theta2 == 0.0
            assert dx * math.cos(theta1) + dy * math.sin(theta1) > 0  # pushing outwards along the arm
