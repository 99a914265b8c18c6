"""Bad input: a corpus of ≥ 10,000 malformed messages interleaved with valid ones through a real worker, and
hypothesis fuzzing of the worker's parse → validate → infer → route path against an independent oracle."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.load import produce_located, scrape
from harness.worker import TopicReader, Topics, WorkerProc, feature_for, known_pole_bundle, msg, rec, worker_env
from tests.reliability.corpus import RARE, corpus
from tests.reliability.figures import record
from workers.fallback import build_chain
from workers.model import ModelRuntime, load_runtime
from workers.pipeline import PipelineConfig, Routing, process_batch
from workers.records import DLQ_REASONS
from workers.settings import WorkerSettings

N_BAD = 10_000
N_GOOD = 5_000


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_malformed_corpus_all_in_dlq_valid_all_processed(
    kafka_bootstrap: str, redis_url: str, bundle: Path, topics: Topics, tmp_path: Path
) -> None:
    bad = corpus(N_BAD)
    good = [msg(f"ok-{i}", feature_for(i)) for i in range(N_GOOD)]
    # interleave: two malformed, one valid
    items: list[tuple[str, int]] = []
    gi = 0
    for bi in range(N_BAD):
        items.append(("bad", bi))
        if bi % 2 == 1 and gi < N_GOOD:
            items.append(("good", gi))
            gi += 1
    items += [("good", g) for g in range(gi, N_GOOD)]
    payloads = [(f"robot-{n % 8}".encode(), bad[i].value if k == "bad" else good[i]) for n, (k, i) in enumerate(items)]
    t0 = time.monotonic()
    where = produce_located(kafka_bootstrap, topics.inputs, payloads, max_request_size=8 * 2**20)
    produce_s = time.monotonic() - t0
    bad_at = {where[n]: bad[i] for n, (k, i) in enumerate(items) if k == "bad"}
    good_at = {where[n]: f"ok-{i}" for n, (k, i) in enumerate(items) if k == "good"}
    w = WorkerProc(worker_env(kafka_bootstrap, redis_url, bundle, topics), tmp_path / "w.log")
    dlq_reader, out_reader = TopicReader(kafka_bootstrap, topics.dlq), TopicReader(kafka_bootstrap, topics.outputs)
    try:
        t1 = time.monotonic()
        # read both until complete, or until nothing new arrives for 30 s (a stuck worker fails fast)
        last_progress, last_count = time.monotonic(), -1
        while time.monotonic() - last_progress < 30 and time.monotonic() - t1 < 140:
            out_reader.read_until(lambda rs: len(rs) >= N_GOOD, 0.5)
            dlq_reader.read_until(lambda rs: len(rs) >= N_BAD, 0.5)
            count = len(out_reader.records) + len(dlq_reader.records)
            if count >= N_GOOD + N_BAD:
                break
            if count != last_count:
                last_progress, last_count = time.monotonic(), count
        stuck = [e for e in w.events() if e.get("event") == "send_failed_resending"]
        assert len(out_reader.records) >= N_GOOD and len(dlq_reader.records) >= N_BAD, (
            len(out_reader.records),
            len(dlq_reader.records),
            stuck[-1:] or w.log_tail(),
        )
        process_s = time.monotonic() - t1
        assert w.proc.poll() is None, w.log_tail()
        dlq = [json.loads(r.value) for r in dlq_reader.records]
        by_src = {(d["partition"], d["offset"]): d for d in dlq}
        assert all(d["topic"] == topics.inputs for d in dlq)
        assert set(by_src) == set(bad_at), (len(by_src), len(bad_at))
        wrong_reason: list[tuple[str, str]] = []
        reasons: Counter[str] = Counter()
        by_kind: dict[str, Counter[str]] = {}
        truncated = 0
        for src, b in bad_at.items():
            d = by_src[src]
            assert d["reason"] in DLQ_REASONS and d["detail"], d
            kept = base64.b64decode(d["original_b64"])
            if d.get("original_truncated"):  # very large originals: a prefix plus the size and checksum
                assert b.value.startswith(kept) and d["original_size"] == len(b.value), d.keys()
                assert d["original_sha256"] == hashlib.sha256(b.value).hexdigest()
                truncated += 1
            else:
                assert kept == b.value  # the original bytes, intact
            reasons[d["reason"]] += 1
            by_kind.setdefault(b.kind, Counter())[d["reason"]] += 1
            if b.expected is not None and d["reason"] != b.expected:
                wrong_reason.append((b.kind, d["reason"]))
        assert not wrong_reason, Counter(wrong_reason)
        outs = out_reader.json()
        got = {(o["partition"], o["offset"]): o["id"] for o in outs}
        assert got == good_at
        metrics = scrape(w.metrics_port)
        assert metrics.get("zeroproof_worker_messages_in_total", 0) >= len(items)
        events = w.events()
        assert not [e for e in events if e.get("event") in ("worker_crashed", "revoke_failed")]
        assert w.terminate() == 0
        record(
            "bad_input_corpus",
            {
                "malformed": len(bad_at),
                "valid": len(good_at),
                "kinds": len(by_kind),
                "malformed_in_dlq": len(set(by_src) & set(bad_at)),
                "malformed_with_expected_reason_checked": sum(1 for b in bad_at.values() if b.expected),
                "malformed_missing_from_dlq": len(set(bad_at) - set(by_src)),
                "dlq_originals_truncated": truncated,
                "valid_processed": len(got),
                "valid_missing": len(set(good_at) - set(got)),
                "worker_crashes": 0,
                "worker_exit_code": 0,
                "large_messages": dict(RARE),
                "largest_message_bytes": max(len(b.value) for b in bad),
                "dlq_reasons": dict(sorted(reasons.items())),
                "dlq_reasons_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
                "produce_s": round(produce_s, 2),
                "process_s": round(process_s, 2),
            },
        )
    finally:
        w.kill()
        dlq_reader.close()
        out_reader.close()


# --- fuzzing the worker's message path (in process: no broker) ---------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelRuntime, Routing, PipelineConfig]:
    path = known_pole_bundle(tmp_path_factory.mktemp("fuzz") / "kp.zpb")
    s = WorkerSettings(model=path)
    routing = Routing(s.policy_ok, s.policy_gap, s.policy_bottom, build_chain(s))
    return load_runtime(s), routing, PipelineConfig("out", "dlq", "fallback", "fuzz-worker")


class _NonFiniteError(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteError(name)


def oracle(raw: bytes) -> str:
    """What contract §3 says should happen to ``raw`` (written independently of the worker's code):
    ``"output"`` or the DLQ reason family (``empty`` | ``invalid_json`` | ``non_finite_literal`` | ``invalid``)."""
    if not raw:
        return "empty"
    try:
        doc = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except _NonFiniteError:
        # Python's parser meets the constant before what follows it: b'[NaN625]' is invalid JSON, not a NaN
        try:
            json.loads(raw.decode("utf-8"), parse_constant=lambda _: None)
        except (ValueError, RecursionError):
            return "invalid_json"
        return "non_finite_literal"
    except (UnicodeDecodeError, ValueError, RecursionError):
        return "invalid_json"

    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    def finite(v: Any) -> bool:
        return not isinstance(v, float) or math.isfinite(v)

    if not isinstance(doc, dict):
        return "invalid"
    if "id" not in doc or "features" not in doc:
        return "invalid"
    i, f = doc["id"], doc["features"]
    if not isinstance(i, str) or not 1 <= len(i) <= 512:
        return "invalid"
    if not isinstance(f, list) or not f or not all(v is None or number(v) for v in f):
        return "invalid"
    if not all(finite(v) for v in f if v is not None):
        return "non_finite_literal"
    e = doc.get("entity")
    if e is not None and (not isinstance(e, str) or len(e) > 512):
        return "invalid"
    ts = doc.get("ts")
    if ts is not None and not number(ts):
        return "invalid"
    if ts is not None and not finite(ts):
        return "non_finite_literal"
    labels = doc.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        return "invalid"
    if len(f) != 1:  # the known-pole model takes one feature
        return "invalid"
    return "output"


def run_one(served: tuple[ModelRuntime, Routing, PipelineConfig], raw: bytes) -> tuple[str, dict[str, Any]]:
    runtime, routing, cfg = served
    out = process_batch([rec(raw, 0)], runtime, routing, cfg)
    outputs = [orjson.loads(s.value) for s in out.delivery.sends if s.topic == "out"]
    dlqs = [orjson.loads(s.value) for s in out.delivery.sends if s.topic == "dlq"]
    assert len(outputs) + len(dlqs) == 1, (raw[:200], out.delivery.sends)
    if dlqs:
        d = dlqs[0]
        assert d["reason"] in DLQ_REASONS and d["detail"]
        assert base64.b64decode(d["original_b64"]) == raw
        assert not out.delivery.reviews
        return d["reason"], d
    o = outputs[0]
    # the strict decode's invariants, as they reach the wire
    assert len(o["value"]) == len(o["bottom"]) == len(o["gap"]) == 1
    for v, b, g in zip(o["value"], o["bottom"], o["gap"], strict=True):
        assert not (b and g)
        assert (v is None) == b
        assert b or math.isfinite(v)
    assert o["status"] == ("bottom" if any(o["bottom"]) else "gap" if any(o["gap"]) else "ok")
    assert (len(out.delivery.reviews) == 1) == (o["status"] == "bottom")
    return "output", o


_SCHEMA_FAULTS = ("wrong_type", "missing_field", "wrong_feature_count", "non_finite_literal")


def f32_finite(v: Any) -> bool:
    if v is None:
        return False
    try:
        f = float(v)
    except OverflowError:
        return False
    with np.errstate(over="ignore"):
        return bool(np.isfinite(np.float32(f)))


def agree(expected: str, got: str) -> bool:
    """Output vs DLQ must match exactly, and so must ``empty`` and ``invalid_json``; a message with several
    schema faults (say no id *and* a NaN) may be reported under any one of them."""
    if expected in ("invalid", "non_finite_literal"):
        return got in _SCHEMA_FAULTS
    return got == expected


_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
_json = st.recursive(
    _scalar,
    lambda kids: st.one_of(st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=6), kids, max_size=4)),
    max_leaves=12,
)
_feature = st.one_of(
    st.none(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=0.5 - 1e-3, max_value=0.5 + 1e-3),  # near the pole: ⊥ and gap
    st.just(0.5),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.booleans(),
    st.text(max_size=3),
)
_valid_message = st.fixed_dictionaries(
    {
        "id": st.text(min_size=1, max_size=20),
        "features": st.lists(
            st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.just(0.5)), min_size=1, max_size=1
        ),
    },
    optional={
        "entity": st.one_of(st.none(), st.text(max_size=5)),
        "ts": st.floats(allow_nan=False, allow_infinity=False),
        "labels": st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
        "extra": _json,
    },
)
_any_message = st.fixed_dictionaries(
    {},
    optional={
        "id": st.one_of(st.text(max_size=600), st.integers(), st.none()),
        "features": st.one_of(st.lists(_feature, max_size=3), _json),
        "entity": st.one_of(st.none(), st.text(max_size=5), st.integers()),
        "ts": st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=3)),
        "labels": st.one_of(st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3), _json),
        "extra": _json,
    },
)
_message = st.one_of(_valid_message, _any_message)

_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
seen: Counter[str] = Counter()


@_FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_never_crash_and_match_oracle(
    served: tuple[ModelRuntime, Routing, PipelineConfig], raw: bytes
) -> None:
    got, _ = run_one(served, raw)
    seen["bytes:" + got] += 1
    assert agree(oracle(raw), got), (raw, oracle(raw), got)


@_FUZZ
@given(doc=_message, mutate=st.sampled_from(["none", "nan", "inf", "truncate", "flip"]), pos=st.integers(0, 10**6))
def test_fuzz_message_like_json_matches_oracle(
    served: tuple[ModelRuntime, Routing, PipelineConfig], doc: dict[str, Any], mutate: str, pos: int
) -> None:
    raw = json.dumps(doc).encode()
    if mutate == "nan" and b"0.5" in raw:
        raw = raw.replace(b"0.5", b"NaN", 1)
    elif mutate == "inf" and b"]" in raw:
        raw = raw.replace(b"]", b", -Infinity]", 1)
    elif mutate == "truncate":
        raw = raw[: pos % (len(raw) + 1)]
    elif mutate == "flip" and raw:
        b = bytearray(raw)
        b[pos % len(b)] ^= 0x80
        raw = bytes(b)
    got, _ = run_one(served, raw)
    seen["json:" + got] += 1
    assert agree(oracle(raw), got), (raw[:300], oracle(raw), got)


@_FUZZ
@given(x=st.lists(st.one_of(st.none(), st.floats(width=64), st.integers(-(2**1100), 2**1100)), min_size=1, max_size=1))
def test_fuzz_valid_messages_decode_strictly(
    served: tuple[ModelRuntime, Routing, PipelineConfig], x: list[Any]
) -> None:
    """Any number the JSON can carry (huge ints, subnormals, near-pole values): an output obeying the strict
    decode's invariants, never a crash; an input that is not finite in float32 is a ⊥ input."""
    raw = json.dumps({"id": "v", "features": x}, allow_nan=True).encode()
    got, o = run_one(served, raw)
    v = x[0]
    if isinstance(v, float) and not math.isfinite(v):
        assert got == "non_finite_literal"
        return
    assert got == "output", o
    if not f32_finite(v):
        assert o["status"] == "bottom"
    seen["valid:" + o["status"]] += 1


@pytest.mark.parametrize("field", ["features", "ts"])
def test_integers_beyond_64_bits_are_served_not_crashed(
    served: tuple[ModelRuntime, Routing, PipelineConfig], field: str
) -> None:
    """Found by the fuzzer above: JSON allows integers of any size and pydantic accepts them as ``int``, but the
    output/review/fallback encoders (orjson) raise on integers beyond 64 bits, so ``process_batch`` raised and
    the worker died on the message, again after each restart (a poison pill). Contract: a number that does not
    fit is a ⊥ input (features) or still an answered message (ts), never a crash."""
    for big in (2**70, 10**400):  # beyond int64; the second also beyond float64
        doc: dict[str, Any] = {"id": "big", "features": [0.25]}
        doc[field] = [big] if field == "features" else big
        got, o = run_one(served, json.dumps(doc).encode())
        if field == "ts" and big > 2**1024:
            assert got == "output" or got == "wrong_type", got  # answered either way, never a crash
            continue
        assert got == "output", got
        if field == "features":
            # 2**70 ≈ 1.2e21 is an ordinary float32 input; 10**400 overflows float32 and is a ⊥ input.
            assert o["status"] == ("bottom" if big > 3.4e38 else "ok"), (big, o)


def test_nan_literal_in_an_unknown_field_goes_to_the_dlq(served: tuple[ModelRuntime, Routing, PipelineConfig]) -> None:
    """Found by the fuzzer: contract §3 sends a message that is not valid JSON, "NaN/Infinity literals
    included", to the DLQ; the validator ignores unknown fields, and its parser accepted literals there."""
    for raw in (b'{"id": "a", "features": [0.25], "extra": [NaN]}', b'{"id": "b", "features": [0.25], "x": -Infinity}'):
        got, _ = run_one(served, raw)
        assert got == "non_finite_literal", raw
    got, _ = run_one(served, b'{"id": "c", "features": [0.25], "note": "NaN and Infinity as text are fine"}')
    assert got == "output"


#: kafka-python's default max_request_size: a record above it can never be sent (MessageSizeTooLargeError).
MAX_REQUEST = 1_048_576


@pytest.mark.parametrize("field", ["labels", "extra", "id"])
def test_oversized_input_goes_to_dlq_and_every_record_is_sendable(
    served: tuple[ModelRuntime, Routing, PipelineConfig], field: str
) -> None:
    """Found by the corpus: a 1.2 MB input became a 2.8 MB DLQ record (base64 + text), and a schema-valid 1.1 MB
    input (labels are echoed in the output) a 1.1 MB output record: both over the producer's 1 MiB request
    limit, re-sent forever (non-retriable MessageSizeTooLargeError), their partition stuck. Inputs over
    the worker's size limit go to the DLQ (reason ``too_large``), and nothing the worker produces exceeds a
    produce request."""
    doc: dict[str, Any] = {"id": "big", "features": [0.5]}
    doc[field] = {"a": "x" * 1_100_000} if field == "labels" else "x" * 1_100_000
    runtime, routing, cfg = served
    out = process_batch([rec(json.dumps(doc).encode(), 0)], runtime, routing, cfg)
    assert all(len(s.value) + len(s.key or b"") < MAX_REQUEST for s in out.delivery.sends), [
        len(s.value) for s in out.delivery.sends
    ]
    (d,) = [orjson.loads(s.value) for s in out.delivery.sends if s.topic == "dlq"]
    assert d["reason"] == "too_large" and d["original_truncated"], d["reason"]
    assert not [s for s in out.delivery.sends if s.topic == "out"]


def test_fuzz_reaches_every_branch() -> None:
    """Runs after the fuzzers (same module, file order): the generators must have hit outputs and DLQ kinds,
    or the properties above proved little."""
    if not seen:
        pytest.skip("fuzzers not run in this session")
    assert seen["bytes:invalid_json"] > 0, seen
    assert seen["json:output"] > 0 and seen["json:wrong_type"] > 0 and seen["json:missing_field"] > 0
    assert seen["json:non_finite_literal"] > 0 and seen["json:invalid_json"] > 0
    assert seen["valid:bottom"] > 0 and seen["valid:ok"] > 0
    record("fuzz_message_path", {"examples_by_outcome": dict(sorted(seen.items())), "max_examples_per_property": 400})
