"""SIGKILL storm: workers killed at random moments during a 50,000-message stream with ⊥ and gap inputs.

Two workers share the group; at random moments the older one is SIGKILLed and a fresh one started, so the
stream never stops and every kill leaves one worker's uncommitted batch behind. Afterwards: every input has
an output, every ⊥ input has exactly one review record, duplicates are counted and stay within the contract's
bound: a crash delivers again at most ``max_in_flight_records`` inputs (default ``max_batch_size``) — the records
the killed worker had sent but not committed.
"""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from harness.load import Stream, review_records
from harness.services import create_topics
from harness.worker import TopicReader, Topics, WorkerProc, bottom_ids, feature_for, msg, worker_env
from tests.reliability.figures import record

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N = 50_000
KILLS = 12
BATCH = 256
PARTITIONS = 4
RATE = 1_600.0  # msg/s: the stream lasts ~31 s, long enough for the kills to land mid-run


def owns_partitions(w: WorkerProc) -> bool:
    """The worker's latest rebalance event gave it partitions (and it has not been revoked since)."""
    last = None
    for e in w.events():
        if e.get("event") in ("partitions_assigned", "partitions_revoked"):
            last = e
    return last is not None and last["event"] == "partitions_assigned" and bool(last.get("partitions"))


def gap_ids(n: int) -> set[str]:
    return {str(i) for i in range(n) if i % 25 == 1}


@pytest.mark.timeout(240)
def test_sigkill_storm_loses_nothing(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    rng = random.Random(20261125)
    env = worker_env(
        kafka_bootstrap,
        redis_url,
        bundle,
        topics,
        max_batch_size=str(BATCH),
        max_batch_delay_ms="20",
        # shorter sessions: tansu holds a JoinGroup for session/2, and a killed member's partitions move on after
        # one session timeout; keeps ~12 kills inside the budget
        session_timeout_ms="3000",
        heartbeat_interval_ms="500",
        max_poll_interval_ms="15000",
        drain_timeout_s="5",
        bottom_log_rate="1",
    )
    items = [(f"robot-{i % 16}".encode(), msg(i, feature_for(i))) for i in range(N)]
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    workers: list[WorkerProc] = []
    born: dict[int, float] = {}
    names: dict[int, str] = {}
    kills: list[dict[str, object]] = []
    seq = 0

    def spawn() -> WorkerProc:
        nonlocal seq
        seq += 1
        w = WorkerProc({**env, "ZEROPROOF_WORKER_ID": f"storm-{seq}"}, tmp_path / f"w{seq}.log")
        workers.append(w)
        born[id(w)] = time.monotonic()
        names[id(w)] = f"storm-{seq}"
        return w

    t_start = time.monotonic()
    create_topics(kafka_bootstrap, {topics.inputs: PARTITIONS})  # the first join then sees every partition
    live = [spawn(), spawn()]
    stream = Stream(kafka_bootstrap, topics.inputs, items, RATE)
    try:
        live[0].wait_event("partitions_assigned", 60)
        stream.start()
        # kill moments: uniformly random over the stream's duration, at least 0.8 s apart
        span = N / RATE
        moments = sorted(rng.uniform(1.0, span - 1.0) for _ in range(KILLS))
        for i in range(1, len(moments)):
            moments[i] = max(moments[i], moments[i - 1] + 0.8)
        t0 = time.monotonic()
        for at in moments:
            while time.monotonic() - t0 < at:
                reader.read_until(lambda rs: False, 0.1)
            # the oldest worker that owns partitions right now (wait for one: a fresh worker needs ~5 s to join)
            deadline = time.monotonic() + 30
            owners = [w for w in live if owns_partitions(w)]
            while not owners and time.monotonic() < deadline:
                reader.read_until(lambda rs: False, 0.1)
                owners = [w for w in live if owns_partitions(w)]
            victim = min(owners or live, key=lambda w: born[id(w)])
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(10)
            live.remove(victim)
            kills.append(
                {
                    "at_s": round(time.monotonic() - t0, 2),
                    "worker": names[id(victim)],
                    "age_s": round(time.monotonic() - born[id(victim)], 2),
                    "had_partitions": bool(owners),
                    "outputs_seen": len(reader.records),
                }
            )
            live.append(spawn())
        stream.join(120)
        assert not stream.failed, f"{len(stream.failed)} inputs were never acknowledged by the broker"
        want = {str(i) for i in range(N)}
        reader.read_until(lambda rs: len({json.loads(r.value)["id"] for r in rs}) >= N, 120)
        outs = reader.json()
        ids = Counter(o["id"] for o in outs)
        missing = want - set(ids)
        assert not missing, f"{len(missing)} inputs without an output, e.g. {sorted(missing)[:5]}"
        duplicates = sum(c - 1 for c in ids.values())
        dup_by_worker = Counter(o["worker_id"] for o in outs if ids[o["id"]] > 1)
        reviews = review_records(redis_url, topics)
        expect_bottom = bottom_ids(range(N))
        assert set(reviews) == expect_bottom, (len(reviews), len(expect_bottom))
        pending_flags = [r["pending"] for r in reviews.values()]
        assert all(pending_flags)
        statuses = Counter(o["status"] for o in {o["id"]: o for o in outs}.values())
        assert statuses["bottom"] == len(expect_bottom)
        assert statuses["gap"] == len(gap_ids(N))
        mid_run_kills = sum(1 for k in kills if k["had_partitions"])
        assert mid_run_kills >= 10, kills
        bound = len(kills) * BATCH  # max_in_flight_records defaults to max_batch_size
        assert duplicates <= bound, (duplicates, bound)
        # per killed worker: its outputs that were answered again (its own sent-but-uncommitted records, plus
        # copies it had itself made of earlier victims' records, one victim per partition at most)
        killed = {str(k["worker"]) for k in kills}
        per_kill = Counter(o["worker_id"] for o in outs if ids[o["id"]] > 1 and o["worker_id"] in killed)
        assert all(v <= PARTITIONS * BATCH for v in per_kill.values()), per_kill
        redelivered_bottom = sum(r["deliveries"] - 1 for r in reviews.values())
        for w in live:
            assert w.proc.poll() is None, w.log_tail()
        figures = {
            "messages": N,
            "bottom_inputs": len(expect_bottom),
            "gap_inputs": len(gap_ids(N)),
            "kills": len(kills),
            "kills_while_owning_partitions": mid_run_kills,
            "workers_started": seq,
            "inputs_without_output": len(missing),
            "outputs_total": len(outs),
            "duplicates": duplicates,
            "duplicate_bound": bound,
            "duplicates_per_kill_max_allowed": BATCH,
            "duplicates_per_kill_mean": round(duplicates / len(kills), 1),
            "duplicated_outputs_per_killed_worker_max": max(per_kill.values(), default=0),
            "review_records": len(reviews),
            "review_records_extra_or_missing": len(set(reviews) ^ expect_bottom),
            "bottom_redeliveries_absorbed": redelivered_bottom,
            "max_batch_size": BATCH,
            "rate_msgs_per_s": RATE,
            "wall_s": round(time.monotonic() - t_start, 1),
            "kill_log": kills,
            "outputs_of_duplicated_ids_by_worker": dict(sorted(dup_by_worker.items())),
        }
        record("sigkill_storm", figures)
        for w in live:
            assert w.terminate(30) == 0
    finally:
        stream.stop()
        for w in workers:
            w.kill()
        reader.close()
