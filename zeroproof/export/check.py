"""Does an exported model keep ⊥ semantics in its target runtime? (seed: "ensure ⊥ propagation semantics are
preserved in the target runtime").

Two checks, both reported, never assumed:
- :func:`probe_decode_onnx` exports the decode alone and feeds it adversarial ⟨N, D⟩ pairs (±0, subnormals,
  values at and one ulp around each threshold, ±max, ±inf, NaN): masks and values must equal eager bit for bit.
- :func:`verify_bottom_semantics` runs a whole exported model on real inputs and compares with eager PyTorch:
  contract invariants, masks bit-identical, values equal (to matmul rounding) where not ⊥, and, when the runtime
  also returns ⟨N, D⟩, its masks equal the strict decode of its own ⟨N, D⟩ exactly.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zeroproof.inference.config import InferenceConfig, dtype_threshold
from zeroproof.inference.decode import decode_eager, strict_inference
from zeroproof.inference.wrapper import DecodeOnly

Runtime = Callable[[Tensor], Sequence[Tensor]]


@dataclass
class SemanticsReport:
    runtime: str
    passed: bool
    checks: dict[str, bool]
    counts: dict[str, int] = field(default_factory=dict)
    max_value_diff: float = 0.0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def onnx_runtime(path: str | os.PathLike[str]) -> Runtime:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name

    def run(x: Tensor) -> list[Tensor]:
        outs = session.run(None, {input_name: x.detach().cpu().numpy()})
        return [torch.from_numpy(np.asarray(o)) for o in outs]

    return run


def torchscript_runtime(path: str | os.PathLike[str]) -> Runtime:
    module = torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call]
    module.eval()

    def run(x: Tensor) -> list[Tensor]:
        with torch.no_grad():
            return list(module(x))

    return run


def invariant_violations(decoded: Tensor, bottom: Tensor, gap: Tensor) -> dict[str, int]:
    """Counts of contract §1 invariant violations (all zero when the semantics hold)."""
    return {
        "bottom_and_gap": int((bottom & gap).sum()),
        "nonfinite_outside_bottom": int((~torch.isfinite(decoded) & ~bottom).sum()),
        "bottom_not_nan": int((bottom & ~torch.isnan(decoded)).sum()),
    }


def _bitwise_equal(a: Tensor, b: Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    both_nan = torch.isnan(a) & torch.isnan(b)
    same = (a == b) & (torch.signbit(a) == torch.signbit(b))
    return bool((same | both_nan).all())


def verify_bottom_semantics(
    runtime: Runtime,
    reference: nn.Module,
    config: InferenceConfig,
    inputs: Tensor,
    *,
    name: str = "runtime",
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> SemanticsReport:
    """Compare an exported model (``runtime``) with eager PyTorch on ``inputs``; see module docstring."""
    reference.eval()
    with torch.no_grad():
        N, D = reference(inputs)
        ref = strict_inference(N, D, config, backend="eager")
    outs = runtime(inputs)
    decoded, bottom, gap = outs[0], outs[1].to(torch.bool), outs[2].to(torch.bool)
    violations = invariant_violations(decoded, bottom, gap)
    masks_equal = torch.equal(bottom, ref.bottom_mask) and torch.equal(gap, ref.gap_mask)
    ok = ~ref.bottom_mask & ~bottom
    q_rt, q_ref = decoded[ok].double(), ref.decoded[ok].double()
    diff = (q_rt - q_ref).abs()
    max_diff = float(diff.max()) if diff.numel() else 0.0
    tolerance = rtol * q_ref.abs() + atol
    checks = {"invariants_hold": not any(violations.values()), "masks_bit_identical_to_eager": masks_equal}
    notes: list[str] = []
    if len(outs) >= 5:
        n_rt, d_rt = outs[3].double(), outs[4].double()
        n_ref, d_ref = N.double(), D.double()
        checks["projective_pair_matches_eager"] = bool(
            torch.allclose(
                n_rt, n_ref, rtol=rtol, atol=atol * max(1.0, (float(n_ref.abs().max()) if n_ref.numel() else 0.0))
            )
            and torch.allclose(
                d_rt, d_ref, rtol=rtol, atol=atol * max(1.0, (float(d_ref.abs().max()) if d_ref.numel() else 0.0))
            )
        )
        # Near a pole N/D is ill-conditioned: propagate the observed pair differences to first order,
        # |Δq| <= |ΔN|/|D| + |q|·|ΔD|/|D|, instead of a flat tolerance that would reject every gap value.
        abs_d = d_ref[ok].abs()
        tolerance = tolerance + ((n_rt - n_ref)[ok].abs() + q_ref.abs() * (d_rt - d_ref)[ok].abs()) / abs_d * 2
        own = strict_inference(outs[3], outs[4], config, backend="eager")
        checks["decode_exact_on_own_projective_pair"] = (
            torch.equal(own.bottom_mask, bottom)
            and torch.equal(own.gap_mask, gap)
            and _bitwise_equal(own.decoded, decoded)
        )
    else:
        notes.append("runtime returns no numerator/denominator: pair checks skipped, flat value tolerance used")
    checks["values_match_eager_outside_bottom"] = masks_equal and bool((diff <= tolerance).all())
    if not masks_equal:
        notes.append(
            f"mask mismatches: bottom {int((bottom != ref.bottom_mask).sum())}, gap {int((gap != ref.gap_mask).sum())}"
        )
    counts = {
        "inputs": int(inputs.shape[0]),
        "elements": bottom.numel(),
        "bottom": int(bottom.sum()),
        "gap": int(gap.sum()),
        **{f"violations_{k}": v for k, v in violations.items()},
    }
    return SemanticsReport(name, all(checks.values()), checks, counts, max_diff, notes)


def adversarial_pairs(config: InferenceConfig, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    """Every combination of special N and D values, including each threshold and its neighbours."""
    info = torch.finfo(dtype)
    specials: list[float] = [
        0.0,
        -0.0,
        1.0,
        -1.0,
        0.5,
        3.0,
        info.tiny,
        info.tiny / 4,
        -info.tiny / 4,
        info.max,
        -info.max,
        info.max / 2,
        1e30,
        -1e-30,
        float("inf"),
        float("-inf"),
        float("nan"),
    ]
    for tau in (config.tau_infer, config.effective_tau_train):
        t = torch.tensor(dtype_threshold(tau, dtype), dtype=dtype)
        for v in (
            t,
            torch.nextafter(t, torch.tensor(0.0, dtype=dtype)),
            torch.nextafter(t, torch.tensor(1.0, dtype=dtype)),
        ):
            specials += [float(v), -float(v)]
    values = torch.tensor(specials, dtype=dtype)
    N = values.repeat_interleave(len(specials))
    D = values.repeat(len(specials))
    return N, D


def probe_decode_onnx(config: InferenceConfig, *, opset_version: int = 17) -> SemanticsReport:
    """Export the decode alone to ONNX and check it bit for bit against eager on adversarial pairs."""
    import onnxruntime as ort

    N, D = adversarial_pairs(config)
    ti, tt = config.thresholds_for(torch.float32)
    ref_decoded, ref_bottom, ref_gap = decode_eager(N, D, ti, tt)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decode.onnx"
        torch.onnx.export(
            DecodeOnly(config),
            (N[:2], D[:2]),
            str(path),
            opset_version=opset_version,
            input_names=["numerator", "denominator"],
            output_names=["decoded", "bottom_mask", "gap_mask"],
            dynamic_axes={k: {0: "n"} for k in ("numerator", "denominator", "decoded", "bottom_mask", "gap_mask")},
            dynamo=False,
        )
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        decoded, bottom, gap = (
            torch.from_numpy(np.asarray(o))
            for o in session.run(None, {"numerator": N.numpy(), "denominator": D.numpy()})
        )
    ok = ~ref_bottom
    checks = {
        "bottom_bit_identical": torch.equal(bottom, ref_bottom),
        "gap_bit_identical": torch.equal(gap, ref_gap),
        # IEEE equality: onnxruntime may return +0 where eager returns -0 (0/-1); both are the value zero.
        "values_equal_outside_bottom": bool((decoded[ok] == ref_decoded[ok]).all()),
        "invariants_hold": not any(invariant_violations(decoded, bottom, gap).values()),
    }
    signed_zero = int((ok & (decoded == 0) & (torch.signbit(decoded) != torch.signbit(ref_decoded))).sum())
    counts = {
        "pairs": N.numel(),
        "bottom": int(ref_bottom.sum()),
        "gap": int(ref_gap.sum()),
        "signed_zero_differences": signed_zero,
    }
    notes = [f"{signed_zero} zeros differ only in sign (IEEE-equal)"] if signed_zero else []
    return SemanticsReport("onnxruntime-decode-probe", all(checks.values()), checks, counts, notes=notes)
