"""Pipeline (pure logic): validation → DLQ reasons, strict decode equal to the library, routing, shadow counts."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from harness.worker import known_pole_bundle, msg, rec
from service.wire import DLQMessage
from workers.fallback import build_chain
from workers.model import ModelRuntime, load_runtime
from workers.pipeline import PipelineConfig, Routing, process_batch
from workers.settings import WorkerSettings
from zeroproof.export import save_bundle
from zeroproof.export.loader import Servable
from zeroproof.inference import InferenceConfig, strict_inference
from zeroproof.layers import ProjectiveMLP

pytestmark = pytest.mark.unit
CFG = PipelineConfig("out", "dlq", "fb", "w-test", stats_labels=("site",), shadow_pairs=((1e-3, 1e-2),))


@pytest.fixture
def kp_settings(tmp_path: Path) -> WorkerSettings:
    return WorkerSettings(model=known_pole_bundle(tmp_path / "kp.zpb"))


def run(records: list[Any], s: WorkerSettings, runtime: ModelRuntime | None = None) -> Any:
    rt = runtime or load_runtime(s)
    routing = Routing(s.policy_ok, s.policy_gap, s.policy_bottom, build_chain(s))
    return process_batch(records, rt, routing, CFG)


def by_topic(out: Any, topic: str) -> list[dict[str, Any]]:
    return [json.loads(x.value) for x in out.delivery.sends if x.topic == topic]


def test_poison_messages_go_to_dlq_with_reason_and_source(kp_settings: WorkerSettings) -> None:
    bad = {
        1: (b"\xff\xfe", "invalid_json"),
        2: (b'{"id": "x", "features": [NaN]}', "non_finite_literal"),
        3: (b'{"id": "x", "features": [Infinity]}', "non_finite_literal"),
        4: (b'{"features": [1.0]}', "missing_field"),
        5: (b'{"id": "x"}', "missing_field"),
        6: (b'{"id": "x", "features": ["1.0"]}', "wrong_type"),
        7: (b'{"id": "x", "features": [true]}', "wrong_type"),
        8: (b'{"id": 5, "features": [1.0]}', "wrong_type"),
        9: (b'{"id": "x", "features": [1.0, 2.0]}', "wrong_feature_count"),
        10: (b"", "empty"),
        11: (b"[1, 2]", "wrong_type"),
        12: (b'{"id": "x", "features": []}', "wrong_type"),
    }
    records = [rec(msg("good", [0.1]), 0)] + [rec(v, off) for off, (v, _) in bad.items()]
    out = run(records, kp_settings)
    dlq = {d["offset"]: d for d in by_topic(out, "dlq")}
    assert set(dlq) == set(bad)
    for off, (raw, reason) in bad.items():
        assert dlq[off]["reason"] == reason, (off, dlq[off])
        assert base64.b64decode(dlq[off]["original_b64"]) == raw
        assert (dlq[off]["topic"], dlq[off]["partition"]) == ("in", 0)
        DLQMessage.model_validate(dlq[off])  # the documented schema is what we produce
    outputs = by_topic(out, "out")
    assert [o["id"] for o in outputs] == ["good"]  # the rest of the batch goes on
    assert out.delivery.offsets[records[0].tp] == 13  # every record is accounted for
    assert sum(out.stats.dlq.values()) == len(bad)


def test_known_pole_statuses_masks_and_review(kp_settings: WorkerSettings) -> None:
    xs = [0.1, 0.5, 0.50001, 2.0]
    records = [rec(msg(i, [x]), i) for i, x in enumerate(xs)] + [rec(msg("n", [None]), 4)]
    out = run(records, kp_settings)
    got = {o["id"]: o for o in by_topic(out, "out")}
    assert got["0"]["status"] == "ok" and got["0"]["action"] == "accept"
    assert got["1"]["status"] == "bottom" and got["1"]["value"] == [None] and got["1"]["bottom"] == [True]
    assert got["2"]["status"] == "gap" and got["2"]["gap"] == [True] and got["2"]["value"][0] is not None
    assert got["n"]["status"] == "bottom"  # a null feature is a ⊥ input
    # the model's own values equal the library's strict decode on the same inputs
    model = load_runtime(kp_settings).servable.model
    x = torch.tensor([[v] for v in xs], dtype=torch.float32)
    with torch.no_grad():
        N, D = model(x)
    dec, bot, gap = strict_inference(N, D, InferenceConfig())
    for i in range(len(xs)):
        o = got[str(i)]
        assert o["bottom"] == bot[i].tolist() and o["gap"] == gap[i].tolist()
        if not bot[i, 0]:
            assert o["value"][0] == float(dec[i, 0])
    assert sorted(r.input_id for r in out.delivery.reviews) == ["1", "n"]
    review = json.loads(out.delivery.reviews[0].record)
    assert {"input", "N", "D", "bottom", "gap", "model_version", "tau_infer", "tau_train", "offset"} <= set(review)
    assert out.stats.counts.total == 5 and out.stats.counts.bottom == 2 and out.stats.counts.gap == 1
    # shadow pair (1e-3, 1e-2): 0.50001 has |D| = 2e-5 < 1e-3, so it is ⊥ there
    assert out.stats.shadow[0].bottom == 3 and out.stats.shadow[0].total == 5


def test_default_policy_falls_back_and_keeps_model_value(kp_settings: WorkerSettings) -> None:
    records = [rec(msg("a", [0.1]), 0), rec(msg("b", [0.50001]), 1), rec(msg("c", [0.5], entity="other"), 2)]
    out = run(records, kp_settings)
    got = {o["id"]: o for o in by_topic(out, "out")}
    assert got["b"]["action"] == "fallback" and got["b"]["fallback_controller"] == "hold_last"
    assert got["b"]["fallback_value"] == got["a"]["value"]  # the last safe value of robot-1
    assert got["b"]["value"][0] > 1000  # the model's own (gap) value is kept beside it
    # entity "other" has no safe history: falls through to the external controller
    assert got["c"]["fallback_controller"] == "external" and got["c"]["fallback_value"] is None
    fb = by_topic(out, "fb")
    assert [f["id"] for f in fb] == ["c"] and fb[0]["status"] == "bottom"


def test_policies_reject_and_constant(tmp_path: Path) -> None:
    s = WorkerSettings(
        model=known_pole_bundle(tmp_path / "kp.zpb"),
        policy_gap="reject",
        fallback_controllers="constant",
        fallback_constant="0.0",
    )
    out = run([rec(msg("g", [0.50001]), 0), rec(msg("b", [0.5]), 1)], s)
    got = {o["id"]: o for o in by_topic(out, "out")}
    assert got["g"]["action"] == "reject" and got["g"]["fallback_value"] is None
    assert got["b"]["action"] == "fallback" and got["b"]["fallback_value"] == [0.0]
    assert got["b"]["fallback_controller"] == "constant"
    assert out.stats.counts.rejected == 1 and out.stats.counts.fallback == 1


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """The worker runs the model on one intra-op thread (ZEROPROOF_TORCH_THREADS=1). With several, a CPU GEMM
    may split its reductions differently from one call to the next, so two forwards of the same batch differ in
    the last bits (N/D magnifies that as 1/|D|, and without bound where N is near 0): this comparison failed
    once under load with the default thread count. One thread makes both forwards bit-identical."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.usefixtures("one_torch_thread")
def test_mlp_outputs_equal_offline_strict_inference(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ProjectiveMLP(4, 2, hidden=16, depth=2)
    with torch.no_grad():  # move the denominators around so that some land near zero
        model.head.denominator.weight.normal_(0, 1.0)
        model.head.denominator.bias.fill_(-0.2)
    path = tmp_path / "mlp.zpb"
    save_bundle(model, path, config=InferenceConfig(tau_infer=1e-3, tau_train=5e-2), model_version="mlp-1")
    s = WorkerSettings(model=path)
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 4)).astype(np.float32)
    records = [rec(msg(i, [float(v) for v in X[i]]), i) for i in range(len(X))]
    out = run(records, s)
    got = {int(o["id"]): o for o in by_topic(out, "out")}
    rt = load_runtime(s)
    with torch.no_grad():
        N, D = rt.servable.model(torch.from_numpy(X))
    dec, bot, gap = strict_inference(N, D, InferenceConfig(tau_infer=1e-3, tau_train=5e-2))
    assert len(got) == 300
    assert int(bot.sum()) > 0 or int(gap.sum()) > 0  # the test exercises the masks
    for i in range(300):
        assert got[i]["bottom"] == bot[i].tolist() and got[i]["gap"] == gap[i].tolist()
        for j, value in enumerate(got[i]["value"]):
            if bot[i, j]:
                assert value is None
            else:
                assert value == float(dec[i, j]), (i, j, float(D[i, j]))
        assert got[i]["model_version"] == "mlp-1" and got[i]["tau_infer"] == 1e-3


class _Picky(nn.Module):
    """Raises on any row containing 13 (a model bug on one input); OOMs on batches larger than 4."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("simulated")
        if bool((x == 13).any()):
            raise RuntimeError("model bug")
        return x.clone(), torch.ones_like(x)


def test_model_error_rows_go_to_dlq_and_oom_splits(tmp_path: Path) -> None:
    s = WorkerSettings(model=known_pole_bundle(tmp_path / "kp.zpb"))
    servable = Servable(_Picky(), None, "picky-1", "torchscript", "0" * 64, 1, tmp_path / "kp.zpb")
    rt = ModelRuntime(servable, InferenceConfig(), torch.device("cpu"), 1, (0.0, 0), None)
    records = [rec(msg(i, [13.0 if i == 7 else float(i + 100)]), i) for i in range(20)]
    out = run(records, s, rt)
    outs = {o["id"]: o for o in by_topic(out, "out")}
    assert len(outs) == 19 and "7" not in outs
    assert outs["5"]["value"] == [105.0]
    assert [d["offset"] for d in by_topic(out, "dlq")] == [7] and out.stats.dlq == {"model_error": 1}


def test_stats_by_label(kp_settings: WorkerSettings) -> None:
    records = [rec(msg(i, [0.5 if i == 0 else 0.1], labels={"site": "a" if i < 2 else "b"}), i) for i in range(4)]
    out = run(records, kp_settings)
    assert out.stats.by_label["site"]["a"].total == 2 and out.stats.by_label["site"]["a"].bottom == 1
    assert out.stats.by_label["site"]["b"].total == 2 and out.stats.by_label["site"]["b"].bottom == 0


#: The JSON parser's nesting limit inside a field (pydantic-core): documented in docs/worker.md, pinned here.
MAX_NESTING = 200


def test_nesting_beyond_the_parser_limit_is_invalid_json_even_in_an_unknown_field(
    kp_settings: WorkerSettings,
) -> None:
    def nested(depth: int) -> bytes:
        return b'{"id": "n", "features": [0.1], "extra": ' + b"[" * depth + b"]" * depth + b"}"

    out = run([rec(nested(MAX_NESTING), 0), rec(nested(MAX_NESTING + 1), 1)], kp_settings)
    assert [o["id"] for o in by_topic(out, "out")] == ["n"]
    [dlq] = by_topic(out, "dlq")
    assert (dlq["offset"], dlq["reason"]) == (1, "invalid_json") and "recursion limit" in dlq["detail"]


class _HalfPrecision(nn.Module):
    """N = x, D = x - 0.5 in a half-precision dtype: (x - 0.5) rounds to 0 near the pole."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.to(self.dtype)
        return x, x - 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_outputs_decode_as_the_library_decodes_them(tmp_path: Path, dtype: torch.dtype) -> None:
    """Outputs, masks and statuses of a half-precision model are the library's decode of its N and D, widened
    exactly (numpy has no bfloat16: the pipeline widens before leaving torch)."""
    s = WorkerSettings(model=known_pole_bundle(tmp_path / "kp.zpb"), tau_infer=1e-3, tau_train=1e-2)
    servable = Servable(_HalfPrecision(dtype), None, "half-1", "torchscript", "0" * 64, 1, tmp_path / "kp.zpb")
    rt = ModelRuntime(servable, InferenceConfig(tau_infer=1e-3, tau_train=1e-2), torch.device("cpu"), 1, (0.0, 0), None)
    xs = [0.5, 0.5004, 0.505, 0.75, 3.0]
    out = run([rec(msg(i, [x]), i) for i, x in enumerate(xs)], s, rt)
    x = torch.tensor([[v] for v in xs]).to(dtype)
    want_value, want_bottom, want_gap = strict_inference(x, x - 0.5, rt.config)
    outs = sorted(by_topic(out, "out"), key=lambda o: int(o["id"]))
    got_value = [o["value"][0] for o in outs]
    assert [o["bottom"] for o in outs] == want_bottom.tolist()
    assert [o["gap"] for o in outs] == want_gap.tolist()
    assert got_value == [
        None if b else v for v, b in zip(want_value.flatten().tolist(), want_bottom.flatten().tolist(), strict=True)
    ]
    statuses = [o["status"] for o in outs]
    assert "bottom" in statuses and "ok" in statuses
