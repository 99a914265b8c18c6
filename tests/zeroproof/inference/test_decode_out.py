"""Decoding into caller-owned buffers: ``strict_inference(..., out=...)``, :class:`StrictDecoder` and
``decode_eager_into`` give the allocating path's masks and values bit for bit, reuse their storage, and reject
unusable buffers with a clear error."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.profiler import ProfilerActivity, profile

from tests.zeroproof.inference.test_decode import (
    DEVICES,
    FLOAT_DTYPES,
    HAVE_NUMBA,
    assert_invariants,
    assert_matches_oracle,
    bits_equal,
    configs,
    element_strategy,
    special_values,
)
from zeroproof.inference import InferenceConfig, StrictDecoder, StrictResult, decode_eager_into, strict_inference
from zeroproof.inference.decode import decode_eager

pytestmark = pytest.mark.unit

BACKENDS = ["eager"] + (["fused", "auto"] if HAVE_NUMBA else [])


def empty_out(N: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.empty(N.shape, dtype=N.dtype, device=N.device),
        torch.empty(N.shape, dtype=torch.bool, device=N.device),
        torch.empty(N.shape, dtype=torch.bool, device=N.device),
    )


def assert_same(a: StrictResult, b: StrictResult) -> None:
    assert torch.equal(a.bottom_mask, b.bottom_mask)
    assert torch.equal(a.gap_mask, b.gap_mask)
    assert bits_equal(a.decoded, b.decoded)


def adversarial(dtype: torch.dtype, config: InferenceConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of special values: NaN, ±inf, ±0, subnormals, ±max (overflowing quotients), each threshold and
    its neighbours one ulp either side."""
    vals = special_values(dtype, config)
    N = torch.tensor([n for n in vals for _ in vals], dtype=torch.float64).to(dtype)
    D = torch.tensor([d for _ in vals for d in vals], dtype=torch.float64).to(dtype)
    return N, D


def backends_for(dtype: torch.dtype) -> list[str]:
    return [b for b in BACKENDS if dtype in (torch.float32, torch.float64) or b == "eager"]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(
    "config",
    [
        InferenceConfig(),
        InferenceConfig(tau_infer=0.0, tau_train=None),
        InferenceConfig(tau_infer=1e-3, tau_train=1e-3),
        InferenceConfig(tau_infer=2.0, tau_train=7.0),
    ],
)
def test_out_and_decoder_match_allocating_path_on_special_values(dtype: torch.dtype, config: InferenceConfig) -> None:
    N, D = adversarial(dtype, config)
    ref = strict_inference(N, D, config, backend="eager")
    assert ref.bottom_mask.any() and (~ref.bottom_mask).any()
    for backend in backends_for(dtype):
        out = empty_out(N)
        got = strict_inference(N, D, config, backend=backend, out=out)  # type: ignore[arg-type]
        assert all(g is o for g, o in zip(got, out, strict=True))
        assert_same(got, ref)
        decoder = StrictDecoder(config, backend=backend)  # type: ignore[arg-type]
        assert_same(decoder(N, D), ref)
        # Blocks smaller than the input, with a ragged last block, in the eager path.
        small = StrictDecoder(config, backend="eager", block_elements=7)
        assert_same(small(N, D), ref)
    assert_invariants(ref)
    assert_matches_oracle(ref, N, D, config)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), config=configs, block=st.integers(min_value=1, max_value=50))
def test_out_matches_oracle_and_allocating_path(
    dtype: torch.dtype, data: st.DataObject, config: InferenceConfig, block: int
) -> None:
    pairs = data.draw(
        st.lists(st.tuples(element_strategy(dtype, config), element_strategy(dtype, config)), min_size=0, max_size=40)
    )
    N = torch.tensor([p[0] for p in pairs], dtype=torch.float64).to(dtype)
    D = torch.tensor([p[1] for p in pairs], dtype=torch.float64).to(dtype)
    ref = strict_inference(N, D, config, backend="eager")
    for backend in backends_for(dtype):
        got = strict_inference(N, D, config, backend=backend, out=empty_out(N))  # type: ignore[arg-type]
        assert_same(got, ref)
        assert_matches_oracle(got, N, D, config)
    ti, tt = config.thresholds_for(dtype)
    out = empty_out(N)
    w, z = torch.empty(block, dtype=dtype), torch.empty(block, dtype=dtype)
    decode_eager_into(N, D, ti, tt, *out, w, z)
    assert_same(StrictResult(*out), ref)


@pytest.mark.parametrize("size", [4095, 70_000, (1 << 18) + 3, 1_000_003])
def test_large_inputs_across_blocks_and_kernels(size: int) -> None:
    gen = torch.Generator().manual_seed(size)
    N = torch.randn(size, generator=gen) * 10
    D = torch.randn(size, generator=gen) * 1e-4
    D[::97] = 0.0
    D[1::97] = -0.0
    N[::101] = math.inf
    D[::103] = math.nan
    D[::107] = -math.inf
    N[::109] = 3e38  # overflows against |D| < 1
    cfg = InferenceConfig()
    ref = StrictResult(*decode_eager(N, D, *cfg.thresholds_for(torch.float32)))
    for backend in BACKENDS:
        assert_same(strict_inference(N, D, cfg, backend=backend, out=empty_out(N)), ref)  # type: ignore[arg-type]
        assert_same(StrictDecoder(cfg, backend=backend)(N, D), ref)  # type: ignore[arg-type]
    assert ref.bottom_mask.any() and ref.gap_mask.any() and (~ref.bottom_mask & ~ref.gap_mask).any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoder_reuses_its_storage(backend: str) -> None:
    decoder = StrictDecoder(backend=backend)  # type: ignore[arg-type]
    gen = torch.Generator().manual_seed(0)
    big = (torch.randn(3, 50_000, generator=gen), torch.randn(3, 50_000, generator=gen) * 1e-4)
    first = decoder(*big)
    ptrs = [t.data_ptr() for t in first]
    held = decoder.nbytes
    for _ in range(3):
        again = decoder(*big)
        assert [t.data_ptr() for t in again] == ptrs
    # A smaller batch (any shape) is a prefix of the same buffers; nothing grows.
    small = decoder(torch.ones(7, 5), torch.full((7, 5), 2.0))
    assert [t.data_ptr() for t in small] == ptrs and small.decoded.shape == (7, 5)
    assert decoder.nbytes <= held + 2 * 35 * 4  # "auto" decodes 35 elements eagerly: two tiny scratch tensors
    assert torch.equal(small.decoded, torch.full((7, 5), 0.5))
    # A larger one grows once, then is stable.
    bigger = (torch.randn(200_000, generator=gen), torch.randn(200_000, generator=gen))
    grown = [t.data_ptr() for t in decoder(*bigger)]
    assert decoder.nbytes > held
    assert [t.data_ptr() for t in decoder(*bigger)] == grown
    assert [t.data_ptr() for t in decoder(*big)] == grown


def test_decoder_results_are_overwritten_by_the_next_call_and_clone_keeps_them() -> None:
    decoder = StrictDecoder()
    a = decoder(torch.tensor([1.0, 2.0]), torch.tensor([2.0, 0.0]))
    kept = StrictResult(*(t.clone() for t in a))
    decoder(torch.tensor([3.0, 3.0]), torch.tensor([1.0, 1.0]))
    assert a.decoded.tolist() == [3.0, 3.0]  # documented: views of the decoder's buffers
    assert kept.decoded[0] == 0.5 and kept.bottom_mask.tolist() == [False, True]


def test_decoder_keeps_buffers_per_dtype_and_clear_releases_them() -> None:
    decoder = StrictDecoder(backend="eager")
    r32 = decoder(torch.ones(10), torch.ones(10))
    r64 = decoder(torch.ones(10, dtype=torch.float64), torch.ones(10, dtype=torch.float64))
    assert r32.decoded.dtype == torch.float32 and r64.decoded.dtype == torch.float64
    assert r32.decoded.data_ptr() != r64.decoded.data_ptr()
    assert decoder(torch.ones(10), torch.ones(10)).decoded.data_ptr() == r32.decoded.data_ptr()
    assert decoder.nbytes > 0
    decoder.clear()
    assert decoder.nbytes == 0
    assert decoder(torch.ones(3), torch.zeros(3)).bottom_mask.all()
    assert "StrictDecoder(tau_infer=1e-06" in repr(decoder)
    with pytest.raises(ValueError, match="block_elements"):
        StrictDecoder(block_elements=0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(), (0,), (7,), (3, 5), (2, 3, 4)])
def test_any_shape_dtype_device(dtype: torch.dtype, device: str, shape: tuple[int, ...]) -> None:
    gen = torch.Generator().manual_seed(1)
    N = torch.randn(shape, generator=gen).to(dtype).to(device)
    D = (torch.randn(shape, generator=gen) * 1e-4).to(dtype).to(device)
    ref = strict_inference(N, D)
    for res in (strict_inference(N, D, out=empty_out(N)), StrictDecoder()(N, D)):
        assert res.decoded.shape == shape and res.decoded.dtype == dtype and res.decoded.device.type == device
        assert_same(StrictResult(*(t.cpu() for t in res)), StrictResult(*(t.cpu() for t in ref)))


def test_out_path_promotes_and_broadcasts_like_the_allocating_path() -> None:
    N, D = torch.ones(2, 3, dtype=torch.float64), torch.tensor([1.0, 0.0, 2.0])
    ref = strict_inference(N, D)
    out = (
        torch.empty(2, 3, dtype=torch.float64),
        torch.empty(2, 3, dtype=torch.bool),
        torch.empty(2, 3, dtype=torch.bool),
    )
    assert_same(strict_inference(N, D, out=out), ref)
    assert_same(StrictDecoder()(N, D), ref)
    ints = strict_inference(torch.tensor([1, 2]), torch.tensor([2, 0]), out=empty_out(torch.empty(2)))
    assert ints.decoded[0] == 0.5 and ints.bottom_mask.tolist() == [False, True]


def test_out_may_share_a_workspace_with_the_inputs_when_they_do_not_meet() -> None:
    workspace = torch.zeros(4 * 12)
    N, D, decoded = (workspace[i * 12 : (i + 1) * 12].view(4, 3) for i in range(3))
    N.copy_(torch.arange(12.0).view(4, 3))
    D.fill_(2.0)
    flags = torch.zeros(2, 12, dtype=torch.bool)
    res = strict_inference(N, D, out=(decoded, flags[0].view(4, 3), flags[1].view(4, 3)))
    assert torch.equal(res.decoded, torch.arange(12.0).view(4, 3) / 2) and not res.bottom_mask.any()


def test_inputs_that_require_grad_are_decoded_detached() -> None:
    N = torch.tensor([1.0, 2.0], requires_grad=True)
    D = torch.tensor([2.0, 0.0], requires_grad=True)
    for res in (strict_inference(N, D, out=empty_out(N.detach())), StrictDecoder()(N, D)):
        assert not res.decoded.requires_grad
        assert res.decoded[0] == 0.5 and res.bottom_mask.tolist() == [False, True]


def test_decode_eager_into_is_torchscript_compatible() -> None:
    scripted = torch.jit.script(decode_eager_into)
    cfg = InferenceConfig()
    N, D = adversarial(torch.float32, cfg)
    ti, tt = cfg.thresholds_for(torch.float32)
    out = empty_out(N)
    scripted(N, D, ti, tt, *out, torch.empty(64), torch.empty(64))
    assert_same(StrictResult(*out), strict_inference(N, D, cfg, backend="eager"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_warm_decoder_allocates_no_tensor_memory(backend: str) -> None:
    """Once warm, a decode allocates only scalar wrappers (bytes), never anything proportional to the input."""
    N, D = torch.randn(100_000), torch.randn(100_000) * 1e-4
    decoder = StrictDecoder(backend=backend)  # type: ignore[arg-type]
    decoder(N, D)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        decoder(N, D)
    allocated = sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0)
    assert allocated < 1024, allocated
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        strict_inference(N, D, backend=backend)  # type: ignore[arg-type]
    assert sum(e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0) >= 6 * N.numel()


def test_wrong_out_buffers_raise_clear_errors() -> None:
    N, D = torch.ones(4, 3), torch.ones(4, 3)
    good = empty_out(N)

    def call(out: object) -> None:
        strict_inference(N, D, out=out)  # type: ignore[arg-type]

    with pytest.raises(TypeError, match="tuple of three tensors"):
        call(good[0])
    with pytest.raises(TypeError, match="tuple of three tensors"):
        call(good[:2])
    with pytest.raises(TypeError, match=r"out\[1\] \(bottom_mask\) must be a torch.Tensor"):
        call((good[0], None, good[2]))
    with pytest.raises(TypeError, match=r"out\[0\] \(decoded\) must have dtype torch.float32.*got torch.float64"):
        call((good[0].double(), good[1], good[2]))
    with pytest.raises(TypeError, match=r"out\[2\] \(gap_mask\) must have dtype torch.bool"):
        call((good[0], good[1], torch.empty(4, 3)))
    with pytest.raises(ValueError, match=r"out\[0\] \(decoded\) must have shape \(4, 3\).*got \(12,\)"):
        call((torch.empty(12), good[1], good[2]))
    with pytest.raises(ValueError, match=r"out\[1\] \(bottom_mask\) must have shape"):
        call((good[0], torch.empty(3, 4, dtype=torch.bool), good[2]))
    with pytest.raises(ValueError, match=r"out\[2\] \(gap_mask\) must be on cpu"):
        call((good[0], good[1], torch.empty(4, 3, dtype=torch.bool, device="meta")))
    with pytest.raises(ValueError, match=r"out\[0\] \(decoded\) must be contiguous"):
        call((torch.empty(3, 4).t(), good[1], good[2]))
    with pytest.raises(ValueError, match=r"out\[0\] \(decoded\) overlaps N"):
        call((N, good[1], good[2]))
    with pytest.raises(ValueError, match=r"out\[0\] \(decoded\) overlaps D"):
        call((D, good[1], good[2]))
    with pytest.raises(ValueError, match=r"out\[2\] \(gap_mask\) overlaps bottom_mask"):
        call((good[0], good[1], good[1]))
    workspace = torch.zeros(30)
    with pytest.raises(ValueError, match=r"out\[0\] \(decoded\) overlaps N"):
        strict_inference(workspace[:12].view(4, 3), D, out=(workspace[11:23].view(4, 3), good[1], good[2]))
    with pytest.raises(ValueError, match=r"out\[0\] \(decoded\) must not require grad"):
        call((torch.empty(4, 3, requires_grad=True), good[1], good[2]))
    decoder = StrictDecoder()
    res = decoder(N, D)
    with pytest.raises(ValueError, match="N overlaps this decoder's decoded buffer"):
        decoder(res.decoded, D)
    with pytest.raises(ValueError, match="D overlaps this decoder's decoded buffer"):
        decoder(N, res.decoded)  # decoding the decoder's own output in place is refused, not silently wrong
