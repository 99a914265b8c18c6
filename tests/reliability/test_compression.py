"""Compressed input batches (issue 12 §1): librdkafka producers with ``compression.type`` gzip, snappy, lz4 and
zstd, and record batches the worker cannot decode (a codec its install lacks, a corrupt payload under a valid CRC).

The worker runs as a subprocess against the session's broker and Redis. An undecodable batch must hold back its
own partition only: the other partitions keep flowing, the worker neither spins nor ignores SIGTERM, it logs the
partition once and exposes it as metrics, and the held partition's committed offset stays at the undecodable
batch, so a worker that can decode it answers everything from there on (nothing is skipped).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import psutil
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.record import default_records
from kafka.record.memory_records import MemoryRecords

from harness.load import Stream, scrape, wait_until
from harness.services import create_topics
from harness.worker import TopicReader, Topics, WorkerProc, feature_for, msg, worker_env
from monitoring.rules import Alert
from monitoring.sinks import KafkaAlertSink
from tests.reliability.figures import record, worker_kafka_client
from tests.reliability.test_kill_storm import owns_partitions

pytestmark = pytest.mark.integration

#: the record batch attribute's codec field (Kafka protocol)
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
PARTITIONS = 4
HELD = 2  # the partition that gets the undecodable batch
#: how often a held partition is retried in these tests (the default is 30 s): several failures within a test
RETRY_S = "0.5"
#: a spinning worker uses a whole core (~1.0); a healthy idle one ~0.1
CPU_LIMIT = 0.5

Located = dict[str, tuple[int, int]]  # input id -> (partition, offset)


def librdkafka_batch(
    bootstrap: str, topic: str, partition: int, codec: str, items: Iterable[tuple[bytes, bytes]]
) -> Located:
    """Send ``items`` to ``partition`` as one record batch from librdkafka with ``compression.type`` = ``codec``:
    all are queued before the flush and the linger is long, so they leave together. Returns where each landed."""
    from confluent_kafka import Producer

    p = Producer(
        {"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 1000, "acks": "all", "log_level": 3}
    )
    where: Located = {}
    errors: list[Any] = []

    def delivered(err: Any, m: Any) -> None:
        if err is not None:
            errors.append(err)
        else:
            where[json.loads(m.value())["id"]] = (m.partition(), m.offset())

    n = 0
    for key, value in items:
        p.produce(topic, value=value, key=key, partition=partition, on_delivery=delivered)
        n += 1
    left = p.flush(30)
    assert left == 0 and not errors and len(where) == n, (left, errors, len(where))
    return where


def stored_batches(bootstrap: str, topic: str, partition: int, start: int, end: int) -> dict[int, tuple[int, int]]:
    """``{base offset: (records, codec id)}`` of the record batches of ``topic:partition`` that cover offsets
    [start, end), as the broker serves them, read without decoding them (a payload may be garbage). Looks at each
    fetch response through kafka-python's fetcher (3.0.x, as pinned)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=50)
    found: dict[int, tuple[int, int]] = {}

    def spy(completed: Any) -> None:
        batches = MemoryRecords(completed.partition_data.records)
        while (batch := batches.next_batch()) is not None:
            found[batch.base_offset] = (batch.next_offset - batch.base_offset, batch.compression_type)
        # nothing is decoded or returned: the loop below moves the position on

    consumer._fetcher._parse_fetched_data = spy
    tp = TopicPartition(topic, partition)
    try:
        consumer.assign([tp])
        position = start
        deadline = time.monotonic() + 30
        while position < end and time.monotonic() < deadline:
            consumer.seek(tp, position)
            consumer.poll(timeout_ms=200)
            position = max([position] + [base + n for base, (n, _) in found.items()])
        assert position >= end, (position, end)
    finally:
        consumer.close()
    return found


def without_codecs(tmp_path: Path, *modules: str) -> dict[str, str]:
    """Environment for a worker process in which ``import <module>`` fails, as on an install without that codec
    package (kafka-python then raises UnsupportedCodecError for such batches)."""
    site = tmp_path / "site-without-codecs"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text("import sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in modules))
    return {"PYTHONPATH": str(site)}


def ids_of(records: Iterable[Any]) -> set[str]:
    return {json.loads(r.value)["id"] for r in records}


def answered_all(want: set[str]) -> Callable[[list[Any]], bool]:
    return lambda rs: want <= ids_of(rs)


def cpu_share(pid: int, window_s: float = 3.0) -> float:
    """CPU seconds per second the process (all its threads) used over ``window_s``: a measurement window."""
    p = psutil.Process(pid)
    c0, t0 = sum(p.cpu_times()[:2]), time.monotonic()
    time.sleep(window_s)
    return (sum(p.cpu_times()[:2]) - c0) / (time.monotonic() - t0)


def committed(bootstrap: str, group: str, topic: str, partition: int) -> int | None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    try:
        off = consumer.committed(TopicPartition(topic, partition))
        return None if off is None else int(off)
    finally:
        consumer.close()


def inputs(tag: str, partition: int, n: int) -> list[tuple[bytes, bytes]]:
    return [(f"robot-{partition}".encode(), msg(f"{tag}{partition}-{i}", feature_for(i))) for i in range(n)]


def undecodable_metrics(port: int, topic: str, partition: int) -> dict[str, float]:
    m = scrape(port)
    return {
        "held": m.get("zeroproof_worker_partitions_undecodable", -1.0),
        "offset": m.get(f'zeroproof_worker_undecodable_offset{{partition="{partition}",topic="{topic}"}}', -1.0),
        "failures": sum(v for k, v in m.items() if k.startswith("zeroproof_worker_undecodable_fetches_total")),
    }


# --- every codec, out of the box -----------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_librdkafka_batches_of_every_codec_are_answered(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, {topics.inputs: 1})
    sequence = ["none", "gzip", "none", "snappy", "none", "lz4", "none", "zstd", "none"]
    per_batch = 25
    where: Located = {}
    for j, codec in enumerate(sequence):
        items = [(b"robot-1", msg(f"{codec}-{j}-{i}", feature_for(i))) for i in range(per_batch)]
        where.update(librdkafka_batch(kafka_bootstrap, topics.inputs, 0, codec, items))
    layout = stored_batches(kafka_bootstrap, topics.inputs, 0, 0, len(where))
    # one multi-record batch per produce round, each with the codec asked for
    assert [codec for _, (_, codec) in sorted(layout.items())] == [CODEC_IDS[c] for c in sequence], layout
    assert all(n == per_batch for n, _ in layout.values()), layout
    w = WorkerProc(worker_env(kafka_bootstrap, redis_url, bundle, topics), tmp_path / "w.log")
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    try:
        t0 = time.monotonic()
        reader.read_until(answered_all(set(where)), 90)
        got = ids_of(reader.records)
        missing = sorted(set(where) - got)
        assert not missing, (len(missing), missing[:5], w.log_tail())
        answer_s = time.monotonic() - t0
        events = w.events()
        assert not [e for e in events if e.get("event") in ("poll_failed", "partition_undecodable", "worker_crashed")]
        assert w.terminate() == 0
        by_codec = {c: sum(1 for i in got if i.startswith(f"{c}-")) for c in CODEC_IDS}
        record(
            "compression_codecs",
            {
                "producer": "confluent-kafka (librdkafka) linger.ms=1000, one batch per codec",
                "batches": [f"{c}:{per_batch}" for c in sequence],
                "inputs": len(where),
                "answered": len(got & set(where)),
                "answered_by_codec": by_codec,
                "worker_start_to_all_answered_s": round(answer_s, 2),
                "worker_exit_code": 0,
            },
        )
    finally:
        w.kill()
        reader.close()


# --- a batch the worker cannot decode: held back, the rest flows ---------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_undecodable_batch_holds_back_only_its_partition_and_loses_nothing(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    create_topics(kafka_bootstrap, {topics.inputs: PARTITIONS})
    n = 30
    where: Located = {}
    for p in range(PARTITIONS):
        where.update(librdkafka_batch(kafka_bootstrap, topics.inputs, p, "none", inputs("b", p, n)))
    bad = librdkafka_batch(
        kafka_bootstrap, topics.inputs, HELD, "snappy", [(b"robot-s", msg(f"s-{i}", feature_for(i))) for i in range(20)]
    )
    base = min(off for _, off in bad.values())
    where.update(bad)
    for p in range(PARTITIONS):
        where.update(librdkafka_batch(kafka_bootstrap, topics.inputs, p, "none", inputs("a", p, n)))

    def flowing() -> set[str]:  # every input the worker without snappy must answer
        return {i for i, (p, off) in where.items() if p != HELD or off < base}

    env = worker_env(kafka_bootstrap, redis_url, bundle, topics, undecodable_retry_s=RETRY_S)
    # kafka-python's missing-codec path, so this worker runs on kafka-python whatever the suite's transport
    # (librdkafka has every codec built in; its hold path, fed by fetch errors, is in tests/workers/test_transports.py)
    without_snappy = {**env, **without_codecs(tmp_path, "snappy"), "ZEROPROOF_KAFKA_CLIENT": "kafka-python"}
    w = WorkerProc(without_snappy, tmp_path / "w1.log")
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    w2: WorkerProc | None = None
    try:
        t0 = time.monotonic()
        reader.read_until(answered_all(flowing()), 90)
        missing = sorted(flowing() - ids_of(reader.records))
        assert not missing, (len(missing), missing[:5], w.log_tail())
        first_answered_s = time.monotonic() - t0
        # inputs that arrive after the worker met the undecodable batch (unfixed, its client spun from then on)
        for p in range(PARTITIONS):
            where.update(librdkafka_batch(kafka_bootstrap, topics.inputs, p, "none", inputs("c", p, n)))
        reader.read_until(answered_all(flowing()), 60)
        missing = sorted(flowing() - ids_of(reader.records))
        assert not missing, (len(missing), missing[:5], w.log_tail())
        held = w.wait_event("partition_undecodable", 30)
        # retried and failed again several times: still one log line, and the metrics say where it waits
        assert wait_until(lambda: undecodable_metrics(w.metrics_port, topics.inputs, HELD)["failures"] >= 4, 30)
        cpu = cpu_share(w.proc.pid)
        metrics = undecodable_metrics(w.metrics_port, topics.inputs, HELD)
        events = w.events()
        logged = [e for e in events if e.get("event") in ("partition_undecodable", "partition_still_undecodable")]
        assert len(logged) == 1, logged
        assert (held["topic"], held["partition"], held["offset"]) == (topics.inputs, HELD, base), held
        assert held["error_type"] == "UnsupportedCodecError" and "snappy" in held["error"], held
        assert metrics["held"] == 1 and metrics["offset"] == base, metrics
        assert cpu < CPU_LIMIT, cpu
        skipped = [o for o in reader.json() if o["partition"] == HELD and o["offset"] >= base]
        assert not skipped, skipped[:3]
        assert not [e for e in events if e.get("event") == "worker_crashed"]
        t_stop = time.monotonic()
        code = w.terminate(timeout=30)
        stop_s = time.monotonic() - t_stop
        assert code == 0, w.log_tail()
        # the held partition's commit stays at the undecodable batch ...
        held_commit = committed(kafka_bootstrap, topics.group, topics.inputs, HELD)
        assert held_commit == base, (held_commit, base)
        # ... so a worker that can decode it answers everything from there on: nothing is lost
        w2 = WorkerProc(env, tmp_path / "w2.log")
        reader.read_until(answered_all(set(where)), 90)
        missing = sorted(set(where) - ids_of(reader.records))
        assert not missing, (len(missing), missing[:5], w2.log_tail())
        assert w2.terminate() == 0
        record(
            "compression_undecodable",
            {
                "setup": f"{PARTITIONS} partitions, worker without python-snappy, one 20-record snappy batch on "
                f"partition {HELD} among {len(where) - len(bad)} uncompressed inputs",
                "inputs_on_other_partitions_or_before_the_batch": len(flowing()),
                "answered_while_held": len(flowing() & ids_of(reader.records)),
                "worker_start_to_first_inputs_answered_s": round(first_answered_s, 2),
                "decode_failures_while_held": int(metrics["failures"]),
                "log_lines_about_it": len(logged),
                "worker_cpu_while_held_cores": round(cpu, 3),
                "sigterm_exit_code": code,
                "sigterm_to_exit_s": round(stop_s, 2),
                "held_partition_committed_offset": held_commit,
                "undecodable_batch_offset": base,
                "answered_after_restart_with_codec": len(set(where) & ids_of(reader.records)),
                "inputs_total": len(where),
            },
        )
    finally:
        w.kill()
        if w2 is not None:
            w2.kill()
        reader.close()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_group_keeps_flowing_around_an_undecodable_batch(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    """The issue's case: 2 workers, 4 partitions, one snappy batch on one partition amid a steady stream."""
    create_topics(kafka_bootstrap, {topics.inputs: PARTITIONS})
    env = {
        **worker_env(kafka_bootstrap, redis_url, bundle, topics, undecodable_retry_s=RETRY_S),
        **without_codecs(tmp_path, "snappy"),
        "ZEROPROOF_KAFKA_CLIENT": "kafka-python",  # kafka-python's missing-codec path, as above
    }
    workers = [WorkerProc({**env, "ZEROPROOF_WORKER_ID": f"w{i}"}, tmp_path / f"w{i}.log") for i in (1, 2)]
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    inputs_reader = TopicReader(kafka_bootstrap, topics.inputs)
    n, rate = 3_000, 300.0
    items = [(f"robot-{i % 16}".encode(), msg(f"u-{i}", feature_for(i))) for i in range(n)]
    stream = Stream(kafka_bootstrap, topics.inputs, items, rate)
    try:
        assert wait_until(lambda: all(owns_partitions(w) for w in workers), 60), [w.log_tail() for w in workers]
        stream.start()
        reader.read_until(lambda rs: len(rs) >= 300, 60)
        bad = librdkafka_batch(
            kafka_bootstrap,
            topics.inputs,
            HELD,
            "snappy",
            [(b"robot-s", msg(f"s-{i}", feature_for(i))) for i in range(20)],
        )
        t_bad = time.monotonic()
        base = min(off for _, off in bad.values())
        stream.join(60)
        assert not stream.failed
        inputs_reader.read_until(lambda rs: len(rs) >= n + len(bad), 60)
        located = {json.loads(r.value)["id"]: (r.partition, r.offset) for r in inputs_reader.records}
        assert len(located) == n + len(bad)
        want = {i for i, (p, off) in located.items() if p != HELD or off < base}
        others = {i for i, (p, _) in located.items() if p != HELD}
        held_back = {i for i, (p, off) in located.items() if p == HELD and off >= base}
        reader.read_until(answered_all(want), 90)
        got = ids_of(reader.records)
        missing = sorted(want - got)
        assert not missing, (len(missing), missing[:5], [w.log_tail(1500) for w in workers])
        all_answered_s = time.monotonic() - t_bad
        owner = next(w for w in workers if any(e.get("event") == "partition_undecodable" for e in w.events()))
        assert wait_until(lambda: undecodable_metrics(owner.metrics_port, topics.inputs, HELD)["failures"] >= 3, 30)
        cpus = [cpu_share(w.proc.pid) for w in workers]
        logged = [
            e
            for w in workers
            for e in w.events()
            if e.get("event") in ("partition_undecodable", "partition_still_undecodable")
        ]
        assert len(logged) == 1 and (logged[0]["partition"], logged[0]["offset"]) == (HELD, base), logged
        held = [undecodable_metrics(w.metrics_port, topics.inputs, HELD)["held"] for w in workers]
        assert sorted(held) == [0, 1], held
        assert all(c < CPU_LIMIT for c in cpus), cpus
        assert not [o for o in reader.json() if o["partition"] == HELD and o["offset"] >= base]
        codes = [w.terminate(timeout=30) for w in workers]
        assert codes == [0, 0], [w.log_tail() for w in workers]
        record(
            "compression_group",
            {
                "setup": f"2 workers without python-snappy, {PARTITIONS} partitions, {n} uncompressed inputs at "
                f"{rate:g}/s, one 20-record snappy batch on partition {HELD} mid-stream",
                "inputs_to_answer": len(want),
                "answered": len(want & got),
                "inputs_on_other_partitions": len(others),
                "answered_of_those": len(others & got),
                "held_back_on_the_partition_from_the_snappy_batch_on": len(held_back),
                "held_back_answered": len(held_back & got),
                "snappy_batch_to_all_answered_s": round(all_answered_s, 2),
                "worker_cpu_cores": [round(c, 3) for c in cpus],
                "log_lines_about_it": len(logged),
                "sigterm_exit_codes": codes,
            },
        )
    finally:
        stream.stop()
        for w in workers:
            w.kill()
        reader.close()
        inputs_reader.close()


@pytest.mark.timeout(180)
def test_corrupt_batch_with_a_valid_crc_is_held_back_like_a_missing_codec(
    kafka_bootstrap: str,
    redis_url: str,
    bundle: Path,
    topics: Topics,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A gzip batch whose compressed payload is garbage (kafka-python computes the CRC over it, so the CRC is
    valid and the broker stores it): the worker has every codec, decoding fails in gzip itself."""
    create_topics(kafka_bootstrap, {topics.inputs: 2})
    n = 30
    where: Located = {}
    for p in (0, 1):
        where.update(librdkafka_batch(kafka_bootstrap, topics.inputs, p, "none", inputs("b", p, n)))
    with monkeypatch.context() as m:
        m.setattr(default_records, "gzip_encode", lambda payload, **kw: b"\x1f\x8bnot really gzip" + bytes(32))
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, compression_type="gzip", linger_ms=50, acks="all")
        futures = [producer.send(topics.inputs, value=msg(f"x-{i}", [0.1]), partition=1) for i in range(10)]
        producer.flush(30)
        bad_offsets = [f.get(30).offset for f in futures]
        producer.close(5)
    base = min(bad_offsets)
    layout = stored_batches(kafka_bootstrap, topics.inputs, 1, base, base + 1)
    assert layout.get(base) == (len(bad_offsets), CODEC_IDS["gzip"]), layout
    for p in (0, 1):
        where.update(librdkafka_batch(kafka_bootstrap, topics.inputs, p, "none", inputs("a", p, n)))

    def flowing() -> set[str]:
        return {i for i, (p, off) in where.items() if p != 1 or off < base}

    env = worker_env(kafka_bootstrap, redis_url, bundle, topics, undecodable_retry_s=RETRY_S)
    w = WorkerProc(env, tmp_path / "w.log")
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    try:
        reader.read_until(answered_all(flowing()), 90)
        # and inputs that arrive after the worker met the corrupt batch
        for p in (0, 1):
            where.update(librdkafka_batch(kafka_bootstrap, topics.inputs, p, "none", inputs("c", p, n)))
        reader.read_until(answered_all(flowing()), 60)
        missing = sorted(flowing() - ids_of(reader.records))
        assert not missing, (len(missing), missing[:5], w.log_tail())
        held = w.wait_event("partition_undecodable", 30)
        # each client names the failure its own way: Python's gzip module, or librdkafka's error code
        error_type = {"kafka-python": "BadGzipFile", "confluent": "_BAD_COMPRESSION"}[worker_kafka_client()]
        assert (held["partition"], held["offset"], held["error_type"]) == (1, base, error_type), held
        assert wait_until(lambda: undecodable_metrics(w.metrics_port, topics.inputs, 1)["failures"] >= 3, 30)
        cpu = cpu_share(w.proc.pid)
        metrics = undecodable_metrics(w.metrics_port, topics.inputs, 1)
        assert metrics["held"] == 1 and metrics["offset"] == base, metrics
        assert cpu < CPU_LIMIT, cpu
        logged = [e for e in w.events() if e.get("event") in ("partition_undecodable", "partition_still_undecodable")]
        assert len(logged) == 1, logged
        assert not [o for o in reader.json() if o["partition"] == 1 and o["offset"] >= base]
        code = w.terminate(timeout=30)
        assert code == 0, w.log_tail()
        held_commit = committed(kafka_bootstrap, topics.group, topics.inputs, 1)
        assert held_commit == base, (held_commit, base)
        record(
            "compression_corrupt",
            {
                "setup": "2 partitions, a 10-record gzip batch with a garbage payload and a valid CRC on partition 1, "
                "worker with every codec",
                "error_type": held["error_type"],
                "inputs_to_answer": len(flowing()),
                "answered": len(flowing() & ids_of(reader.records)),
                "decode_failures_while_held": int(metrics["failures"]),
                "log_lines_about_it": len(logged),
                "worker_cpu_while_held_cores": round(cpu, 3),
                "sigterm_exit_code": code,
                "held_partition_committed_offset": held_commit,
                "undecodable_batch_offset": base,
            },
        )
    finally:
        w.kill()
        reader.close()


# --- what the worker and the monitor write ---------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_producer_compression_setting_compresses_what_worker_and_monitor_write(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    alerts = f"{topics.tag}.alerts"
    create_topics(kafka_bootstrap, {topics.inputs: 1, alerts: 1})
    where = librdkafka_batch(kafka_bootstrap, topics.inputs, 0, "none", inputs("i", 0, 200))
    env = worker_env(kafka_bootstrap, redis_url, bundle, topics, producer_compression="lz4")
    w = WorkerProc(env, tmp_path / "w.log")
    reader = TopicReader(kafka_bootstrap, topics.outputs)
    try:
        reader.read_until(answered_all(set(where)), 90)
        assert set(where) <= ids_of(reader.records), w.log_tail()
        assert w.terminate() == 0
    finally:
        w.kill()
        reader.close()
    codecs: dict[int, int] = {}
    ends: dict[int, int] = {}
    for r in reader.records:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    for p, end in ends.items():
        for n, codec in stored_batches(kafka_bootstrap, topics.outputs, p, 0, end).values():
            if n > 1:  # kafka-python sends a batch uncompressed when compressing does not make it smaller
                codecs[codec] = codecs.get(codec, 0) + n
    assert set(codecs) == {CODEC_IDS["lz4"]}, codecs
    # the monitor's alert events
    sink = KafkaAlertSink(
        {"bootstrap_servers": [kafka_bootstrap]}, alerts, "zeroproof-monitor", 30.0, compression="zstd"
    )
    t0 = time.time()
    sink.emit(Alert("coverage_low", "firing", "v1", 0.8, 0.9, 0.92, "5m", 300.0, t0, t0, t0, volume=5000))
    sink.close()
    (n, codec), *_ = stored_batches(kafka_bootstrap, alerts, 0, 0, 1).values()
    assert (n, codec) == (1, CODEC_IDS["zstd"])
    events = TopicReader(kafka_bootstrap, alerts)
    try:
        assert [json.loads(r.value)["rule"] for r in events.read_until(lambda rs: len(rs) >= 1, 30)] == ["coverage_low"]
    finally:
        events.close()
