"""Smoke test of bench/peers.py's pieces (no timing is asserted): one peer app drains a small backlog on a fresh
broker through the harness's own throughput measurement, and the summary and table are built from it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from harness.services import start_redis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def peers_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench" / "peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(240)
def test_a_peer_drains_a_backlog_through_the_harness_and_the_table_is_built(tmp_path: Path) -> None:
    peers = peers_module()
    redis = start_redis()
    try:
        ctx = peers.Ctx(peers.make_bundle(tmp_path / "m.zpb"), redis.extra["url"], tmp_path, 1)
        app = next(a for a in peers.APPS if a.name == "confluent-loop")
        res = peers.throughput(app, ctx, 50_000)
    finally:
        redis.stop()
    assert "error" not in res, res
    assert res["messages"] == 50_000 and res["outputs_seen"] >= 50_000
    assert res["msgs_per_s"] > 0 and res["cpu_s_per_100k"] >= 0
    empty: dict[str, Any] = {"p50_ms": 1.0, "p99_ms": 2.0, "app_cpu_cores": 0.1}
    results = {app.name: {"throughput": [res], "high": [empty], "low": [{**empty, "idle_cpu_percent": 1.0}]}}
    args = type("Args", (), {"high_rate": 2000.0, "low_rate": 120.0, "backlog": 2000})()
    summary = peers.summarise(results, [app], args)
    assert summary["table"]["confluent-loop"]["msgs_per_s"] == res["msgs_per_s"]
    table = peers.markdown(summary, args)
    assert "confluent-kafka batch loop" in table and "1.0 / 2.0 ms" in table


def test_latency_percentiles() -> None:
    peers = peers_module()
    p = peers.percentiles([float(i) for i in range(1, 101)])
    assert p["p50_ms"] == pytest.approx(50.5) and p["max_ms"] == 100.0


def test_the_per_message_split_attributes_the_tail_to_where_it_was_spent() -> None:
    peers = peers_module()
    sent = np.arange(200) * 0.001
    app = np.full(200, 0.003)
    app[100:102] = 0.040  # one stall in the app: the two slowest messages, sent 1 ms apart
    produced = sent + app
    arrived = produced + 0.002
    sp = peers.split(sent, produced, arrived)
    assert sp["app_p50_ms"] == pytest.approx(3.0) and sp["out_hop_p50_ms"] == pytest.approx(2.0)
    assert sp["tail"]["messages"] == 2 and sp["tail"]["app_median_ms"] == pytest.approx(40.0)
    assert sp["tail"]["out_hop_median_ms"] == pytest.approx(2.0) and sp["tail"]["send_windows_20ms"] == 1
    medians = peers._median_split([{"split": sp}, {"p50_ms": 1.0}])
    assert medians["tail_app_median_ms"] == pytest.approx(40.0)


def test_an_app_that_copies_the_input_timestamp_gets_no_split() -> None:
    peers = peers_module()
    sent = np.arange(100) * 0.001
    sp = peers.split(sent, sent - 0.0005, sent + 0.01)
    assert "app_p50_ms" not in sp
    assert peers._median_split([{"split": sp}]) == {}
