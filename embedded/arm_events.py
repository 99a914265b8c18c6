"""Robot-arm events for the embedded stack: several 2-link planar arms following trajectories that pass near
their singular pose (θ2 = 0, arm stretched), a few unreachable targets, a few malformed messages, and a fault
window with a burst of near-singular inputs so the monitor visibly fires and then resolves an alert.

Each event asks the differential-IK model for joint velocities: features ``[θ1, θ2, dx, dy]`` (contract §3
input message, key = arm id). Pure generation logic; :func:`produce` sends to Kafka.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

MALFORMED_KINDS = (
    "invalid_json",
    "missing_features",
    "wrong_feature_count",
    "nan_literal",
    "invalid_utf8",
    "wrong_type",
    "empty",
)


@dataclass(frozen=True)
class ScenarioConfig:
    arms: int = 6
    rate_per_second: float = 400.0
    duration_s: float = 60.0
    seed: int = 7
    unreachable_fraction: float = 0.002  # stretched arm (θ2 = 0) pushed outwards: exactly singular
    malformed_fraction: float = 0.002
    fault_start: float = 0.35  # fraction of the run
    fault_end: float = 0.5
    fault_fraction: float = 0.35  # share of events during the fault that sit within 3e-4 rad of θ2 = 0
    sites: tuple[str, ...] = ("lab-a", "lab-b")

    def in_fault(self, elapsed_s: float) -> bool:
        return self.fault_start * self.duration_s <= elapsed_s < self.fault_end * self.duration_s


@dataclass
class Arm:
    name: str
    site: str
    amp1: float
    amp2: float
    w1: float
    w2: float
    phase1: float
    phase2: float
    heading: float
    seq: int = 0

    def pose(self, t: float) -> tuple[float, float]:
        theta1 = self.amp1 * math.sin(self.w1 * t + self.phase1)
        # θ2 oscillates through 0: every half period the arm passes its singular (stretched) pose.
        theta2 = self.amp2 * math.cos(self.w2 * t + self.phase2)
        return theta1, theta2


@dataclass
class Event:
    key: bytes
    value: bytes
    kind: str  # "normal" | "unreachable" | "near_singular" | "malformed:<kind>"
    entity: str
    id: str | None = None
    features: list[float] = field(default_factory=list)


class ArmFleet:
    """Deterministic (seeded) event source; ``events(elapsed)`` yields the events due in one tick."""

    def __init__(self, config: ScenarioConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.arms = [
            Arm(
                name=f"arm-{i}",
                site=config.sites[i % len(config.sites)],
                amp1=self.rng.uniform(0.5, 1.5),
                amp2=self.rng.uniform(0.6, 2.4),
                w1=self.rng.uniform(0.2, 0.6),
                w2=self.rng.uniform(0.3, 0.9),
                phase1=self.rng.uniform(0, 2 * math.pi),
                phase2=self.rng.uniform(0, 2 * math.pi),
                heading=self.rng.uniform(0, 2 * math.pi),
            )
            for i in range(config.arms)
        ]
        self._next = 0

    def next_event(self, elapsed_s: float) -> Event:
        arm = self.arms[self._next % len(self.arms)]
        self._next += 1
        arm.seq += 1
        event_id = f"{arm.name}-{arm.seq}"
        r = self.rng.random()
        cfg = self.config
        if r < cfg.malformed_fraction:
            return self._malformed(arm, event_id)
        theta1, theta2 = arm.pose(elapsed_s)
        arm.heading += self.rng.gauss(0, 0.2)
        speed = self.rng.uniform(0.02, 0.1)
        dx, dy = speed * math.cos(arm.heading), speed * math.sin(arm.heading)
        kind = "normal"
        if r < cfg.malformed_fraction + cfg.unreachable_fraction:
            # Target beyond reach: arm fully stretched, asked to move further out along itself.
            theta2 = 0.0
            dx, dy = speed * math.cos(theta1), speed * math.sin(theta1)
            kind = "unreachable"
        elif cfg.in_fault(elapsed_s) and self.rng.random() < cfg.fault_fraction:
            # log-uniform distance to the pole: some land on ⊥ (|det J| tiny), some in the gap, some just above.
            theta2 = math.copysign(10 ** self.rng.uniform(-8, -3.5), self.rng.random() - 0.5)
            kind = "near_singular"
        features = [theta1, theta2, dx, dy]
        message = {
            "id": event_id,
            "entity": arm.name,
            "features": features,
            "ts": time.time(),
            "labels": {"site": arm.site, "arm_model": "planar-2link"},
        }
        return Event(arm.name.encode(), orjson.dumps(message), kind, arm.name, event_id, features)

    def _malformed(self, arm: Arm, event_id: str) -> Event:
        kind = self.rng.choice(MALFORMED_KINDS)
        payloads: dict[str, bytes] = {
            "invalid_json": b'{"id": "' + event_id.encode() + b'", "features": [1, 2',
            "missing_features": orjson.dumps({"id": event_id, "entity": arm.name}),
            "wrong_feature_count": orjson.dumps({"id": event_id, "features": [0.1, 0.2, 0.3]}),
            "nan_literal": b'{"id": "' + event_id.encode() + b'", "features": [NaN, 0.5, 0.1, 0.1]}',
            "invalid_utf8": b'{"id": "\xff\xfe", "features": [0.1, 0.2, 0.3, 0.4]}',
            "wrong_type": orjson.dumps({"id": event_id, "features": ["0.1", 0.2, 0.3, 0.4]}),
            "empty": b"",
        }
        return Event(arm.name.encode(), payloads[kind], f"malformed:{kind}", arm.name, None)


def schedule(config: ScenarioConfig, clock: float = 0.0) -> Iterator[tuple[float, int]]:
    """(elapsed seconds, events due) every 10 ms, at ``rate_per_second`` on average."""
    tick = 0.01
    carried = 0.0
    t = clock
    while t < config.duration_s:
        carried += config.rate_per_second * tick
        due = int(carried)
        carried -= due
        yield t, due
        t += tick


def produce(
    bootstrap: str, topic: str, config: ScenarioConfig, stop: object | None = None, counts: dict[str, int] | None = None
) -> dict[str, int]:
    """Send the scenario to Kafka in real time; returns counts per event kind. ``stop`` is a threading.Event."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, acks="all", retries=5)
    fleet = ArmFleet(config)
    counts = counts if counts is not None else {}
    start = time.monotonic()
    try:
        for elapsed, due in schedule(config):
            if stop is not None and getattr(stop, "is_set", lambda: False)():
                break
            delay = start + elapsed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            for _ in range(due):
                ev = fleet.next_event(elapsed)
                producer.send(topic, key=ev.key, value=ev.value)
                counts[ev.kind] = counts.get(ev.kind, 0) + 1
        producer.flush(timeout=30)
    finally:
        producer.close(timeout=10)
    return counts
