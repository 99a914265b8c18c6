"""The strict decode of a projective pair ⟨N, D⟩: the one definition every runtime follows (contract §1).

``bottom`` (⊥) where ``|D| < tau_infer``, N or D is NaN/±inf, or N/D is not finite; ``gap`` where not ⊥ and
``|D| < tau_train``; otherwise the value N/D. ``decoded`` is NaN exactly at ⊥.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from zeroproof.inference.config import InferenceConfig

Backend = Literal["auto", "eager", "fused"]

#: Below this many elements the eager path's fixed cost is small enough that dispatch isn't worth it.
FUSED_MIN_ELEMENTS = 4096
#: The allocation-free eager path (:func:`decode_eager_into`) works through long CPU inputs this many elements at
#: a time, so its two float temporaries stay small (cache-resident, a few MB whatever the batch) and every pass
#: over them hits cache; the inputs and outputs are each read or written once per block. On CUDA: one block.
EAGER_BLOCK_ELEMENTS = 1 << 18


class StrictResult(NamedTuple):
    """Unpacks as ``decoded, bottom_mask, gap_mask`` (the seed page's triple)."""

    decoded: Tensor
    bottom_mask: Tensor
    gap_mask: Tensor


def decode_eager(N: Tensor, D: Tensor, tau_infer: float, tau_train: float) -> tuple[Tensor, Tensor, Tensor]:
    """Reference decode in plain tensor ops; TorchScript- and ONNX-exportable.

    ``tau_infer``/``tau_train`` must already be representable in the inputs' dtype
    (:meth:`InferenceConfig.thresholds_for`); pass ``tau_train == tau_infer`` for "no gap".

    Comparisons that produce bool tensors are the expensive ops on CPU, so every non-finite case is folded
    into one float ``w`` first: ``q - q`` is 0 for finite ``q`` and NaN otherwise (covers non-finite N and
    overflow), ``|D| - |D|`` is NaN for an infinite or NaN ``D``; adding them to ``|D|`` (exact: ``x + 0 == x``)
    leaves ``|D|`` where everything is finite and NaN elsewhere. NaN fails every comparison, so ``w >= tau_infer``
    is the complete "not ⊥" test and ``w < tau_train`` the gap test.

    Temporaries are reused in place (``|D| - |D|`` overwrites ``|D|``, the ⊥ mask overwrites the "ok" mask, NaN is
    filled into ``q``), so a call allocates 14 bytes per float32 element (the 6 of the outputs, and ``|D|`` and
    ``w``) instead of 23; autograd and the ONNX export handle these in-place ops. For no allocation at all, use
    :func:`decode_eager_into` (or ``strict_inference(..., out=...)`` / :class:`StrictDecoder`).
    """
    abs_d = torch.abs(D)
    q = torch.div(N, D)
    w = torch.sub(q, q)
    w.add_(abs_d)
    w.add_(abs_d.sub_(abs_d))
    ok = torch.ge(w, tau_infer)
    gap = torch.lt(w, tau_train)
    gap.logical_and_(ok)
    bottom = ok.logical_not_()
    return q.masked_fill_(bottom, float("nan")), bottom, gap


def decode_eager_into(
    N: Tensor,
    D: Tensor,
    tau_infer: float,
    tau_train: float,
    decoded: Tensor,
    bottom: Tensor,
    gap: Tensor,
    w: Tensor,
    z: Tensor,
) -> None:
    """The eager decode written into caller-owned tensors: allocates nothing (TorchScript-scriptable).

    ``decoded``/``bottom``/``gap``: contiguous, N's shape, N's dtype/bool/bool (checked by :func:`check_out`).
    ``w``, ``z``: 1-D float scratch of N's dtype, equal lengths >= 1; the inputs are processed in blocks of that
    many elements (:data:`EAGER_BLOCK_ELEMENTS` on CPU). Same thresholds as :func:`decode_eager`, bit-identical
    results.

    On CPU a comparison that writes a bool tensor runs a scalar loop (~4x a float op), and so do ``masked_fill_``
    and ``where``; comparisons that write 0.0/1.0 floats, float arithmetic and a float -> bool copy are vectorized.
    So per block, with only those:

    - ``w = |D| + (q - q) * D``: ``|D|`` where ``q = N/D`` and D are finite, NaN elsewhere (``q - q`` is NaN for a
      non-finite q, ``0 * D`` is NaN for an infinite D, and adding ±0 or NaN to ``|D|`` is exact);
    - ``ok = (w >= tau_infer)`` as 1.0/0.0 (NaN compares false), then ``z = 0 / ok``: +0 where the element decodes,
      NaN exactly at ⊥;
    - ``bottom = bool(z)`` (NaN is truthy), ``decoded = q - z`` (``x - (+0)`` is ``x``, the sign of zero included,
      NaN at ⊥), ``gap = bool((w + z) < tau_train)`` (``w + z`` is NaN at ⊥, which compares false).

    Every step is exact or only propagates NaN, in any float dtype and on any device, and none has a slow path
    for NaN, infinities, zeros or negative operands (``sqrt``/``log`` would: ~100x slower on such elements).
    """
    consts = _consts(tau_infer, tau_train, N.dtype)
    _decode_flat(N.reshape(-1), D.reshape(-1), consts, decoded.view(-1), bottom.view(-1), gap.view(-1), w, z)


def _consts(tau_infer: float, tau_train: float, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``(tau_infer, tau_train, +0)`` as 0-dim CPU tensors of ``dtype`` (exact: ``thresholds_for`` rounded the
    thresholds to it). Ops take them like Python scalars, on any device, without wrapping a scalar per call."""
    return (
        torch.full([], tau_infer, dtype=dtype),
        torch.full([], tau_train, dtype=dtype),
        torch.zeros([], dtype=dtype),
    )


def _decode_flat(
    n: Tensor,
    d: Tensor,
    consts: tuple[Tensor, Tensor, Tensor],
    dec: Tensor,
    bot: Tensor,
    gp: Tensor,
    w: Tensor,
    z: Tensor,
) -> None:
    """:func:`decode_eager_into` on flat tensors, constants from :func:`_consts`."""
    size = n.numel()
    block = w.numel()
    if size <= block:  # one block: no slicing of the inputs and outputs
        wb = w if block == size else w[:size]
        zb = z if block == size else z[:size]
        _decode_block(n, d, consts[0], consts[1], consts[2], dec, bot, gp, wb, zb)
        return
    start = 0
    while start < size:
        stop = min(size, start + block)
        m = stop - start
        wb = w if m == block else w[:m]
        zb = z if m == block else z[:m]
        qb = dec[start:stop]
        _decode_block(
            n[start:stop], d[start:stop], consts[0], consts[1], consts[2], qb, bot[start:stop], gp[start:stop], wb, zb
        )
        start = stop


def _decode_block(
    n: Tensor, d: Tensor, ti: Tensor, tt: Tensor, zero: Tensor, q: Tensor, bot: Tensor, gp: Tensor, w: Tensor, z: Tensor
) -> None:
    torch.div(n, d, out=q)
    torch.sub(q, q, out=w)
    torch.abs(d, out=z)
    torch.addcmul(z, w, d, out=w)  # |D| + (q - q) * D: |D|, or NaN where q or D is not finite
    torch.ge(w, ti, out=z)  # 1.0 where not ⊥, else 0.0
    torch.div(zero, z, out=z)  # +0 where not ⊥, NaN at ⊥
    bot.copy_(z)
    q.sub_(z)
    w.add_(z)
    torch.lt(w, tt, out=z)
    gp.copy_(z)


Out = tuple[Tensor, Tensor, Tensor]
_OUT_NAMES = ("decoded", "bottom_mask", "gap_mask")


def check_out(out: Sequence[Tensor], N: Tensor, D: Tensor) -> Out:
    """Validate ``out=(decoded, bottom_mask, gap_mask)`` for decoding ``N``/``D`` (already promoted); clear errors.

    Each must be a contiguous tensor of N's shape on N's device, ``decoded`` of N's dtype and the masks bool, none
    overlapping N, D or another output (the decode reads N and D after writing ``decoded``).
    """
    if isinstance(out, Tensor) or len(out) != 3:
        raise TypeError("out must be a (decoded, bottom_mask, gap_mask) tuple of three tensors")
    decoded, bottom, gap = out
    shape, device = N.shape, N.device
    for i, t in enumerate(out):
        if not (
            isinstance(t, Tensor)
            and t.dtype == (N.dtype if i == 0 else torch.bool)
            and t.shape == shape
            and t.device == device
            and t.is_contiguous()
            and not t.requires_grad
        ):
            _raise_bad_out(i, t, N)
    spans = [_span(N), _span(D)]
    names = ["N", "D"]
    for i, t in enumerate(out):
        mine = _span(t)
        for other, name in zip(spans, names, strict=True):
            if mine[0] < other[1] and other[0] < mine[1]:
                raise ValueError(f"out[{i}] ({_OUT_NAMES[i]}) overlaps {name}: outputs need their own memory")
        spans.append(mine)
        names.append(_OUT_NAMES[i])
    return decoded, bottom, gap


def _raise_bad_out(i: int, t: object, N: Tensor) -> None:
    where = f"out[{i}] ({_OUT_NAMES[i]})"
    if not isinstance(t, Tensor):
        raise TypeError(f"{where} must be a torch.Tensor, got {type(t).__name__}")
    dtype = N.dtype if i == 0 else torch.bool
    if t.dtype != dtype:
        raise TypeError(f"{where} must have dtype {dtype} (N/D decode as {N.dtype}), got {t.dtype}")
    if t.shape != N.shape:
        raise ValueError(f"{where} must have shape {tuple(N.shape)} like N and D, got {tuple(t.shape)}")
    if t.device != N.device:
        raise ValueError(f"{where} must be on {N.device} like N and D, got {t.device}")
    if not t.is_contiguous():
        raise ValueError(f"{where} must be contiguous")
    raise ValueError(f"{where} must not require grad (a decode into buffers is not differentiable)")


def _span(t: Tensor) -> tuple[int, int]:
    """The byte range ``t``'s elements lie in (empty for an empty tensor). Views of one workspace that do not
    meet are told apart; interleaved strided views, or ranges on different devices, may look overlapping: such
    a false alarm only refuses a call, never corrupts one."""
    if t.numel() == 0:
        return (0, 0)
    start = t.data_ptr()
    last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return (start, start + (last + 1) * t.element_size())


def _as_float_pair(N: Tensor, D: Tensor) -> tuple[Tensor, Tensor]:
    if not isinstance(N, Tensor):
        N = torch.as_tensor(N)
    if not isinstance(D, Tensor):
        D = torch.as_tensor(D)
    dtype = torch.result_type(N, D)
    if not dtype.is_floating_point:
        dtype = torch.get_default_dtype()
    if N.dtype != dtype:
        N = N.to(dtype)
    if D.dtype != dtype:
        D = D.to(dtype)
    if N.shape != D.shape:
        try:
            N, D = torch.broadcast_tensors(N, D)  # type: ignore[no-untyped-call]
        except RuntimeError as exc:
            raise ValueError(f"N and D must have the same shape, got {tuple(N.shape)} and {tuple(D.shape)}") from exc
    return N, D


def _use_fused(N: Tensor, D: Tensor, backend: Backend) -> bool:
    if backend == "eager":
        return False
    from zeroproof.inference import fused

    return backend == "fused" or (N.numel() >= FUSED_MIN_ELEMENTS and fused.supports(N, D))


def _block_elements(N: Tensor, block_elements: int) -> int:
    """Scratch length for :func:`decode_eager_into`: one block on CPU, the whole input elsewhere."""
    size = N.numel()
    return max(1, size if N.device.type != "cpu" else min(size, block_elements))


def _decode_into(N: Tensor, D: Tensor, thresholds: tuple[float, float], out: Out, backend: Backend) -> None:
    """Decode into checked ``out``: the fused kernel, or the eager path with freshly made block-sized scratch."""
    if _use_fused(N, D, backend):
        from zeroproof.inference import fused

        fused.decode_fused(N, D, thresholds[0], thresholds[1], out=out)
        return
    length = _block_elements(N, EAGER_BLOCK_ELEMENTS)
    w = torch.empty(length, dtype=N.dtype, device=N.device)
    z = torch.empty(length, dtype=N.dtype, device=N.device)
    consts = _consts(thresholds[0], thresholds[1], N.dtype)
    _decode_flat(_flat(N), _flat(D), consts, out[0].view(-1), out[1].view(-1), out[2].view(-1), w, z)


def _flat(t: Tensor) -> Tensor:
    """1-D and detached (the out= paths are not differentiable)."""
    if t.requires_grad:
        t = t.detach()
    return t if t.dim() == 1 else t.reshape(-1)


def strict_inference(
    N: Tensor,
    D: Tensor,
    config: InferenceConfig | None = None,
    *,
    backend: Backend = "auto",
    out: Sequence[Tensor] | None = None,
) -> StrictResult:
    """Decode ⟨N, D⟩ strictly; returns ``(decoded, bottom_mask, gap_mask)``.

    ``backend="auto"`` uses the fused single-pass kernel (numba on CPU, Triton on CUDA) for large float32/64
    tensors when it is installed, else the eager path; all backends give bit-identical masks and values.

    ``out=(decoded, bottom_mask, gap_mask)``: write into these tensors (contiguous, N's shape and device; N's float
    dtype, bool, bool) and return them, instead of allocating the outputs; the eager path then uses in-place ops on
    two block-sized temporaries (see :func:`decode_eager_into`). Same masks and values, bit for bit. Not
    differentiable. For repeated decodes, :class:`StrictDecoder` also keeps those temporaries between calls.
    """
    cfg = config if config is not None else InferenceConfig()
    N, D = _as_float_pair(N, D)
    tau_infer, tau_train = cfg.thresholds_for(D.dtype)
    if out is not None:
        checked = check_out(out, N, D)
        _decode_into(N, D, (tau_infer, tau_train), checked, backend)
        return StrictResult(*checked)
    if _use_fused(N, D, backend):
        from zeroproof.inference import fused

        return StrictResult(*fused.decode_fused(N, D, tau_infer, tau_train))
    return StrictResult(*decode_eager(N, D, tau_infer, tau_train))


class _Buffers:
    """One dtype/device's flat output buffers (``capacity`` elements) and the eager path's scratch."""

    def __init__(self, N: Tensor, capacity: int) -> None:
        self.decoded = torch.empty(capacity, dtype=N.dtype, device=N.device)
        self.bottom = torch.empty(capacity, dtype=torch.bool, device=N.device)
        self.gap = torch.empty(capacity, dtype=torch.bool, device=N.device)
        self.spans = [_span(self.decoded), _span(self.bottom), _span(self.gap)]
        self.scratch: tuple[Tensor, Tensor] | None = None
        self.consts: tuple[Tensor, Tensor, Tensor] | None = None
        # Views for the last call's shape, reused while it stays the same (making views costs µs per call).
        self._shape: torch.Size | None = None
        self._views: Out = (self.decoded, self.bottom, self.gap)
        self._flat: Out = self._views
        self._scratch_views: tuple[Tensor, Tensor] | None = None

    @property
    def capacity(self) -> int:
        return self.decoded.numel()

    def tensors(self) -> list[Tensor]:
        return [self.decoded, self.bottom, self.gap, *(self.scratch or ())]

    def set_scratch(self, scratch: tuple[Tensor, Tensor] | None, consts: tuple[Tensor, Tensor, Tensor] | None) -> None:
        self.scratch, self.consts = scratch, consts
        self._shape = None

    def views(self, shape: torch.Size) -> tuple[Out, Out, tuple[Tensor, Tensor] | None]:
        """``(result views of shape, their flat views, scratch cut to the input when it is shorter)``."""
        if shape != self._shape:
            size = shape.numel()
            flat = [t if size == self.capacity else t[:size] for t in (self.decoded, self.bottom, self.gap)]
            self._flat = (flat[0], flat[1], flat[2])
            self._views = (flat[0].view(shape), flat[1].view(shape), flat[2].view(shape))
            self._scratch_views = None
            if self.scratch is not None:
                w, z = self.scratch
                self._scratch_views = (w, z) if size >= w.numel() else (w[:size], z[:size])
            self._shape = shape
        return self._views, self._flat, self._scratch_views


class StrictDecoder:
    """A reusable strict decode that allocates nothing once warm: it owns its output and scratch tensors.

    ``decoder(N, D)`` returns the same :class:`StrictResult` as :func:`strict_inference` (bit for bit), but the
    three tensors are views of buffers the decoder keeps, sized for the largest input seen so far (per dtype and
    device; they grow, never shrink, until :meth:`clear`). **They are overwritten by the next call**: copy
    (``.clone()``) what must outlive it. Not differentiable (inputs that require grad are decoded detached).
    One decoder per thread; decoders are cheap.

        decoder = StrictDecoder(InferenceConfig(tau_infer=1e-6, tau_train=1e-4))
        for x in batches:
            decoded, bottom_mask, gap_mask = decoder(*model(x))
    """

    def __init__(
        self,
        config: InferenceConfig | None = None,
        *,
        backend: Backend = "auto",
        block_elements: int = EAGER_BLOCK_ELEMENTS,
    ) -> None:
        if block_elements < 1:
            raise ValueError(f"block_elements must be >= 1, got {block_elements}")
        self._config = config if config is not None else InferenceConfig()
        self._backend: Backend = backend
        self._block_elements = block_elements
        self._buffers: dict[tuple[torch.dtype, torch.device], _Buffers] = {}

    @property
    def config(self) -> InferenceConfig:
        """The thresholds (fixed: make a new decoder for others)."""
        return self._config

    @property
    def backend(self) -> Backend:
        return self._backend

    def __call__(self, N: Tensor, D: Tensor) -> StrictResult:
        return self.decode(N, D)

    def decode(self, N: Tensor, D: Tensor) -> StrictResult:
        """Decode ⟨N, D⟩ into this decoder's buffers (valid until the next call); see :class:`StrictDecoder`."""
        N, D = _as_float_pair(N, D)
        thresholds = self.config.thresholds_for(D.dtype)
        eager = not _use_fused(N, D, self.backend)
        bufs = self._reserve(N, eager, thresholds)
        for span, name in ((_span(N), "N"), (_span(D), "D")):
            for i, mine in enumerate(bufs.spans):
                if span[0] < mine[1] and mine[0] < span[1]:
                    raise ValueError(f"{name} overlaps this decoder's {_OUT_NAMES[i]} buffer: clone it first")
        out, flat, scratch = bufs.views(N.shape)
        if not eager:
            from zeroproof.inference import fused

            fused.decode_fused(N, D, thresholds[0], thresholds[1], out=out)
        elif scratch is not None and bufs.consts is not None:
            _decode_flat(_flat(N), _flat(D), bufs.consts, *flat, *scratch)
        return StrictResult(*out)

    def _reserve(self, N: Tensor, eager: bool, thresholds: tuple[float, float]) -> _Buffers:
        key = (N.dtype, N.device)
        size = N.numel()
        bufs = self._buffers.get(key)
        if bufs is None or bufs.capacity < size:
            old = bufs
            # Drop the old outputs before allocating the new ones, so that both never coexist.
            self._buffers.pop(key, None)
            bufs = None
            bufs = _Buffers(N, size)
            if old is not None:
                bufs.set_scratch(old.scratch, old.consts)
            del old
            self._buffers[key] = bufs
        if eager:
            block = _block_elements(N, self._block_elements)
            if bufs.scratch is None or bufs.scratch[0].numel() < block:
                bufs.set_scratch(None, None)
                bufs.set_scratch(
                    (
                        torch.empty(block, dtype=N.dtype, device=N.device),
                        torch.empty(block, dtype=N.dtype, device=N.device),
                    ),
                    _consts(thresholds[0], thresholds[1], N.dtype),
                )
        return bufs

    @property
    def nbytes(self) -> int:
        """Bytes held in output and scratch buffers."""
        return sum(t.numel() * t.element_size() for b in self._buffers.values() for t in b.tensors())

    def clear(self) -> None:
        """Drop every buffer (results still referenced elsewhere stay valid); the next call allocates afresh."""
        self._buffers.clear()

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"StrictDecoder(tau_infer={cfg.tau_infer}, tau_train={cfg.tau_train}, backend={self.backend!r}, "
            f"nbytes={self.nbytes})"
        )
