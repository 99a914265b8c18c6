"""The kafka-python transport's own logic, against stand-ins for the client objects (no broker)."""

from __future__ import annotations

from typing import Any

import pytest
import structlog
from kafka.partitioner.default import DefaultPartitioner

from workers.settings import WorkerSettings
from workers.transport.kafka import (
    _POLL_SLICE_MS,
    _QUIET_AFTER_S,
    KafkaConsumerTransport,
    KeyPartitioner,
    _MembershipTracker,
)

pytestmark = pytest.mark.unit


class _Rec:
    def __init__(self, offset: int) -> None:
        self.topic, self.partition, self.offset = "in", 0, offset
        self.key, self.value, self.timestamp, self.headers = b"k", b"{}", 1, []


class SleepyClient:
    """Behaves like kafka-python when it finds no fetch in flight: sleeps the whole timeout (it uses
    min(timeout, retry_backoff_ms = 100 ms)) even though records arrive meanwhile. It sleeps on a simulated clock
    that the transport under test reads too, so the slicing is judged without real time (a loaded machine made
    real sleeps overrun and the assertions on the slices flaky)."""

    def __init__(self, records_after_s: float | None) -> None:
        self.now = 1000.0
        self.t0 = self.now
        self.records_after_s = records_after_s
        self.timeouts: list[int] = []
        self._fetcher = type("Fetcher", (), {"config": {"fetch_max_wait_ms": 5}})()

    @property
    def fetch_wait_ms(self) -> int:
        """How long the broker may hold the next fetch (kafka-python reads it per fetch request)."""
        return int(self._fetcher.config["fetch_max_wait_ms"])

    def clock(self) -> float:
        return self.now

    def poll(self, timeout_ms: int, max_records: int) -> dict[Any, list[_Rec]]:
        self.timeouts.append(timeout_ms)
        if self.records_after_s is not None and self.now - self.t0 >= self.records_after_s:
            return {("in", 0): [_Rec(0), _Rec(1)]}
        self.now += min(timeout_ms, 100) / 1000
        return {}


class _Listener:
    def on_revoked(self, partitions: Any) -> dict[Any, int]:
        return {}

    def on_revoke_committed(self, offsets: Any, error: BaseException | None) -> None:
        return None

    def on_assigned(self, partitions: Any) -> None:
        return None


def transport_with(client: SleepyClient, stable: bool = True, quiet: bool = False) -> KafkaConsumerTransport:
    settings = WorkerSettings(fetch_max_wait_ms=5, idle_fetch_max_wait_ms=500)
    t = KafkaConsumerTransport(settings, log=structlog.get_logger("test"), client=client, clock=client.clock)
    t._last_records_at = 0.0 if quiet else client.now
    t._membership = _MembershipTracker(_Listener())  # what subscribe() sets up, without a broker
    if stable:
        t._membership.on_assigned([])
    return t


def test_poll_waits_in_short_slices_and_returns_records_as_soon_as_they_arrive() -> None:
    client = SleepyClient(records_after_s=0.02)
    recs = transport_with(client).poll(0.1, 100)
    assert [r.offset for r in recs] == [0, 1]
    assert client.timeouts and max(client.timeouts) <= _POLL_SLICE_MS
    # a single 100 ms call would have returned nothing; the slices picked the records up on arrival
    assert len(client.timeouts) < 100 / _POLL_SLICE_MS


def test_poll_without_records_honours_the_whole_timeout_and_zero_means_once() -> None:
    client = SleepyClient(records_after_s=None)
    assert transport_with(client).poll(0.03, 10) == []
    assert sum(client.timeouts) >= 30 - _POLL_SLICE_MS and max(client.timeouts) <= _POLL_SLICE_MS
    client = SleepyClient(records_after_s=None)
    assert transport_with(client).poll(0.0, 10) == []
    assert client.timeouts == [0]


def test_poll_is_not_sliced_while_the_group_is_joining_or_rebalancing() -> None:
    """Short polls during a join made kafka-python's join take 3-12 s against tansu instead of 3 s."""
    client = SleepyClient(records_after_s=None)
    t = transport_with(client, stable=False)
    assert t.poll(0.03, 10) == []
    assert len(client.timeouts) == 1 and client.timeouts[0] >= 25
    t._membership.on_assigned([])
    t._membership.on_revoked([])  # a rebalance starts: no slicing until the new assignment
    client.timeouts.clear()
    t.poll(0.03, 10)
    assert len(client.timeouts) == 1 and client.timeouts[0] >= 25
    t._membership.on_assigned([])
    client.timeouts.clear()
    t.poll(0.03, 10)
    assert len(client.timeouts) > 1 and max(client.timeouts) <= _POLL_SLICE_MS


def test_a_quiet_consumer_polls_unsliced_until_records_flow_again() -> None:
    """Each waiting kafka-python poll costs ~1.1 ms of CPU: slices only while records flow."""
    client = SleepyClient(records_after_s=None)
    t = transport_with(client, quiet=True)
    assert t.poll(0.03, 10) == []
    assert len(client.timeouts) == 1 and client.timeouts[0] >= 25
    assert client.fetch_wait_ms == 500  # quiet: the broker holds fetches long (it answers when a record comes)
    client.records_after_s = 0.0  # records arrive: the next poll returns them, and polls are sliced again
    assert [r.offset for r in t.poll(0.03, 10)] == [0, 1]
    client.records_after_s = None
    client.timeouts.clear()
    t.poll(0.03, 10)
    assert len(client.timeouts) > 1 and max(client.timeouts) <= _POLL_SLICE_MS
    assert client.fetch_wait_ms == 5  # flowing: short fetches again
    # and quiet again once no record has come for _QUIET_AFTER_S
    client.now += _QUIET_AFTER_S + 0.01
    client.timeouts.clear()
    t.poll(0.03, 10)
    assert client.timeouts == [30] and client.fetch_wait_ms == 500


def test_fetches_stay_short_while_the_group_is_joining() -> None:
    client = SleepyClient(records_after_s=None)
    t = transport_with(client, stable=False, quiet=True)
    t.poll(0.03, 10)
    assert client.fetch_wait_ms == 5


class _Meta:
    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions

    def topics(self) -> set[str]:
        return set(self.partitions)

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        n = self.partitions.get(topic)
        return None if n is None else set(range(n))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return self.partitions_for_topic(topic) or set()


class _Producer:
    def __init__(self, meta: _Meta) -> None:
        self._metadata = meta


@pytest.mark.parametrize("count", [1, 3, 4, 12])
def test_key_partitioner_matches_the_clients_default_partitioner(count: int) -> None:
    meta = _Meta({"out": count})
    part = KeyPartitioner(_Producer(meta))
    default = DefaultPartitioner()
    for i in range(500):
        key = f"robot-{i}".encode()
        assert part("out", key) == default.partition("out", key, key, None, None, meta)
        assert part("out", key) == part("out", key)  # cached answer is the same


def test_key_partitioner_follows_partition_count_changes_and_leaves_unknown_topics_to_the_client() -> None:
    meta = _Meta({"out": 4})
    part = KeyPartitioner(_Producer(meta), refresh_s=0.0)
    assert part("nope", b"k") is None
    before = {k: part("out", f"e{k}".encode()) for k in range(200)}
    meta.partitions["out"] = 7
    default = DefaultPartitioner()
    keys = {k: f"e{k}".encode() for k in range(200)}
    after = {k: part("out", key) for k, key in keys.items()}
    assert after == {k: default.partition("out", key, key, None, None, meta) for k, key in keys.items()}
    assert after != before and max(after.values()) > 3


def test_key_partitioner_cache_is_bounded() -> None:
    part = KeyPartitioner(_Producer(_Meta({"out": 4})), max_keys=10)
    for i in range(100):
        part("out", f"k{i}".encode())
    assert len(part._cache) <= 10
