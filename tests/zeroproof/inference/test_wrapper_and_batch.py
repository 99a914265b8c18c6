from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from zeroproof.inference import (
    InferenceConfig,
    SCMInferenceWrapper,
    StrictResult,
    batch_inference,
    strict_inference,
)
from zeroproof.layers import ProjectiveMLP, known_pole_model

pytestmark = pytest.mark.unit
CFG = InferenceConfig(tau_infer=1e-6, tau_train=1e-4)


def pole_inputs() -> torch.Tensor:
    # 0.5 is the pole (⊥); 0.50001 is 1e-5 away: |D| = 2e-5 is in the gap; the rest are ordinary.
    return torch.tensor([[0.5], [0.50001], [0.0], [1.5], [-3.0]])


def test_eval_mode_returns_strict_triple_train_mode_returns_pair() -> None:
    wrapped = SCMInferenceWrapper(known_pole_model(0.5), config=CFG)
    wrapped.eval()
    with torch.no_grad():
        out = wrapped(pole_inputs())
    assert isinstance(out, StrictResult)
    decoded, bottom, gap = out
    assert bottom.squeeze(1).tolist() == [True, False, False, False, False]
    assert gap.squeeze(1).tolist() == [False, True, False, False, False]
    assert decoded[2, 0].item() == pytest.approx(-2.0)  # 1/(0 - 0.5)
    assert decoded[3, 0].item() == pytest.approx(1.0)
    wrapped.train()
    N, D = wrapped(pole_inputs())
    assert D[0, 0].item() == 0.0 and N.requires_grad


def test_wrapper_behaves_like_a_module() -> None:
    wrapped = SCMInferenceWrapper(ProjectiveMLP(4, 2, hidden=8), config=CFG)
    assert sum(p.numel() for p in wrapped.parameters()) > 0
    clone = SCMInferenceWrapper(ProjectiveMLP(4, 2, hidden=8), config=CFG)
    clone.load_state_dict(wrapped.state_dict())
    x = torch.randn(10, 4)
    wrapped.eval()
    clone.eval()
    a, b = wrapped(x), clone(x)
    assert torch.equal(a.bottom_mask, b.bottom_mask) and torch.allclose(a.decoded, b.decoded, equal_nan=True)
    wrapped.to(torch.float64)
    assert wrapped(x.double()).decoded.dtype == torch.float64
    assert "tau_infer=1e-06" in repr(wrapped)
    # Gradients flow to the model through the projective pair in train mode.
    wrapped.train()
    N, D = wrapped(x.double())
    (N.sum() + D.sum()).backward()
    assert all(p.grad is not None for p in wrapped.parameters())


def test_default_config_is_contract_default() -> None:
    wrapped = SCMInferenceWrapper(known_pole_model())
    assert (wrapped.config.tau_infer, wrapped.config.tau_train) == (1e-6, 1e-4)


def test_batch_inference_matches_one_shot_decode_and_seed_tuple() -> None:
    x = torch.cat([pole_inputs(), torch.linspace(-2, 2, 95).unsqueeze(1)])
    loader = DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=16)
    wrapped = SCMInferenceWrapper(known_pole_model(0.5), config=CFG)
    outputs, bottom_masks, gap_masks, coverage, gap_rate = batch_inference(wrapped, loader, CFG)
    N, D = known_pole_model(0.5)(x)
    ref = strict_inference(N.detach(), D.detach(), CFG)
    assert torch.equal(bottom_masks, ref.bottom_mask) and torch.equal(gap_masks, ref.gap_mask)
    assert torch.allclose(outputs, ref.decoded, equal_nan=True)
    assert coverage.item() == pytest.approx(1 - ref.bottom_mask.float().mean().item())
    assert gap_rate.item() == pytest.approx(ref.gap_mask.float().mean().item())
    assert wrapped.training  # the caller's mode is restored


def test_batch_inference_takes_raw_models_and_plain_tensor_loaders() -> None:
    result = batch_inference(known_pole_model(0.5), [pole_inputs(), pole_inputs()], CFG)
    assert result.bottom_masks.sum().item() == 2
    assert result.accepted_rate.item() == pytest.approx(1 - 2 / 10 - 2 / 10)
    with pytest.raises(ValueError, match="no batches"):
        batch_inference(known_pole_model(0.5), [], CFG)
    with pytest.raises(TypeError, match="data loader"):
        batch_inference(known_pole_model(0.5), ["nope"], CFG)


class _Explodes(nn.Module):
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * math.inf, x


def test_wrapper_flags_nonfinite_model_outputs_as_bottom() -> None:
    wrapped = SCMInferenceWrapper(_Explodes(), config=CFG).eval()
    decoded, bottom, _ = wrapped(torch.tensor([1.0, 2.0]))
    assert bottom.all() and torch.isnan(decoded).all()
