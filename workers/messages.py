"""Wire schemas (contract §3). JSON, UTF-8. Inputs are validated; outputs/stats are produced by us.

The stats schema is the worker→monitor interface: one ``StatsMessage`` per processed batch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

Status = Literal["ok", "gap", "bottom"]
Action = Literal["accept", "fallback", "reject"]
STATS_SCHEMA = "zeroproof.stats/1"


class InputMessage(BaseModel):
    """``{"id": str, "features": [number|null, ...]}``; unknown fields are ignored. ``null`` is a missing reading (⊥)."""

    model_config = ConfigDict(extra="ignore")

    # Strict types: "1.5" (a string) or true (a bool) is a wrong type, not a number.
    id: StrictStr = Field(min_length=1, max_length=512)
    features: list[StrictFloat | StrictInt | None]
    entity: StrictStr | None = Field(default=None, max_length=512)
    ts: StrictFloat | StrictInt | None = None
    labels: dict[StrictStr, StrictStr] = Field(default_factory=dict)


class Counts(BaseModel):
    """Per-message counts: ``total`` valid messages decoded, of which ``bottom``/``gap`` by status."""

    total: int = 0
    bottom: int = 0
    gap: int = 0
    fallback: int = 0
    rejected: int = 0


class ShadowCounts(BaseModel):
    """⊥/gap counts a candidate threshold pair would have produced on the same batch (not acted on)."""

    tau_infer: float
    tau_train: float | None
    total: int
    bottom: int
    gap: int


class StatsMessage(BaseModel):
    """Published to ``zeroproof.stats`` once per batch; keyed by worker id.

    ``window_start``/``window_end``: epoch seconds spanned by the batch (first poll to publish).
    ``by_label``: ``{label_name: {label_value: Counts}}`` for the input labels the worker is told to break down.
    """

    model_config = ConfigDict(extra="ignore")

    schema_: Literal["zeroproof.stats/1"] = Field(default=STATS_SCHEMA, alias="schema")
    worker_id: str
    model_version: str
    tau_infer: float
    tau_train: float | None
    window_start: float
    window_end: float
    counts: Counts
    dlq: int = 0
    elements_total: int = 0
    elements_bottom: int = 0
    elements_gap: int = 0
    by_label: dict[str, dict[str, Counts]] = Field(default_factory=dict)
    shadow: list[ShadowCounts] = Field(default_factory=list)
