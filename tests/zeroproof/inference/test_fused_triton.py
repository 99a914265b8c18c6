"""The CUDA fused kernel (Triton): on a GPU it runs for real; without one, in Triton's CPU interpreter when
Triton is installed (a separate process, because TRITON_INTERPRET must be set before Triton is imported)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from zeroproof.inference import InferenceConfig, strict_inference

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[3]

CHECK = textwrap.dedent(
    """
    import math, torch
    from zeroproof.inference import InferenceConfig, decode_eager
    from zeroproof.inference import fused
    from zeroproof.export.check import adversarial_pairs
    cfg = InferenceConfig()
    ti, tt = cfg.thresholds_for(torch.float32)
    g = torch.Generator().manual_seed(0)
    N = torch.randn(5000, generator=g); D = torch.randn(5000, generator=g) * 1e-4
    D[::7] = 0.0; N[::11] = math.inf; D[::13] = math.nan; D[::17] = -math.inf
    aN, aD = adversarial_pairs(cfg)
    N, D = torch.cat([N, aN]), torch.cat([D, aD])
    out = torch.empty_like(N); b = torch.empty(N.shape, dtype=torch.bool); gap = torch.empty_like(b)
    fused._triton_kernel()(N, D, ti, tt, out, b, gap)
    rd, rb, rg = decode_eager(N, D, ti, tt)
    ok = ~rb
    same = (out[ok] == rd[ok]) & (torch.signbit(out[ok]) == torch.signbit(rd[ok]))
    assert torch.equal(b, rb) and torch.equal(gap, rg) and bool(same.all()) and bool(torch.isnan(out[rb]).all())
    print("TRITON-OK")
    """
)


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernel_matches_eager_in_interpreter_mode() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert "TRITON-OK" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_fused_matches_eager() -> None:
    g = torch.Generator().manual_seed(3)
    N = (torch.randn(1_000_000, generator=g) * 10).cuda()
    D = (torch.randn(1_000_000, generator=g) * 1e-4).cuda()
    cfg = InferenceConfig()
    eager = strict_inference(N, D, cfg, backend="eager")
    fused = strict_inference(N, D, cfg, backend="fused")
    assert torch.equal(eager.bottom_mask, fused.bottom_mask) and torch.equal(eager.gap_mask, fused.gap_mask)
    ok = ~eager.bottom_mask
    assert torch.equal(eager.decoded[ok], fused.decoded[ok])
