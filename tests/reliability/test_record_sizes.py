"""Records the worker produces never exceed what the broker accepts (issue 12 §2), through a real worker process.

Each scenario is followed by ordinary inputs on the same partition: all of them must be answered and the
partition's committed offset must pass the hostile input. Before the fix: a 700 KB key made a 1.4 MB output,
a 600 KB-key malformed input a DLQ record over 1 MiB, sixteen 200 KB label values one stats record of several
MB; each was re-sent forever and 0 later inputs were answered. A record the broker refuses for its own reasons
(here a JSON schema on the output topic, which tansu enforces) is replaced by a DLQ record the same way.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.load import wait_until
from harness.services import create_topics, free_port, tansu_binary, wait_for_port
from harness.worker import TopicReader, Topics, WorkerProc, committed_offsets, msg, produce, worker_env
from tests.reliability.figures import record, worker_kafka_client

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LATER = 20


def later_inputs(tag: str) -> list[tuple[bytes, bytes]]:
    return [(b"arm-1", msg(f"{tag}-{i}", [0.1])) for i in range(LATER)]


@pytest.mark.timeout(180)
def test_huge_keys_and_label_values_never_stall_a_partition(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    env = worker_env(kafka_bootstrap, redis_url, bundle, topics, stats_labels="site")
    w = WorkerProc(env, tmp_path / "w.log", input_partitions=1)
    outs, dlq, stats = (TopicReader(kafka_bootstrap, t) for t in (topics.outputs, topics.dlq, topics.stats))
    figures: dict[str, object] = {}
    big = {"max_request_size": 4 * 2**20}  # the test producer may send what the worker refuses
    try:
        w.wait_event("partitions_assigned", 60)
        # a valid input with a 700 KB key, malformed ones with 600 KB and 200 KB keys, sixteen 200 KB label values
        produce(kafka_bootstrap, topics.inputs, [(b"k" * 700_000, msg("big-key", [0.1]))], **big)
        produce(kafka_bootstrap, topics.inputs, [(b"q" * 600_000, b"{not json")], **big)
        produce(kafka_bootstrap, topics.inputs, [(b"m" * 200_000, b"{not json")], **big)  # under the input limit
        produce(
            kafka_bootstrap,
            topics.inputs,
            [(b"arm-1", msg(f"site-{i}", [0.1], labels={"site": f"{i:02d}" + "s" * 200_000})) for i in range(16)],
            **big,
        )
        produce(kafka_bootstrap, topics.inputs, later_inputs("after"))
        total_inputs = 3 + 16 + LATER
        outs.read_until(lambda rs: len(rs) >= 16 + LATER, 90)
        dlq.read_until(lambda rs: len(rs) >= 3, 30)
        answered = {o["id"] for o in outs.json()}
        assert answered == {f"site-{i}" for i in range(16)} | {f"after-{i}" for i in range(LATER)}, w.log_tail()
        reasons = sorted(d["reason"] for d in dlq.json())
        assert reasons == ["invalid_json", "too_large", "too_large"]
        assert max(len(r.value) + len(r.key or b"") for r in dlq.records) < 8192
        assert wait_until(lambda: committed_offsets(kafka_bootstrap, topics).get(0) == total_inputs, 30)
        stats.read_until(lambda rs: sum(json.loads(r.value)["counts"]["total"] for r in rs) >= 16 + LATER, 30)
        biggest_stats = max(len(r.value) for r in stats.records)
        sites = {v for s in stats.json() for v in s["by_label"].get("site", {})}
        assert all(len(v) <= 128 for v in sites)
        assert biggest_stats < 64 * 1024, biggest_stats
        assert w.terminate() == 0
        figures = {
            "hostile_inputs": {
                "valid_700kb_key": 1,
                "malformed_600kb_key": 1,
                "malformed_200kb_key": 1,
                "label_values_200kb": 16,
            },
            "dlq_reasons": reasons,
            "largest_dlq_record_bytes": max(len(r.value) + len(r.key or b"") for r in dlq.records),
            "largest_output_record_bytes": max(len(r.value) + len(r.key or b"") for r in outs.records),
            "largest_stats_record_bytes": biggest_stats,
            "later_inputs_answered": f"{LATER}/{LATER}",
            "committed_offset": committed_offsets(kafka_bootstrap, topics).get(0),
            "inputs": total_inputs,
        }
        record("record_sizes", figures)
    finally:
        w.kill()
        for r in (outs, dlq, stats):
            r.close()


OUTPUT_SCHEMA = {  # tansu validates each record's value against <topic>.json: label values of 100 chars at most
    "type": "object",
    "properties": {
        "value": {
            "type": "object",
            "properties": {"labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 100}}},
        }
    },
}


@pytest.mark.timeout(120)
def test_a_record_the_broker_refuses_is_replaced_by_a_dlq_record(
    redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    schemas = tmp_path / "schema"
    schemas.mkdir()
    (schemas / f"{topics.outputs}.json").write_text(json.dumps(OUTPUT_SCHEMA))
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    cmd = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    cmd += ["--storage-engine", "memory://tansu/", "--schema-registry", "file://schema"]
    broker = subprocess.Popen(cmd, cwd=tmp_path, stdout=(tmp_path / "tansu.log").open("wb"), stderr=subprocess.STDOUT)
    bootstrap = f"127.0.0.1:{port}"
    w: WorkerProc | None = None
    readers: list[TopicReader] = []
    try:
        wait_for_port(port, proc=broker)
        # everything is on the topic before the worker starts: the refused output and the 20 after it leave in
        # one produce request, which the broker refuses as a whole (the neighbours must not be blamed)
        create_topics(bootstrap, {topics.inputs: 1})
        produce(bootstrap, topics.inputs, [(b"arm-1", msg("refused", [0.1], labels={"note": "n" * 500}))])
        produce(bootstrap, topics.inputs, later_inputs("after"))
        w = WorkerProc(worker_env(bootstrap, redis_url, bundle, topics), tmp_path / "w.log", input_partitions=1)
        outs, dlq = TopicReader(bootstrap, topics.outputs), TopicReader(bootstrap, topics.dlq)
        readers += [outs, dlq]
        outs.read_until(lambda rs: len(rs) >= LATER, 60)
        dlq.read_until(lambda rs: len(rs) >= 1, 30)
        assert {o["id"] for o in outs.json()} == {f"after-{i}" for i in range(LATER)}, w.log_tail()
        [d] = dlq.json()
        assert (d["reason"], d["refused_kind"], d["offset"]) == ("output_refused", "output", 0)
        # the broker's error as the client names it (kafka-python's exception class, librdkafka's error code)
        assert {"kafka-python": "InvalidRecord", "confluent": "INVALID_RECORD"}[worker_kafka_client()] in d["detail"]
        assert wait_until(lambda: committed_offsets(bootstrap, topics).get(0) == 1 + LATER, 30)
        replaced = w.wait_event("record_refused_replaced", 5)
        recreated = [e for e in w.events() if e.get("event") == "producer_recreated"]
        assert w.terminate() == 0
        record(
            "record_refused_by_broker",
            {
                "broker_error": d["detail"],
                "dlq_reason": d["reason"],
                "later_inputs_answered": f"{LATER}/{LATER}",
                "log_event": replaced["event"],
                "records_refused_replaced": replaced["refused_total"],
                "producer_recreated": [e["reason"] for e in recreated],
            },
        )
    finally:
        if w is not None:
            w.kill()
        for r in readers:
            r.close()
        broker.terminate()
        broker.wait(10)
