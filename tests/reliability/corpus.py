"""A corpus of malformed input messages (contract §3: each must land in the DLQ with a reason), by kind.

Deterministic for a seed. ``expected`` is the DLQ reason the worker must give, where the kind fixes it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from embedded.arm_events import MALFORMED_KINDS


@dataclass(frozen=True)
class Bad:
    kind: str
    value: bytes
    expected: str | None  # DLQ reason, where the kind determines it


def _id(rng: random.Random) -> str:
    return f"bad-{rng.randrange(10**9)}"


def _nested(depth: int) -> bytes:
    return b'{"id": "deep", "features": ' + b"[" * depth + b"0.1" + b"]" * depth + b"}"


def _kinds() -> dict[str, tuple[Callable[[random.Random], bytes], str | None]]:
    d = json.dumps
    return {
        "empty": (lambda r: b"", "empty"),
        "whitespace": (lambda r: b" \n\t ", "invalid_json"),
        "truncated_json": (
            lambda r: d({"id": _id(r), "features": [0.1]}).encode()[: r.randrange(1, 20)],
            "invalid_json",
        ),
        "garbage_bytes": (lambda r: bytes(r.randrange(256) for _ in range(r.randrange(1, 64))), None),
        "single_quotes": (lambda r: b"{'id': 'x', 'features': [0.1]}", "invalid_json"),
        "trailing_comma": (lambda r: b'{"id": "x", "features": [0.1,]}', "invalid_json"),
        "invalid_utf8": (
            lambda r: b'{"id": "\xff\xfe' + bytes([r.randrange(0x80, 0xC0)]) + b'", "features": [0.1]}',
            "invalid_json",
        ),
        "utf8_bom": (lambda r: b"\xef\xbb\xbf" + d({"id": _id(r), "features": [0.1]}).encode(), "invalid_json"),
        "nan_literal": (lambda r: b'{"id": "n", "features": [NaN]}', "non_finite_literal"),
        "infinity_literal": (
            lambda r: r.choice([b'{"id": "i", "features": [Infinity]}', b'{"id": "i", "features": [-Infinity]}']),
            "non_finite_literal",
        ),
        "overflow_literal": (lambda r: b'{"id": "o", "features": [1e400]}', "non_finite_literal"),
        "not_an_object": (lambda r: r.choice([b"[0.1]", b'"text"', b"42", b"null", b"true"]), "wrong_type"),
        "missing_id": (lambda r: d({"features": [0.1]}).encode(), "missing_field"),
        "missing_features": (lambda r: d({"id": _id(r)}).encode(), "missing_field"),
        "id_not_string": (
            lambda r: d({"id": r.choice([7, 1.5, True, None, [], {}]), "features": [0.1]}).encode(),
            "wrong_type",
        ),
        "id_empty": (lambda r: d({"id": "", "features": [0.1]}).encode(), "wrong_type"),
        "features_not_list": (
            lambda r: d({"id": _id(r), "features": r.choice(["0.1", 0.1, {"a": 1}, True])}).encode(),
            "wrong_type",
        ),
        "feature_string": (
            lambda r: d({"id": _id(r), "features": [r.choice(["0.1", "NaN", ""])]}).encode(),
            "wrong_type",
        ),
        "feature_bool": (lambda r: d({"id": _id(r), "features": [r.choice([True, False])]}).encode(), "wrong_type"),
        "feature_nested_list": (lambda r: d({"id": _id(r), "features": [[0.1]]}).encode(), "wrong_type"),
        "features_empty": (lambda r: d({"id": _id(r), "features": []}).encode(), "wrong_type"),
        "labels_wrong_type": (
            lambda r: d({"id": _id(r), "features": [0.1], "labels": r.choice([{"a": 1}, [1], "x"])}).encode(),
            "wrong_type",
        ),
        "entity_wrong_type": (
            lambda r: d({"id": _id(r), "features": [0.1], "entity": r.choice([1, [], {}])}).encode(),
            "wrong_type",
        ),
        "ts_wrong_type": (
            lambda r: d({"id": _id(r), "features": [0.1], "ts": r.choice(["now", [], True])}).encode(),
            "wrong_type",
        ),
        "wrong_feature_count": (
            lambda r: d({"id": _id(r), "features": [0.1] * r.randrange(2, 40)}).encode(),
            "wrong_feature_count",
        ),
        "huge_array": (lambda r: d({"id": _id(r), "features": [0.25] * 30_000}).encode(), "wrong_feature_count"),
        "deep_nesting": (lambda r: _nested(r.choice([200, 5_000, 20_000])), None),
        "oversized_id": (lambda r: d({"id": "x" * 1_200_000, "features": [0.1]}).encode(), "too_large"),
        # schema-valid but 1.1 MB (labels are echoed in the output): too large to answer, so the DLQ
        "oversized_labels": (
            lambda r: d({"id": _id(r), "features": [0.1], "labels": {"a": "x" * 1_100_000}}).encode(),
            "too_large",
        ),
    }


#: kinds whose messages are large: kept to a handful so the corpus stays quick to move through the broker.
RARE = {"huge_array": 12, "oversized_id": 3, "oversized_labels": 3, "deep_nesting": 30}


def corpus(n: int, seed: int = 7) -> list[Bad]:
    """``n`` malformed messages: every kind present, large ones capped (see ``RARE``), the rest spread evenly."""
    rng = random.Random(seed)
    kinds = _kinds()
    out: list[Bad] = []
    for kind, count in RARE.items():
        make, expected = kinds[kind]
        out += [Bad(kind, make(rng), expected) for _ in range(count)]
    common = [k for k in kinds if k not in RARE]
    while len(out) < n:
        kind = common[len(out) % len(common)]
        make, expected = kinds[kind]
        out.append(Bad(kind, make(rng), expected))
    rng.shuffle(out)
    return out


__all__ = ["MALFORMED_KINDS", "RARE", "Bad", "corpus"]
