"""Exported graphs keep the strict semantics: TorchScript and ONNX Runtime agree with eager PyTorch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.zeroproof.inference.test_decode import bits_equal, special_values
from zeroproof.export.check import (
    SemanticsReport,
    onnx_runtime,
    probe_decode_onnx,
    torchscript_runtime,
    verify_bottom_semantics,
)
from zeroproof.export.onnx import export_onnx
from zeroproof.export.torchscript import save_torchscript, script_strict
from zeroproof.inference import DecodeOnly, InferenceConfig, SCMInferenceWrapper, strict_inference
from zeroproof.layers import ProjectiveMLP, ProjectiveRationalLayer, known_pole_model

ort = pytest.importorskip("onnxruntime")
pytestmark = pytest.mark.unit
CFG = InferenceConfig(tau_infer=1e-6, tau_train=1e-4)


def pole_grid() -> torch.Tensor:
    x = torch.linspace(-1.5, 2.5, 4001, dtype=torch.float64).float()
    return torch.cat([x, torch.tensor([0.5, 0.50001, 0.49999, 0.5000001])]).unsqueeze(1)


def test_scripted_wrapper_round_trips_with_identical_outputs(tmp_path: Path) -> None:
    wrapped = SCMInferenceWrapper(known_pole_model(0.5), config=CFG).eval()
    scripted = torch.jit.script(wrapped)
    path = tmp_path / "model.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    x = pole_grid()
    with torch.no_grad():
        eager = wrapped(x)
        for out in (scripted(x), loaded(x)):
            decoded, bottom, gap = out
            assert torch.equal(bottom, eager.bottom_mask) and torch.equal(gap, eager.gap_mask)
            assert bits_equal(decoded, eager.decoded)
    assert eager.bottom_mask.any() and eager.gap_mask.any()


def test_scripted_projective_layer_round_trips(tmp_path: Path) -> None:
    layer = ProjectiveRationalLayer(3, 2, numerator_degree=2, denominator_degree=2, shared_denominator=True)
    with torch.no_grad():
        layer.denominator.weight.normal_()
    scripted = torch.jit.script(layer)
    torch.jit.save(scripted, str(tmp_path / "layer.pt"))
    loaded = torch.jit.load(str(tmp_path / "layer.pt"))
    x = torch.randn(32, 3)
    for a, b in zip(layer(x), loaded(x), strict=True):
        assert torch.equal(a, b)


def test_scripted_model_keeps_dtype_specific_thresholds() -> None:
    scripted = script_strict(known_pole_model(0.5).double(), CFG)
    x = pole_grid().double()
    with torch.no_grad():
        ref = SCMInferenceWrapper(known_pole_model(0.5).double(), CFG).eval()(x)
        got = scripted(x)
    assert torch.equal(got[1], ref.bottom_mask) and torch.equal(got[2], ref.gap_mask)


def test_onnx_export_of_wrapped_model_matches_eager(tmp_path: Path) -> None:
    path = tmp_path / "pole.onnx"
    names = export_onnx(SCMInferenceWrapper(known_pole_model(0.5), config=CFG), path, in_features=1)
    assert names[:3] == ["decoded", "bottom_mask", "gap_mask"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()][:3] == ["decoded", "bottom_mask", "gap_mask"]
    assert session.get_inputs()[0].shape[0] == "batch_size"  # dynamic batch axis
    for batch in (1, 7, 4005):
        x = pole_grid()[:batch]
        decoded, bottom, gap = (torch.from_numpy(a) for a in session.run(None, {"input": x.numpy()})[:3])
        with torch.no_grad():
            N, D = known_pole_model(0.5)(x)
        ref = strict_inference(N, D, CFG)
        assert torch.equal(bottom, ref.bottom_mask) and torch.equal(gap, ref.gap_mask)
        ok = ~ref.bottom_mask
        assert torch.equal(decoded[ok], ref.decoded[ok]) and torch.isnan(decoded[~ok]).all()


def test_onnx_mlp_export_passes_the_semantics_check(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = ProjectiveMLP(4, 2, hidden=32)
    with torch.no_grad():  # put real poles inside the input range
        model.head.denominator.weight.mul_(0).add_(torch.randn_like(model.head.denominator.weight) * 3)
    path = tmp_path / "mlp.onnx"
    export_onnx(model, path, in_features=4, config=CFG)
    x = torch.randn(5000, 4)
    report = verify_bottom_semantics(onnx_runtime(path), model, CFG, x, name="onnx")
    assert report.passed, report
    assert report.counts["bottom"] + report.counts["gap"] > 0  # the check saw near-pole values (seeded)
    assert report.checks["projective_pair_matches_eager"]


def test_semantics_check_fails_for_a_runtime_that_breaks_the_contract() -> None:
    model = known_pole_model(0.5)
    x = pole_grid()

    def ieee_runtime(inp: torch.Tensor) -> list[torch.Tensor]:  # plain division: no ⊥ at all
        N, D = model(inp)
        q = (N / D).detach()
        return [q, torch.zeros_like(q, dtype=torch.bool), torch.zeros_like(q, dtype=torch.bool)]

    report = verify_bottom_semantics(ieee_runtime, model, CFG, x, name="naive")
    assert isinstance(report, SemanticsReport) and not report.passed
    assert not report.checks["masks_bit_identical_to_eager"] and not report.checks["invariants_hold"]


def test_torchscript_file_passes_the_semantics_check(tmp_path: Path) -> None:
    model = known_pole_model(0.5)
    save_torchscript(model, tmp_path / "m.pt", CFG)
    report = verify_bottom_semantics(torchscript_runtime(tmp_path / "m.pt"), model, CFG, pole_grid(), name="ts")
    assert report.passed, report


def test_decode_probe_on_adversarial_pairs_passes() -> None:
    report = probe_decode_onnx(CFG)
    assert report.passed, report
    assert report.counts["bottom"] > 0 and report.counts["gap"] > 0


class _DecodeSession:
    def __init__(self, path: Path) -> None:
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, N: torch.Tensor, D: torch.Tensor) -> list[torch.Tensor]:
        outs = self.session.run(None, {"numerator": N.numpy(), "denominator": D.numpy()})
        return [torch.from_numpy(np.asarray(o)) for o in outs]


@pytest.fixture(scope="module")
def decode_session(tmp_path_factory: pytest.TempPathFactory) -> _DecodeSession:
    path = tmp_path_factory.mktemp("onnx") / "decode.onnx"
    N = torch.ones(2)
    torch.onnx.export(
        DecodeOnly(CFG),
        (N, N),
        str(path),
        opset_version=17,
        input_names=["numerator", "denominator"],
        output_names=["decoded", "bottom_mask", "gap_mask"],
        dynamic_axes={k: {0: "n"} for k in ("numerator", "denominator", "decoded", "bottom_mask", "gap_mask")},
        dynamo=False,
    )
    return _DecodeSession(path)


@settings(max_examples=80, deadline=None)
@given(
    pairs=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(special_values(torch.float32, CFG)), st.floats(width=32)),
            st.one_of(st.sampled_from(special_values(torch.float32, CFG)), st.floats(width=32)),
        ),
        min_size=1,
        max_size=50,
    )
)
def test_onnx_decode_equals_eager_on_arbitrary_pairs(
    decode_session: _DecodeSession, pairs: list[tuple[float, float]]
) -> None:
    N = torch.tensor([p[0] for p in pairs], dtype=torch.float32)
    D = torch.tensor([p[1] for p in pairs], dtype=torch.float32)
    decoded, bottom, gap = decode_session(N, D)
    ref = strict_inference(N, D, CFG, backend="eager")
    assert torch.equal(bottom, ref.bottom_mask) and torch.equal(gap, ref.gap_mask)
    ok = ~ref.bottom_mask
    assert torch.equal(decoded[ok], ref.decoded[ok])  # IEEE equality (onnxruntime may flip the sign of a zero)
    assert all(math.isnan(v) for v in decoded[~ok].tolist())
