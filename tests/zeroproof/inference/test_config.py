from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from zeroproof.inference import InferenceConfig, dtype_threshold

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau_infer": -1e-6}, ">= 0"),
        ({"tau_infer": math.nan}, "finite"),
        ({"tau_infer": math.inf}, "finite"),
        ({"tau_train": -1.0}, ">= 0"),
        ({"tau_train": math.inf}, "finite"),
        ({"tau_infer": 1e-3, "tau_train": 1e-4}, "tau_train"),
    ],
)
def test_invalid_thresholds_are_rejected_clearly(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        InferenceConfig(**kwargs)


def test_defaults_and_no_gap() -> None:
    cfg = InferenceConfig()
    assert (cfg.tau_infer, cfg.tau_train) == (1e-6, 1e-4)
    no_gap = InferenceConfig(tau_infer=1e-6, tau_train=None)
    assert no_gap.effective_tau_train == 1e-6
    assert InferenceConfig(tau_infer=0.0, tau_train=0.0).effective_tau_train == 0.0


def test_config_is_immutable() -> None:
    cfg = InferenceConfig()
    with pytest.raises(ValidationError):
        cfg.tau_infer = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.0, 1e-6, 1e-4, 0.1, 0.5, 1.0, 3.3e-9, 1e-45, 65504.0, 70000.0, 1e300])
def test_dtype_threshold_is_smallest_representable_at_or_above(dtype: torch.dtype, tau: float) -> None:
    t = dtype_threshold(tau, dtype)
    as_dtype = torch.tensor(t, dtype=torch.float64).to(dtype)
    assert float(as_dtype) == t  # representable
    assert t >= tau
    below = torch.nextafter(as_dtype, torch.tensor(-math.inf, dtype=dtype))
    assert float(below) < tau or t == 0.0  # nothing representable in [tau, t)


def test_dtype_threshold_rejects_non_float() -> None:
    with pytest.raises(TypeError):
        dtype_threshold(1e-6, torch.int32)
