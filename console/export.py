"""Export of reviewed inputs (records with a verdict): JSONL, and a dataset file for retraining and thresholds.

The dataset is an ``.npz`` that ``zeroproof validate --data`` and ``zeroproof calibrate --data`` read as they are
(``load_heldout``: ``x`` required, ``y`` optional, no pickles):

- ``x`` (B, F) float32: the input features, NaN for a missing reading (``null``);
- ``y`` (B, K) float64: the targets the verdicts imply: ``+inf`` (a genuine singularity) at the ⊥ elements of
  inputs judged "singular as expected", NaN ("no known value", excluded from every fit and metric) elsewhere,
  so ``calibrate`` reports, per candidate threshold, how many reviewed singular inputs would still be ⊥;
- ``verdict`` (B,) str, ``verdict_code`` (B,) int8 (index into ``verdict_names``), ``verdict_names``;
- ``id``, ``source``, ``model_version`` (B,) str, ``recorded_at`` (B,) float64, ``bottom`` (B, K) bool.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import orjson

from service.review import VERDICTS, RedisReviewStore, ReviewFilter, ReviewRecord

CHUNK = 500


class ExportError(ValueError):
    """The selection cannot be one dataset (say, two models with different feature counts)."""


def reviewed_sources(store: RedisReviewStore, flt: ReviewFilter, states: Sequence[str]) -> list[str]:
    """Sources of records with a verdict (or the filter's verdict) matching ``flt`` in ``states``, newest first
    within each state."""
    found: list[str] = []
    for state in states:
        f = dataclasses.replace(flt, state=state, verdict=flt.verdict or "*")
        found += store.query(f, 0, None)[1]
    return found


def iter_records(store: RedisReviewStore, sources: Sequence[str]) -> Iterator[ReviewRecord]:
    for start in range(0, len(sources), CHUNK):
        yield from store.get_many(sources[start : start + CHUNK])


def jsonl(store: RedisReviewStore, sources: Sequence[str]) -> Iterator[bytes]:
    """One JSON object per reviewed input: the record as ``zeroproof review show`` prints it."""
    for rec in iter_records(store, sources):
        yield orjson.dumps(rec.full(), option=orjson.OPT_SORT_KEYS) + b"\n"


def _feature(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else math.nan


def dataset(store: RedisReviewStore, sources: Sequence[str]) -> bytes:
    """The ``.npz`` described in the module docstring; :class:`ExportError` if the rows do not fit one array."""
    rows: list[list[float]] = []
    bottoms: list[list[bool]] = []
    verdicts: list[str] = []
    meta: dict[str, list[Any]] = {"id": [], "source": [], "model_version": [], "recorded_at": []}
    for rec in iter_records(store, sources):
        if rec.verdict is None:
            continue
        doc = rec.record
        rows.append([_feature(v) for v in (doc.get("input") or {}).get("features", [])])
        bottoms.append([bool(b) for b in doc.get("bottom", [])])
        verdicts.append(rec.verdict["verdict"])
        meta["id"].append(rec.id)
        meta["source"].append(rec.source)
        meta["model_version"].append(str(doc.get("model_version", "")))
        meta["recorded_at"].append(float(doc.get("recorded_at") or 0.0))
    if not rows:
        raise ExportError("no reviewed input (with a verdict) matches: nothing to export")
    widths = sorted({len(r) for r in rows})
    outputs = sorted({len(b) for b in bottoms})
    if len(widths) > 1 or len(outputs) > 1:
        versions = ", ".join(sorted(set(meta["model_version"])))
        raise ExportError(
            f"the selection mixes feature counts {widths} / output counts {outputs} (model versions: {versions}); "
            "filter by one model version"
        )
    x = np.asarray(rows, dtype=np.float32).reshape(len(rows), widths[0])
    bottom = np.asarray(bottoms, dtype=bool).reshape(len(rows), outputs[0])
    singular = np.asarray([v == "singular_as_expected" for v in verdicts], dtype=bool)
    y = np.full(bottom.shape, np.nan, dtype=np.float64)
    y[bottom & singular[:, None]] = np.inf
    names = list(VERDICTS)
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        x=x,
        y=y,
        bottom=bottom,
        verdict=np.asarray(verdicts, dtype=str),
        verdict_code=np.asarray([names.index(v) for v in verdicts], dtype=np.int8),
        verdict_names=np.asarray(names, dtype=str),
        id=np.asarray(meta["id"], dtype=str),
        source=np.asarray(meta["source"], dtype=str),
        model_version=np.asarray(meta["model_version"], dtype=str),
        recorded_at=np.asarray(meta["recorded_at"], dtype=np.float64),
    )
    return buf.getvalue()
