"""The seed page's (shared/spec/inference-and-deployment.txt) inference, export, IEEE, coverage and monitoring
snippets, run as written. `model` is a projective model returning (N, D) unless the page wraps it."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from zeroproof.layers import ProjectiveMLP, known_pole_model

pytestmark = pytest.mark.unit


@pytest.fixture
def model() -> torch.nn.Module:
    return known_pole_model(0.5)


@pytest.fixture
def x() -> torch.Tensor:
    return torch.tensor([[0.5], [0.50001], [0.0], [2.0]])


def test_using_strict_inference(model: torch.nn.Module, x: torch.Tensor) -> None:
    from zeroproof.inference import InferenceConfig, strict_inference

    # Configure thresholds
    config = InferenceConfig(
        tau_infer=1e-6,  # Strict singularity threshold
        tau_train=1e-4,  # Training margin (for gap detection)
    )
    # Decode projective outputs
    N, D = model(x)  # Projective model outputs ⟨N,D⟩
    decoded, bottom_mask, gap_mask = strict_inference(N, D, config=config)
    # Handle outputs
    valid_predictions = decoded[~bottom_mask & ~gap_mask]
    singular_cases = decoded[bottom_mask]
    risky_cases = decoded[gap_mask]  # In training-inference gap
    assert valid_predictions.tolist() == pytest.approx([-2.0, 2 / 3])
    assert singular_cases.numel() == 1 and torch.isnan(singular_cases).all()
    assert risky_cases.numel() == 1 and torch.isfinite(risky_cases).all()

    # Conservative approach
    fallback_value = torch.zeros_like(decoded)
    safe_mask = ~bottom_mask & ~gap_mask
    final_output = torch.where(safe_mask, decoded, fallback_value)
    assert torch.isfinite(final_output).all()


def test_wrapper_classes(model: torch.nn.Module, x: torch.Tensor) -> None:
    from zeroproof.inference import InferenceConfig, SCMInferenceWrapper

    # Wrap trained model
    wrapped_model = SCMInferenceWrapper(model, config=InferenceConfig(tau_infer=1e-6, tau_train=1e-4))
    # Use like normal PyTorch model
    wrapped_model.eval()
    with torch.no_grad():
        decoded, bottom_mask, gap_mask = wrapped_model(x)
    assert bottom_mask.squeeze(1).tolist() == [True, False, False, False]
    assert gap_mask.squeeze(1).tolist() == [False, True, False, False]


def test_batch_processing_as_defined_on_the_page(model: torch.nn.Module) -> None:
    from zeroproof.inference import InferenceConfig, SCMInferenceWrapper

    def batch_inference(model, data_loader, config):  # type: ignore[no-untyped-def]
        """Safe batch inference with coverage tracking."""
        all_outputs = []
        all_bottom_masks = []
        all_gap_masks = []
        model.eval()
        with torch.no_grad():
            for batch_x in data_loader:
                decoded, bottom_mask, gap_mask = model(batch_x)
                all_outputs.append(decoded)
                all_bottom_masks.append(bottom_mask)
                all_gap_masks.append(gap_mask)
        outputs = torch.cat(all_outputs)
        bottom_masks = torch.cat(all_bottom_masks)
        gap_masks = torch.cat(all_gap_masks)
        # Coverage metrics
        coverage = (~bottom_masks).float().mean()
        gap_rate = gap_masks.float().mean()
        return outputs, bottom_masks, gap_masks, coverage, gap_rate

    from zeroproof.inference import batch_inference as library_batch_inference

    config = InferenceConfig()
    loader = [torch.linspace(-1, 2, 301).unsqueeze(1)[i : i + 50] for i in range(0, 301, 50)]
    page = batch_inference(SCMInferenceWrapper(model, config=config), loader, config)
    ours = library_batch_inference(SCMInferenceWrapper(model, config=config), loader, config)
    assert torch.equal(page[1], ours[1]) and torch.equal(page[2], ours[2])
    assert page[3] == ours[3] and page[4] == ours[4]
    assert page[1].sum() == 1  # x = 0.5 is on the grid


def test_torchscript_snippet(tmp_path: Path, x: torch.Tensor, monkeypatch: pytest.MonkeyPatch) -> None:
    from zeroproof.inference import InferenceConfig, SCMInferenceWrapper

    model = SCMInferenceWrapper(known_pole_model(0.5), config=InferenceConfig())
    monkeypatch.chdir(tmp_path)
    # Ensure model is in eval mode
    model.eval()
    # Script the model
    scripted_model = torch.jit.script(model)
    # Save
    torch.jit.save(scripted_model, "model.pt")
    # Load and use
    loaded_model = torch.jit.load("model.pt")
    with torch.no_grad():
        output = loaded_model(x)
    decoded, bottom_mask, gap_mask = output
    assert bottom_mask.squeeze(1).tolist() == [True, False, False, False]


def test_onnx_export_snippet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxscript")  # torch's default (dynamo) exporter needs it
    ort = pytest.importorskip("onnxruntime")
    input_dim = 4
    model = ProjectiveMLP(input_dim, 2)
    monkeypatch.chdir(tmp_path)
    import torch.onnx

    # Prepare dummy input
    dummy_input = torch.randn(1, input_dim)
    # Export
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            dummy_input,
            "model.onnx",
            export_params=True,
            opset_version=14,
            input_names=["input"],
            output_names=["numerator", "denominator"],
            dynamic_axes={
                "input": {0: "batch_size"},
                "numerator": {0: "batch_size"},
                "denominator": {0: "batch_size"},
            },
        )
    session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
    x = torch.randn(5, input_dim)
    N, D = session.run(None, {"input": x.numpy()})
    ref_n, ref_d = model(x)
    assert torch.allclose(torch.from_numpy(N), ref_n, atol=1e-5) and torch.allclose(torch.from_numpy(D), ref_d)


def test_ieee_bridge_snippets(model: torch.nn.Module, x: torch.Tensor) -> None:
    from zeroproof.inference import strict_inference
    from zeroproof.utils.ieee_bridge import to_ieee

    decoded, bottom_mask, _ = strict_inference(*model(x))
    # Convert SCM outputs to IEEE (⊥ → NaN)
    ieee_output = to_ieee(decoded, bottom_mask)
    # Use with standard libraries
    import numpy as np

    numpy_array = ieee_output.detach().cpu().numpy()
    assert np.isnan(numpy_array[0, 0]) and np.isfinite(numpy_array[1:]).all()

    from zeroproof.utils.ieee_bridge import from_ieee

    # Convert IEEE floats to SCM (NaN/Inf → ⊥)
    scm_value, bottom_mask = from_ieee(torch.tensor([1.0, float("nan"), float("inf")]))
    assert bottom_mask.tolist() == [False, True, True]


def test_pre_deployment_coverage_and_gap_checks(model: torch.nn.Module) -> None:
    from zeroproof.inference import InferenceConfig, SCMInferenceWrapper, strict_inference
    from zeroproof.losses.coverage import coverage_metric

    config = InferenceConfig()
    test_data = torch.linspace(-1, 2, 3001).unsqueeze(1)
    wrapped = SCMInferenceWrapper(model, config=config).eval()
    # Validate on held-out test set
    _, bottom_mask, _ = wrapped(test_data)
    test_coverage = coverage_metric(bottom_mask)
    assert test_coverage >= 0.95, f"Coverage too low: {test_coverage:.3f}"

    N, D = model(test_data)
    _, _, gap_mask = strict_inference(N, D, config)
    gap_rate = gap_mask.float().mean()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if gap_rate > 0.05:
            warnings.warn(f"High gap rate: {gap_rate:.3f}. Consider retraining.", stacklevel=1)
    assert not caught


def test_production_monitoring(model: torch.nn.Module) -> None:
    from zeroproof import SCMInferenceWrapper, SCMMonitor

    monitor = SCMMonitor()
    wrapped = SCMInferenceWrapper(model).eval()
    for start in (-1.0, 0.0, 1.0):
        _, bottom_mask, gap_mask = wrapped(torch.linspace(start, start + 1, 1001).unsqueeze(1))
        monitor.update(bottom_mask, gap_mask)
    report = monitor.report()
    assert set(report) == {"coverage", "bottom_rate", "gap_rate", "total_predictions"}
    assert report["total_predictions"] == 3003
    assert report["coverage"] == pytest.approx(1 - report["bottom_rate"] - report["gap_rate"])
