"""The served model's output contract: checked when the model is loaded (a 1- and a 2-row probe), and on every
batch, where a model whose output is wrong sends its inputs to the DLQ as ``model_output_invalid``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from harness.worker import known_pole_bundle, msg, rec
from tests.workers.bad_models import Good, Mismatch, Rank3, Squeezed, Wide40Good, Wide40Mismatch, Wide40Rank3, script
from workers.fallback import build_chain
from workers.model import ModelLoadError, ModelOutputError, ModelRuntime, check_output, load_runtime
from workers.pipeline import PipelineConfig, Routing, process_batch
from workers.records import DLQ_REASONS
from workers.settings import WorkerSettings
from zeroproof.export.loader import Servable
from zeroproof.inference import InferenceConfig

pytestmark = pytest.mark.unit
CFG = PipelineConfig("out", "dlq", "fb", "w-test")


def run(records: list[Any], rt: ModelRuntime, s: WorkerSettings) -> Any:
    return process_batch(records, rt, Routing(s.policy_ok, s.policy_gap, s.policy_bottom, build_chain(s)), CFG)


def dlq(out: Any) -> list[dict[str, Any]]:
    return [json.loads(x.value) for x in out.delivery.sends if x.topic == "dlq"]


@pytest.mark.parametrize(
    ("module", "words"),
    [
        (Rank3(), "shape (1, 1, 1), rank 3"),
        (Mismatch(), "N (1, 2) and D (1, 1) differ in shape"),
        (Squeezed(), "shape (), rank 0"),
    ],
    ids=["rank3", "mismatch", "squeezed"],
)
def test_torchscript_with_invalid_output_is_refused_at_load_in_one_line(
    tmp_path: Path, module: nn.Module, words: str
) -> None:
    path = script(module, tmp_path / "bad.pt")
    with pytest.raises(ModelLoadError) as info:
        load_runtime(WorkerSettings(model=path))
    text = str(info.value)
    assert "\n" not in text and str(path) in text and words in text, text
    assert "invalid output" in text


def test_bundle_width_is_probed_at_load(tmp_path: Path) -> None:
    """A bundle knows its width: the probe runs at that width (here a model swapped into a loaded runtime)."""
    from workers.model import check_model_output

    s = WorkerSettings(model=known_pole_bundle(tmp_path / "kp.zpb"))
    rt = load_runtime(s)
    assert rt.in_features == 1
    servable = Servable(Rank3Any(), None, "bad-1", "bundle", "0" * 64, 1, tmp_path / "kp.zpb")
    bad = ModelRuntime(servable, InferenceConfig(), torch.device("cpu"), 1, (0.0, 0), None)
    with pytest.raises(ModelLoadError, match="invalid output on a 1-feature input"):
        check_model_output(bad)


class Rank3Any(nn.Module):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.unsqueeze(-1), x.unsqueeze(-1)


def test_valid_torchscript_loads_and_first_width_still_wins(tmp_path: Path) -> None:
    rt = load_runtime(WorkerSettings(model=script(Good(), tmp_path / "good.pt")))
    assert rt.in_features is None  # the load-time probe checks the output; it does not pick the width
    assert not rt.accepts_width(2)
    assert rt.accepts_width(3) and rt.in_features == 3
    assert not rt.accepts_width(4)


def test_check_output_accepts_rank_1_and_2_only() -> None:
    N, D = check_output((torch.zeros(3), torch.ones(3)), 3)
    assert N.shape == (3, 1) and D.shape == (3, 1)
    for out, words in [
        (torch.zeros(3, 1), "must return a pair"),
        ((torch.zeros(3, 1), torch.ones(3, 1), torch.ones(3, 1)), "must return a pair"),
        ((torch.zeros(3, 1), [1.0]), "must be tensors"),
        ((torch.zeros(3, 1, dtype=torch.int64), torch.ones(3, 1, dtype=torch.int64)), "floating point"),
        ((torch.zeros(2, 1), torch.ones(2, 1)), "B = 3"),
        ((torch.zeros(3, 0), torch.ones(3, 0)), "no output element"),
    ]:
        with pytest.raises(ModelOutputError, match=words):
            check_output(out, 3)


def test_invalid_output_found_on_a_batch_goes_to_dlq_as_model_error_not_input_error(tmp_path: Path) -> None:
    """A TorchScript file whose width the load probe cannot find: the first batch finds the bad output. Every
    input of that width goes to the DLQ as ``model_output_invalid`` (never ``wrong_feature_count``), other inputs
    are handled as usual, and nothing raises."""
    s = WorkerSettings(model=script(Wide40Mismatch(), tmp_path / "wide.pt"))
    rt = load_runtime(s)  # no width in the probe's candidates: loads
    records = [rec(msg(i, [0.1] * 40), i) for i in range(3)] + [rec(b"{not json", 3)]
    for _ in range(2):  # and again on the next batch (the error is remembered, not re-probed)
        out = run(records, rt, s)
        reasons = {d["offset"]: d["reason"] for d in dlq(out)}
        assert reasons == {**dict.fromkeys(range(3), "model_output_invalid"), 3: "invalid_json"}
        detail = next(d["detail"] for d in dlq(out) if d["offset"] == 0)
        assert "N (1, 2) and D (1, 1) differ in shape" in detail
        assert out.stats.outputs == 0 and out.stats.dlq == {"model_output_invalid": 3, "invalid_json": 1}
        assert out.model_output_errors == [(detail, 3)]
        assert out.delivery.offsets[records[0].tp] == 4  # every record accounted for: committed, nothing lost
    assert "model_output_invalid" in DLQ_REASONS


def test_invalid_output_mid_run_never_crashes_the_batch(tmp_path: Path) -> None:
    """A served model (width known) whose output goes wrong on a batch: that group to the DLQ, no bisection."""
    s = WorkerSettings(model=known_pole_bundle(tmp_path / "kp.zpb"))
    calls = {"n": 0}

    class Flaky(nn.Module):
        def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
            calls["n"] += 1
            return x.unsqueeze(-1), x.unsqueeze(-1)

    servable = Servable(Flaky(), None, "flaky-1", "bundle", "0" * 64, 1, tmp_path / "kp.zpb")
    rt = ModelRuntime(servable, InferenceConfig(), torch.device("cpu"), 1, (0.0, 0), None)
    records = [rec(msg(i, [0.1]), i) for i in range(16)] + [rec(msg("w", [0.1, 0.2]), 16)]
    out = run(records, rt, s)
    assert out.stats.dlq == {"model_output_invalid": 16, "wrong_feature_count": 1}
    assert calls["n"] == 1  # one forward for the batch: a model error is not bisected row by row


def test_reload_refuses_a_model_with_invalid_output(tmp_path: Path) -> None:
    """Hot reload probes the new file at the width being served (here 40, which no load-time guess would try);
    a bad one is refused (``reload_failed``) and the old one serves on."""
    import structlog

    from tests.workers.test_worker_loop import FakeReviews
    from workers.metrics import WorkerMetrics
    from workers.transport.memory import InMemoryBroker, InMemoryConsumer, InMemoryProducer
    from workers.worker import Worker

    path = script(Wide40Good(), tmp_path / "m.pt")
    s = WorkerSettings(model=path, input_topic="in", reload_check_s=0)
    broker = InMemoryBroker(partitions=1)
    consumer = InMemoryConsumer(broker, "g")
    events: list[dict[str, Any]] = []

    def capture(_: Any, name: str, event: dict[str, Any]) -> dict[str, Any]:
        events.append(event)
        raise structlog.DropEvent

    log = structlog.wrap_logger(None, processors=[capture])
    rt = load_runtime(s)
    w = Worker(s, consumer, InMemoryProducer(broker), FakeReviews(), rt, build_chain(s), WorkerMetrics(), log)
    assert rt.accepts_width(40)  # what the first batch does
    script(Wide40Rank3(), path)
    w.reloader.maybe_reload(requested=True)
    assert w.runtime is rt
    failed = [e for e in events if e.get("event") == "reload_failed"]
    assert failed and "invalid output on a 40-feature input" in failed[0]["error"], events
    assert "rank 3" in failed[0]["error"] and failed[0]["keeping"] == rt.model_version
