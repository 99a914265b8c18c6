"""Wire schemas (contract §3). JSON, UTF-8. Inputs are validated; outputs/stats are produced by us.

The stats schema is the worker→monitor interface: one ``StatsMessage`` per processed batch. Outputs are built
as plain dicts on the hot path (a pydantic model per output would cost more than the model); ``OutputMessage``
documents and validates that shape for consumers and tests.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NotRequired

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, TypeAdapter, with_config
from typing_extensions import TypedDict

Status = Literal["ok", "gap", "bottom"]
Action = Literal["accept", "fallback", "reject"]
STATS_SCHEMA: Literal["zeroproof.stats/1"] = "zeroproof.stats/1"
OUTPUT_SCHEMA: Literal["zeroproof.output/1"] = "zeroproof.output/1"
DLQ_SCHEMA: Literal["zeroproof.dlq/1"] = "zeroproof.dlq/1"
#: The label value that stands for "every other value" once a label has too many (worker per batch, monitor per
#: model version): label cardinality stays bounded whatever the inputs carry.
OTHER_LABEL_VALUE = "__other__"


@with_config(ConfigDict(extra="ignore", allow_inf_nan=False))
class InputMessage(TypedDict):
    """``{"id": str, "features": [number|null, ...]}``; unknown fields ignored; ``null`` is a missing reading (⊥).

    Validated by :data:`INPUT` into a plain dict (the worker validates every message, and building a model
    instance per message cost ~30 % more than the dict); :func:`input_document` adds the defaults."""

    # Strict types: "1.5" (a string) or true (a bool) is a wrong type, not a number. allow_inf_nan=False: JSON
    # NaN/Infinity literals (and numbers that overflow a double) are a bad message.
    id: Annotated[StrictStr, Field(min_length=1, max_length=512)]
    features: Annotated[list[StrictFloat | StrictInt | None], Field(min_length=1)]
    entity: NotRequired[Annotated[StrictStr | None, Field(max_length=512)]]
    ts: NotRequired[StrictFloat | StrictInt | None]
    labels: NotRequired[dict[StrictStr, StrictStr]]


#: ``INPUT.validate_json(raw)`` → :class:`InputMessage`, or ``pydantic.ValidationError``
INPUT: TypeAdapter[InputMessage] = TypeAdapter(InputMessage)
#: the ``labels`` of a message that has none (shared: never changed)
NO_LABELS: dict[str, str] = {}


def input_document(msg: InputMessage) -> dict[str, Any]:
    """Every field of a validated input, defaults filled in (``entity``, ``ts``: null; ``labels``: {})."""
    return {
        "id": msg["id"],
        "features": msg["features"],
        "entity": msg.get("entity"),
        "ts": msg.get("ts"),
        "labels": msg.get("labels", NO_LABELS),
    }


class OutputMessage(BaseModel):
    """One per valid input on ``zeroproof.outputs`` (same Kafka key as the input).

    ``value`` is always the model's own strict decode (``null`` where ⊥). ``action`` says what the consumer
    should use: ``accept`` → ``value``; ``fallback`` → ``fallback_value`` from ``fallback_controller``
    (``null`` value when the controller is ``external``: the decision comes on ``zeroproof.fallback``'s
    consumer side); ``reject`` → nothing.
    """

    model_config = ConfigDict(extra="allow")

    schema_: Literal["zeroproof.output/1"] = Field(default=OUTPUT_SCHEMA, alias="schema")
    id: str
    entity: str | None
    value: list[float | None]
    bottom: list[bool]
    gap: list[bool]
    status: Status
    action: Action
    fallback_controller: str | None = None
    fallback_value: list[float | None] | None = None
    model_version: str
    tau_infer: float
    tau_train: float | None
    topic: str
    partition: int
    offset: int
    worker_id: str
    ts: float | None = None
    labels: dict[str, str] = Field(default_factory=dict)


class DLQMessage(BaseModel):
    """A message that could not be served, with the reason and where it came from.

    ``original_b64`` is the raw value in base64 (bytes may not be UTF-8), ``original_text`` the same when it is
    valid UTF-8. Originals above 256 KiB are truncated so that the record fits one produce request:
    ``original_truncated`` is then true, and ``original_size``/``original_sha256`` identify the whole message.
    ``key`` is the source Kafka key (as text); a key above 1 KiB is cut (``key_size``, ``key_sha256`` identify it)
    and the DLQ record's own Kafka key is then that sha256. Reason ``output_too_large``: the broker refused the
    record answering this input (``refused_kind``); ``original_*`` then describe that refused record.
    """

    schema_: Literal["zeroproof.dlq/1"] = Field(default=DLQ_SCHEMA, alias="schema")
    reason: str
    detail: str
    original_b64: str
    original_text: str | None
    original_size: int
    original_truncated: bool = False
    original_sha256: str | None = None
    topic: str
    partition: int
    offset: int
    key: str | None = None
    key_size: int | None = None
    key_sha256: str | None = None
    refused_kind: str | None = None
    worker_id: str


class Counts(BaseModel):
    """Per-message counts: ``total`` valid messages decoded, of which ``bottom``/``gap`` by status."""

    total: int = 0
    bottom: int = 0
    gap: int = 0
    fallback: int = 0
    rejected: int = 0


class ShadowCounts(BaseModel):
    """⊥/gap counts a candidate threshold pair would have produced on the same batch (not acted on).

    Counts are per message status (like ``Counts``); ``elements_*`` are per output element.
    """

    tau_infer: float
    tau_train: float | None
    total: int
    bottom: int
    gap: int
    elements_bottom: int = 0
    elements_gap: int = 0


class StatsMessage(BaseModel):
    """Published to ``zeroproof.stats`` once per batch; keyed by worker id.

    ``window_start``/``window_end``: epoch seconds spanned by the batch (first poll to publish).
    ``by_label``: ``{label_name: {label_value: Counts}}`` for the input labels the worker is told to break down;
    at most ``ZEROPROOF_STATS_MAX_LABEL_VALUES`` values per label (128 characters each), the rest pooled as
    ``__other__``. ``by_label_dropped``: the breakdown was removed because the broker refused the record.
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
    by_label_dropped: bool = False
    shadow: list[ShadowCounts] = Field(default_factory=list)
    batch_seq: int = 0
    partitions: dict[str, list[int]] = Field(default_factory=dict)
