"""Fused single-pass strict decode: one read of N and D, one write of value and masks.

CPU: a numba kernel (optional dependency ``zeroproof-scm[fast]``). CUDA: a Triton kernel when Triton is
importable (it ships with CUDA builds of torch). Both follow :func:`zeroproof.inference.decode.decode_eager`
bit for bit: IEEE division without fast-math, the same dtype-rounded thresholds, NaN exactly at ⊥.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import nullcontext
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

_FUSED_DTYPES = (torch.float32, torch.float64)
#: Below this size the serial kernel wins: waking worker threads costs more than the work.
PARALLEL_MIN_ELEMENTS = 1 << 16
_lock = threading.Lock()


@lru_cache(maxsize=1)
def _numba_kernels() -> tuple[Callable[..., None], Callable[..., None]] | None:
    try:
        import numba
        import numpy as np
    except ImportError:
        return None

    # error_model="numpy": x/0 gives inf/NaN as IEEE says instead of raising; no fastmath, so the division is
    # correctly rounded exactly like torch's.
    @numba.njit(inline="always", error_model="numpy")
    def element(nv: Any, dv: Any, ti: Any, tt: Any, nan: Any, inf: Any) -> tuple[Any, bool, bool]:
        """The decode of one element (value, bottom, gap): the same rule as ``decode_eager``."""
        ad = abs(dv)
        q = nv / dv
        ok = (ad >= ti) and (ad < inf) and (abs(q) < inf)
        return (q if ok else nan), not ok, ok and (ad < tt)

    @numba.njit(parallel=True, nogil=True, error_model="numpy", boundscheck=False, cache=True)
    def parallel(n: Any, d: Any, ti: Any, tt: Any, out: Any, bottom: Any, gap: Any) -> None:
        nan = n.dtype.type(np.nan)
        inf = n.dtype.type(np.inf)
        for i in numba.prange(n.size):
            out[i], bottom[i], gap[i] = element(n[i], d[i], ti, tt, nan, inf)

    @numba.njit(nogil=True, error_model="numpy", boundscheck=False, cache=True)
    def serial(n: Any, d: Any, ti: Any, tt: Any, out: Any, bottom: Any, gap: Any) -> None:
        nan = n.dtype.type(np.nan)
        inf = n.dtype.type(np.inf)
        for i in range(n.size):
            out[i], bottom[i], gap[i] = element(n[i], d[i], ti, tt, nan, inf)

    return serial, parallel


@lru_cache(maxsize=1)
def _triton_kernel() -> Callable[..., None] | None:
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None

    @triton.jit  # type: ignore[untyped-decorator]
    def kernel(n_ptr, d_ptr, out_ptr, bottom_ptr, gap_ptr, ti, tt, size, BLOCK: tl.constexpr):  # type: ignore[no-untyped-def]
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        in_range = offs < size
        n = tl.load(n_ptr + offs, mask=in_range, other=0.0)
        d = tl.load(d_ptr + offs, mask=in_range, other=1.0)
        ad = tl.abs(d)
        q = tl.div_rn(n, d)
        ok = (ad >= ti) & (ad < float("inf")) & (tl.abs(q) < float("inf"))
        tl.store(bottom_ptr + offs, (~ok).to(tl.int1), mask=in_range)
        tl.store(gap_ptr + offs, (ok & (ad < tt)).to(tl.int1), mask=in_range)
        tl.store(out_ptr + offs, tl.where(ok, q, float("nan")), mask=in_range)

    def launch(N: Tensor, D: Tensor, ti: float, tt: float, out: Tensor, bottom: Tensor, gap: Tensor) -> None:
        size = N.numel()
        block = 1024
        grid = (triton.cdiv(size, block),)
        # Triton passes Python floats as fp32: exact here, since the thresholds are rounded to the dtype.
        kernel[grid](N, D, out, bottom, gap, ti, tt, size, BLOCK=block)

    return launch


def available(device: torch.device | str = "cpu") -> bool:
    """Whether a fused kernel exists for ``device`` in this environment."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return _triton_kernel() is not None
    return dev.type == "cpu" and _numba_kernels() is not None


def supports(N: Tensor, D: Tensor) -> bool:
    """The fused path takes same-shape float32/float64 tensors on one device with a kernel available.

    On CUDA only float32: Triton passes scalar arguments as fp32, which is exact only for float32 thresholds.
    """
    return (
        (N.dtype in _FUSED_DTYPES if N.device.type == "cpu" else N.dtype == torch.float32)
        and N.dtype == D.dtype
        and N.shape == D.shape
        and N.device == D.device
        and not (N.requires_grad or D.requires_grad)
        and available(N.device)
    )


def decode_fused(
    N: Tensor,
    D: Tensor,
    tau_infer: float,
    tau_train: float,
    *,
    out: tuple[Tensor, Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Single-pass decode; thresholds must already be rounded to the dtype (``thresholds_for``).

    ``out=(decoded, bottom, gap)``: contiguous tensors of N's shape (N's dtype, bool, bool) on N's device that the
    kernel writes into and that are returned; nothing is allocated when N and D are contiguous too.
    :func:`zeroproof.inference.decode.strict_inference` checks them (``check_out``) before calling here.
    """
    if N.dtype not in _FUSED_DTYPES or N.dtype != D.dtype or N.shape != D.shape:
        raise TypeError(f"fused decode takes same-shape float32/float64 pairs, got {N.dtype}/{D.dtype}")
    n = N.contiguous()
    d = D.contiguous()
    if out is None:
        out_t = torch.empty_like(n, memory_format=torch.contiguous_format)
        bottom = torch.empty(n.shape, dtype=torch.bool, device=n.device)
        gap = torch.empty(n.shape, dtype=torch.bool, device=n.device)
    else:
        out_t, bottom, gap = out
    if n.numel() == 0:
        return out_t, bottom, gap
    if n.device.type == "cuda":
        if n.dtype != torch.float32:
            raise TypeError("fused CUDA decode takes float32 (Triton passes thresholds as fp32)")
        launch = _triton_kernel()
        if launch is None:
            raise RuntimeError("fused CUDA decode needs triton")
        launch(n, d, tau_infer, tau_train, out_t, bottom, gap)
        return out_t, bottom, gap
    kernels = _numba_kernels()
    if kernels is None:
        raise RuntimeError("fused CPU decode needs numba: pip install 'zeroproof-scm[fast]'")
    import numpy as np

    serial, parallel = kernels
    kernel = parallel if n.numel() >= PARALLEL_MIN_ELEMENTS else serial
    np_dtype = np.float32 if n.dtype == torch.float32 else np.float64
    # numba's default "workqueue" threading layer must not be entered by two threads at once.
    with _lock if kernel is parallel else nullcontext():
        kernel(
            n.detach().reshape(-1).numpy(),
            d.detach().reshape(-1).numpy(),
            np_dtype(tau_infer),
            np_dtype(tau_train),
            out_t.view(-1).numpy(),
            bottom.view(-1).numpy(),
            gap.view(-1).numpy(),
        )
    return out_t, bottom, gap
