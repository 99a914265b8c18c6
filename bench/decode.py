"""Strict decode speed per path, as ratios to a memory copy of the same traffic measured in the same run.

The decode of a float32 element moves 14 bytes (reads N and D: 8, writes value and two masks: 6). The baseline
``copy`` moves the same 14 bytes per element (a 7-byte-per-element buffer copied into a preallocated one).
Paths: ``naive`` (the textbook composition, for context), ``eager`` (the library's default tensor path),
``fused`` (numba single pass), ``torchscript`` (scripted eager), ``onnxruntime`` (exported decode graph).
Timings interleave the paths round-robin and report medians, because this machine is noisy.

Usage: python bench/decode.py [--sizes 1e3,1e4,1e5,1e6,1e7] [--out bench/results/decode.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroproof.inference import DecodeOnly, InferenceConfig, decode_eager
from zeroproof.inference import fused as fused_mod

CONFIG = InferenceConfig(tau_infer=1e-6, tau_train=1e-4)


def naive(N: torch.Tensor, D: torch.Tensor) -> tuple[torch.Tensor, ...]:
    bottom = (D.abs() < CONFIG.tau_infer) | ~torch.isfinite(N) | ~torch.isfinite(D)
    q = N / D
    bottom = bottom | ~torch.isfinite(q)
    gap = ~bottom & (D.abs() < CONFIG.effective_tau_train)
    return torch.where(bottom, torch.full_like(q, float("nan")), q), bottom, gap


def build_paths(n: int) -> dict[str, Callable[[torch.Tensor, torch.Tensor], Any]]:
    ti, tt = CONFIG.thresholds_for(torch.float32)
    paths: dict[str, Callable[[torch.Tensor, torch.Tensor], Any]] = {
        "naive": naive,
        "eager": lambda N, D: decode_eager(N, D, ti, tt),
    }
    if fused_mod.available("cpu"):
        paths["fused"] = lambda N, D: fused_mod.decode_fused(N, D, ti, tt)
    scripted = torch.jit.script(decode_eager)
    paths["torchscript"] = lambda N, D: scripted(N, D, ti, tt)
    try:
        import onnxruntime as ort

        tmp = Path(tempfile.mkdtemp()) / "decode.onnx"
        x = torch.ones(2)
        torch.onnx.export(DecodeOnly(CONFIG), (x, x), str(tmp), opset_version=17,
                          input_names=["N", "D"], output_names=["decoded", "bottom", "gap"],
                          dynamic_axes={k: {0: "n"} for k in ("N", "D", "decoded", "bottom", "gap")}, dynamo=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(tmp), opts, providers=["CPUExecutionProvider"])
        paths["onnxruntime"] = lambda N, D: session.run(None, {"N": N.numpy(), "D": D.numpy()})
    except ImportError:
        pass
    return paths


def measure(size: int, reps: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(size)
    N = torch.randn(size, generator=gen)
    D = torch.randn(size, generator=gen) * 1e-4  # a realistic mix of ok, gap and ⊥ elements
    src = torch.empty(size * 7, dtype=torch.uint8).random_(generator=gen)
    dst = torch.empty_like(src)
    paths = build_paths(size)
    timed: dict[str, Callable[[], Any]] = {"copy": lambda: dst.copy_(src)}
    timed.update({name: (lambda f=f: f(N, D)) for name, f in paths.items()})
    for fn in timed.values():  # warm-up: JIT compiles, allocator caches, page faults
        fn()
        fn()
    samples: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(reps):
        for name, fn in timed.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(v) for name, v in samples.items()}
    copy = medians["copy"]
    return {
        "elements": size,
        "bytes_moved": size * 14,
        "median_ms": {k: round(v * 1e3, 5) for k, v in medians.items()},
        "ratio_to_copy": {k: round(v / copy, 3) for k, v in medians.items() if k != "copy"},
        "reps": reps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1e3,1e4,1e5,1e6,1e7")
    parser.add_argument("--out", default="bench/results/decode.json")
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    results = [measure(size, reps=max(10, min(400, int(2e7 // size)))) for size in sizes]
    targets = {"fused_max_ratio_at_1e6_and_above": 1.5, "eager_max_ratio_at_1e6_and_above": 5.0}
    large = [r for r in results if r["elements"] >= 1_000_000]
    verdict = {
        "fused_within_target": bool(large) and all(r["ratio_to_copy"].get("fused", 1e9) <= 1.5 for r in large),
        "eager_within_target": bool(large) and all(r["ratio_to_copy"]["eager"] <= 5.0 for r in large),
    }
    report = {
        "benchmark": "strict decode, float32, CPU",
        "machine": {"cpu_threads": torch.get_num_threads(), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": np.__version__, "processor": platform.machine()},
        "baseline": "copy: 7 bytes/element copied into a preallocated buffer (14 bytes moved, like the decode)",
        "targets": targets,
        "verdict": verdict,
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for r in results:
        ratios = "  ".join(f"{k}={v:.2f}x" for k, v in r["ratio_to_copy"].items())
        print(f"{r['elements']:>10,d}  copy={r['median_ms']['copy']:.4f} ms  {ratios}")
    print(json.dumps(verdict))


if __name__ == "__main__":
    main()
