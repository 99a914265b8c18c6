"""Strict decode semantics (contract §1): oracle agreement, invariants, dtypes, shapes, backends."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.zeroproof.inference.oracle import decode_reference
from zeroproof.inference import InferenceConfig, StrictResult, decode_eager, strict_inference
from zeroproof.inference import fused as fused_mod
from zeroproof.inference.config import dtype_threshold

pytestmark = pytest.mark.unit

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
HAVE_NUMBA = fused_mod.available("cpu")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def special_values(dtype: torch.dtype, config: InferenceConfig) -> list[float]:
    info = torch.finfo(dtype)
    vals = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        2.5,
        info.tiny,
        -info.tiny,
        info.tiny / 8,
        info.max,
        -info.max,
        info.max / 3,
        info.eps,
        math.inf,
        -math.inf,
        math.nan,
    ]
    for tau in (config.tau_infer, config.effective_tau_train):
        t = torch.tensor(dtype_threshold(tau, dtype), dtype=dtype)
        for v in (t, torch.nextafter(t, torch.zeros((), dtype=dtype)), torch.nextafter(t, torch.ones((), dtype=dtype))):
            vals += [float(v), -float(v)]
    return vals


def element_strategy(dtype: torch.dtype, config: InferenceConfig) -> st.SearchStrategy[float]:
    width = {torch.float16: 16, torch.float32: 32, torch.float64: 64, torch.bfloat16: 32}[dtype]
    return st.one_of(
        st.sampled_from(special_values(dtype, config)),
        st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True, width=width),
        st.floats(min_value=-(2.0**-10), max_value=2.0**-10, width=width),
    )


def assert_matches_oracle(result: StrictResult, N: torch.Tensor, D: torch.Tensor, config: InferenceConfig) -> None:
    values, bottoms, gaps = decode_reference(N, D, config.tau_infer, config.tau_train)
    got_b = result.bottom_mask.reshape(-1).tolist()
    got_g = result.gap_mask.reshape(-1).tolist()
    got_v = result.decoded.reshape(-1).tolist()
    assert got_b == bottoms
    assert got_g == gaps
    for got, want, b in zip(got_v, values, bottoms, strict=True):
        if b:
            assert math.isnan(got)
        else:
            assert got == want and math.copysign(1, got) == math.copysign(1, want)


def assert_invariants(result: StrictResult) -> None:
    decoded, bottom, gap = result
    assert bottom.dtype == torch.bool and gap.dtype == torch.bool
    assert not (bottom & gap).any()
    assert torch.isfinite(decoded[~bottom]).all()
    assert torch.isnan(decoded[bottom]).all()


configs = st.sampled_from(
    [
        InferenceConfig(),
        InferenceConfig(tau_infer=0.0, tau_train=None),
        InferenceConfig(tau_infer=1e-3, tau_train=1e-3),
        InferenceConfig(tau_infer=1e-30, tau_train=0.5),
        InferenceConfig(tau_infer=2.0, tau_train=7.0),
    ]
)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), config=configs)
def test_eager_matches_oracle(dtype: torch.dtype, data: st.DataObject, config: InferenceConfig) -> None:
    pairs = data.draw(
        st.lists(st.tuples(element_strategy(dtype, config), element_strategy(dtype, config)), min_size=1, max_size=40)
    )
    N = torch.tensor([p[0] for p in pairs], dtype=torch.float64).to(dtype)
    D = torch.tensor([p[1] for p in pairs], dtype=torch.float64).to(dtype)
    result = strict_inference(N, D, config, backend="eager")
    assert_invariants(result)
    assert_matches_oracle(result, N, D, config)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=60, deadline=None)
@given(data=st.data(), config=configs)
def test_fused_is_bit_identical_to_eager(dtype: torch.dtype, data: st.DataObject, config: InferenceConfig) -> None:
    pairs = data.draw(
        st.lists(st.tuples(element_strategy(dtype, config), element_strategy(dtype, config)), min_size=0, max_size=64)
    )
    N = torch.tensor([p[0] for p in pairs], dtype=dtype)
    D = torch.tensor([p[1] for p in pairs], dtype=dtype)
    eager = strict_inference(N, D, config, backend="eager")
    fused = strict_inference(N, D, config, backend="fused")
    assert torch.equal(eager.bottom_mask, fused.bottom_mask)
    assert torch.equal(eager.gap_mask, fused.gap_mask)
    assert bits_equal(eager.decoded, fused.decoded)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Identical values including the sign of zero; NaN equals NaN (NaN payloads are not part of the contract)."""
    same = (a == b) & (torch.signbit(a) == torch.signbit(b))
    return bool((same | (torch.isnan(a) & torch.isnan(b))).all()) and a.shape == b.shape and a.dtype == b.dtype


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")
@pytest.mark.parametrize("size", [4095, 4096, 70_000, 1_000_003])
def test_fused_parallel_and_serial_kernels_agree_on_large_random_inputs(size: int) -> None:
    gen = torch.Generator().manual_seed(size)
    N = torch.randn(size, generator=gen) * 10
    D = torch.randn(size, generator=gen) * 1e-4
    D[::97] = 0.0
    N[::101] = math.inf
    D[::103] = math.nan
    cfg = InferenceConfig()
    eager = strict_inference(N, D, cfg, backend="eager")
    auto = strict_inference(N, D, cfg)
    fused = strict_inference(N, D, cfg, backend="fused")
    for other in (auto, fused):
        assert torch.equal(eager.bottom_mask, other.bottom_mask)
        assert torch.equal(eager.gap_mask, other.gap_mask)
        assert bits_equal(eager.decoded, other.decoded)
    assert eager.bottom_mask.any() and eager.gap_mask.any() and (~eager.bottom_mask & ~eager.gap_mask).any()


def test_boundary_exactly_at_tau_infer_is_not_bottom_in_every_dtype() -> None:
    cfg = InferenceConfig(tau_infer=1e-6, tau_train=1e-4)
    for dtype in FLOAT_DTYPES:
        ti = torch.tensor(dtype_threshold(1e-6, dtype), dtype=dtype)
        below = torch.nextafter(ti, torch.zeros((), dtype=dtype))
        D = torch.stack([ti, below, -ti, -below])
        N = torch.ones(4, dtype=dtype) * 1e-8
        res = strict_inference(N, D, cfg)
        assert res.bottom_mask.tolist() == [False, True, False, True], dtype
        assert res.gap_mask.tolist() == [True, False, True, False], dtype


def test_exact_threshold_value_representable_in_float32() -> None:
    # 0.5 is exact in every dtype: |D| == 0.5 is the gap, not ⊥; just below is ⊥; tau_train itself is "ok".
    cfg = InferenceConfig(tau_infer=0.5, tau_train=2.0)
    D = torch.tensor([0.5, 0.49999997, 2.0, 1.9999999, -0.5])
    res = strict_inference(torch.ones(5), D, cfg)
    assert res.bottom_mask.tolist() == [False, True, False, False, False]
    assert res.gap_mask.tolist() == [True, False, False, True, True]


def test_overflowing_quotient_is_bottom() -> None:
    N = torch.tensor([3e38, -3e38, 3e38])
    D = torch.tensor([1e-3, 1e-3, 10.0])
    res = strict_inference(N, D, InferenceConfig(tau_infer=1e-6))
    assert res.bottom_mask.tolist() == [True, True, False]
    assert res.decoded[2] == pytest.approx(3e37)


def test_nonfinite_inputs_are_bottom() -> None:
    N = torch.tensor([math.nan, 1.0, math.inf, 1.0, -math.inf, 0.0])
    D = torch.tensor([1.0, math.nan, 1.0, math.inf, -math.inf, 0.0])
    res = strict_inference(N, D, InferenceConfig(tau_infer=0.0, tau_train=None))
    assert res.bottom_mask.all()
    assert torch.isnan(res.decoded).all()


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 3, 4)])
def test_any_shape_dtype_device(dtype: torch.dtype, device: str, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    N = torch.randn(shape, generator=gen).to(dtype).to(device)
    D = (torch.randn(shape, generator=gen) * 1e-4).to(dtype).to(device)
    res = strict_inference(N, D, InferenceConfig())
    assert res.decoded.shape == shape and res.decoded.dtype == dtype and res.decoded.device.type == device
    assert_invariants(res)
    assert_matches_oracle(StrictResult(*(t.cpu() for t in res)), N.cpu(), D.cpu(), InferenceConfig())


def test_result_unpacks_as_seed_triple_and_by_name() -> None:
    decoded, bottom_mask, gap_mask = strict_inference(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0]))
    assert decoded[0] == 0.5 and bottom_mask.tolist() == [False, True] and gap_mask.tolist() == [False, False]
    res = strict_inference(torch.tensor([1.0]), torch.tensor([5e-5]))
    assert res.gap_mask.item() and res.decoded.item() == pytest.approx(20000.0)


def test_integer_and_mixed_inputs_are_promoted_and_broadcast() -> None:
    res = strict_inference(torch.tensor([1, 2, 3]), torch.tensor([2, 0, 1]))
    assert res.decoded.dtype == torch.get_default_dtype()
    assert res.bottom_mask.tolist() == [False, True, False]
    res = strict_inference(torch.ones(2, 3, dtype=torch.float64), torch.tensor([1.0, 0.0, 2.0]))
    assert res.decoded.shape == (2, 3) and res.decoded.dtype == torch.float64
    with pytest.raises(ValueError, match="same shape"):
        strict_inference(torch.ones(2), torch.ones(3))


def test_eager_decode_with_grad_does_not_break_autograd() -> None:
    N = torch.tensor([1.0, 2.0], requires_grad=True)
    D = torch.tensor([2.0, 4.0], requires_grad=True)
    res = strict_inference(N, D)
    res.decoded.sum().backward()
    assert N.grad is not None and torch.allclose(N.grad, torch.tensor([0.5, 0.25]))


def test_decode_eager_is_torchscript_compatible() -> None:
    scripted = torch.jit.script(decode_eager)
    N, D = torch.randn(100), torch.randn(100) * 1e-4
    ti, tt = InferenceConfig().thresholds_for(torch.float32)
    a, b = scripted(N, D, ti, tt), decode_eager(N, D, ti, tt)
    assert torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) and bits_equal(a[0], b[0])
