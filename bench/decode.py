"""Strict decode speed per path, as ratios to a memory copy of the same traffic measured in the same run.

The decode of a float32 element moves 14 bytes (reads N and D: 8, writes value and two masks: 6). The baseline
``copy`` moves the same 14 bytes per element (a 7-byte-per-element buffer copied into a preallocated one).

Paths that allocate their outputs (and temporaries) on every call, as ``strict_inference(N, D)`` does:
``naive`` (the textbook composition, for context), ``eager`` (:func:`decode_eager`, also what the TorchScript and
ONNX graphs contain), ``fused`` (numba single pass), ``torchscript`` (scripted ``decode_eager``), ``onnxruntime``
(the exported decode graph, ``session.run``).

Paths that write into preallocated outputs (issue 15 item 4), the ones the targets apply to:
``fused_out`` and ``eager_out`` (a warm :class:`StrictDecoder` with ``backend="fused"``/``"eager"``: outputs and
scratch reused, nothing allocated), ``eager_out_call`` (``strict_inference(..., backend="eager", out=...)``: given
outputs, two block-sized temporaries allocated per call), ``torchscript_out`` (scripted ``decode_eager_into``
with preallocated outputs and scratch), ``onnxruntime_iobinding`` (the same ONNX graph with its outputs bound to
preallocated arrays; ONNX Runtime keeps its temporaries in its own arena).

Every figure is measured with glibc's **default** allocator settings: the measurements run in a child process
whose environment has no ``GLIBC_TUNABLES`` and no ``MALLOC_*`` variables (glibc then serves allocations above its
mmap threshold, 32 MiB at most, with fresh pages: a 1e7-element decode that allocates page-faults its outputs and
temporaries on every call). ``--tuned-allocator`` adds, for context only, a second child with the heap-reusing
``GLIBC_TUNABLES`` the worker image sets.

The machine is shared and noisy: each child interleaves the paths round-robin and keeps per-path medians; the
child is run ``--runs`` times (default 3) and the report takes the median of the per-run ratios, and records the
spread and the load average around each run.

Usage: python -m bench.decode [--sizes 1e3,1e4,1e5,1e6,1e7] [--runs 3] [--out bench/results/decode.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zeroproof.inference import (
    DecodeOnly,
    InferenceConfig,
    StrictDecoder,
    decode_eager,
    decode_eager_into,
    strict_inference,
)
from zeroproof.inference import fused as fused_mod
from zeroproof.inference.decode import EAGER_BLOCK_ELEMENTS

ROOT = Path(__file__).resolve().parents[1]

CONFIG = InferenceConfig(tau_infer=1e-6, tau_train=1e-4)
HEAP_REUSE_TUNABLES = "glibc.malloc.mmap_threshold=4294967295:glibc.malloc.trim_threshold=4294967295"
TARGETS = {"fused_out": 1.2, "eager_out": 5.0}
TARGET_MIN_ELEMENTS = 1_000_000


def naive(N: torch.Tensor, D: torch.Tensor) -> tuple[torch.Tensor, ...]:
    bottom = (D.abs() < CONFIG.tau_infer) | ~torch.isfinite(N) | ~torch.isfinite(D)
    q = N / D
    bottom = bottom | ~torch.isfinite(q)
    gap = ~bottom & (D.abs() < CONFIG.effective_tau_train)
    return torch.where(bottom, torch.full_like(q, float("nan")), q), bottom, gap


def onnx_session(path: Path) -> Any:
    import onnxruntime as ort

    torch.onnx.export(
        DecodeOnly(CONFIG),
        (torch.ones(2), torch.ones(2)),
        str(path),
        opset_version=17,
        input_names=["N", "D"],
        output_names=["decoded", "bottom", "gap"],
        dynamic_axes={k: {0: "n"} for k in ("N", "D", "decoded", "bottom", "gap")},
        dynamo=False,
    )
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    # ORT's threads otherwise spin for a while after each run and slow down whatever is timed next.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build_paths(N: torch.Tensor, D: torch.Tensor) -> dict[str, Callable[[], Any]]:
    ti, tt = CONFIG.thresholds_for(torch.float32)
    size = N.numel()
    out = (torch.empty(size), torch.empty(size, dtype=torch.bool), torch.empty(size, dtype=torch.bool))
    paths: dict[str, Callable[[], Any]] = {
        "naive": lambda: naive(N, D),
        "eager": lambda: decode_eager(N, D, ti, tt),
        "eager_out": (lambda d: lambda: d(N, D))(StrictDecoder(CONFIG, backend="eager")),
        "eager_out_call": lambda: strict_inference(N, D, CONFIG, backend="eager", out=out),
    }
    if fused_mod.available("cpu"):
        paths["fused"] = lambda: fused_mod.decode_fused(N, D, ti, tt)
        paths["fused_out"] = (lambda d: lambda: d(N, D))(StrictDecoder(CONFIG, backend="fused"))
    scripted = torch.jit.script(decode_eager)
    paths["torchscript"] = lambda: scripted(N, D, ti, tt)
    scripted_into = torch.jit.script(decode_eager_into)
    block = min(size, EAGER_BLOCK_ELEMENTS)
    w, z = torch.empty(block), torch.empty(block)
    ts_out = (torch.empty(size), torch.empty(size, dtype=torch.bool), torch.empty(size, dtype=torch.bool))
    paths["torchscript_out"] = lambda: scripted_into(N, D, ti, tt, *ts_out, w, z)
    try:
        session = onnx_session(Path(tempfile.mkdtemp()) / "decode.onnx")
    except ImportError:
        return paths
    n_np, d_np = N.numpy(), D.numpy()
    paths["onnxruntime"] = lambda: session.run(None, {"N": n_np, "D": d_np})
    bound = {
        "decoded": np.empty(size, dtype=np.float32),
        "bottom": np.empty(size, dtype=np.bool_),
        "gap": np.empty(size, dtype=np.bool_),
    }
    io = session.io_binding()
    io.bind_cpu_input("N", n_np)
    io.bind_cpu_input("D", d_np)
    for name, arr in bound.items():
        io.bind_output(name, "cpu", 0, arr.dtype.type, list(arr.shape), arr.ctypes.data)
    keep_alive = (bound, n_np, d_np)  # the binding holds raw pointers into these arrays

    def run_bound() -> Any:
        assert keep_alive
        return session.run_with_iobinding(io)

    paths["onnxruntime_iobinding"] = run_bound
    return paths


#: D's scale per data mix: 1e-4 gives ~1% ⊥, ~67% gap, ~32% ok; 1e-6 gives ~68% ⊥ (worst case for any path
#: with a slow special-value branch).
MIXES = {"realistic": 1e-4, "bottom_heavy": 1e-6}


def measure(size: int, reps: int, mix: str = "realistic") -> dict[str, Any]:
    gen = torch.Generator().manual_seed(size)
    N = torch.randn(size, generator=gen)
    D = torch.randn(size, generator=gen) * MIXES[mix]
    src = torch.empty(size * 7, dtype=torch.uint8).random_(generator=gen)
    dst = torch.empty_like(src)
    timed: dict[str, Callable[[], Any]] = {"copy": lambda: dst.copy_(src)}
    timed.update(build_paths(N, D))
    for fn in timed.values():  # warm-up: JIT compiles, allocator caches, page faults, decoder buffers
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
    bottom = float((torch.isnan(D) | (D.abs() < CONFIG.tau_infer)).float().mean())
    return {
        "elements": size,
        "mix": {"name": mix, "bottom_share": round(bottom, 3)},
        "bytes_moved": size * 14,
        "median_ms": {k: round(v * 1e3, 5) for k, v in medians.items()},
        "ratio_to_copy": {k: round(v / copy, 3) for k, v in medians.items() if k != "copy"},
        "reps": reps,
    }


def clean_env(tunables: str | None) -> dict[str, str]:
    """This environment without any glibc malloc setting (``GLIBC_TUNABLES``, ``MALLOC_*``), plus ``tunables``."""
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES" and not k.startswith("MALLOC_")}
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    return env


def run_child(sizes: str, tunables: str | None, mix: str = "realistic") -> dict[str, Any]:
    load_before = os.getloadavg()
    proc = subprocess.run(
        [sys.executable, "-m", "bench.decode", "--child", "--sizes", sizes, "--mix", mix],
        cwd=ROOT,
        env=clean_env(tunables),
        capture_output=True,
        text=True,
        check=True,
    )
    child: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    child["loadavg_before"] = [round(x, 2) for x in load_before]
    child["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    return child


def combine(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per size: the median over runs of each path's ratio (and time), with the runs' min and max ratio."""
    combined = []
    for i, first in enumerate(runs[0]["results"]):
        per_run = [run["results"][i] for run in runs]
        paths = list(first["ratio_to_copy"])
        combined.append(
            {
                "elements": first["elements"],
                "mix": first["mix"],
                "bytes_moved": first["bytes_moved"],
                "median_ms": {
                    k: round(statistics.median(r["median_ms"][k] for r in per_run), 5) for k in first["median_ms"]
                },
                "ratio_to_copy": {
                    k: round(statistics.median(r["ratio_to_copy"][k] for r in per_run), 3) for k in paths
                },
                "ratio_range_over_runs": {
                    k: [min(r["ratio_to_copy"][k] for r in per_run), max(r["ratio_to_copy"][k] for r in per_run)]
                    for k in paths
                },
                "reps_per_run": first["reps"],
                "runs": len(per_run),
            }
        )
    return combined


def verdict(results: list[dict[str, Any]]) -> dict[str, Any]:
    large = [r for r in results if r["elements"] >= TARGET_MIN_ELEMENTS]
    out: dict[str, Any] = {}
    for path, limit in TARGETS.items():
        ratios = [r["ratio_to_copy"].get(path) for r in large]
        out[f"{path}_within_target"] = bool(large) and all(x is not None and x <= limit for x in ratios)
    return out


def child_main(sizes: list[int], mix: str) -> None:
    env_malloc = {k: v for k, v in os.environ.items() if k == "GLIBC_TUNABLES" or k.startswith("MALLOC_")}
    results = [measure(size, reps=max(10, min(400, int(2e7 // size))), mix=mix) for size in sizes]
    print(json.dumps({"malloc_env": env_malloc, "results": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", default="1e3,1e4,1e5,1e6,1e7")
    parser.add_argument("--runs", type=int, default=3, help="child processes per allocator setting")
    parser.add_argument("--tuned-allocator", action="store_true", help="also measure with heap-reusing tunables")
    parser.add_argument(
        "--bottom-heavy-sizes",
        default="1e6,1e7",
        help="also measure these sizes (default allocator) with ~68%% of elements ⊥; empty to skip",
    )
    parser.add_argument("--mix", default="realistic", choices=sorted(MIXES), help=argparse.SUPPRESS)
    parser.add_argument("--out", default="bench/results/decode.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main([int(float(s)) for s in args.sizes.split(",")], args.mix)
        return
    configs: dict[str, tuple[str, str | None, str]] = {"default_allocator": (args.sizes, None, "realistic")}
    if args.bottom_heavy_sizes:
        configs["default_allocator_bottom_heavy"] = (args.bottom_heavy_sizes, None, "bottom_heavy")
    if args.tuned_allocator:
        configs["heap_reuse_allocator"] = (args.sizes, HEAP_REUSE_TUNABLES, "realistic")
    report_configs: dict[str, Any] = {}
    for name, (sizes, tunables, mix) in configs.items():
        runs = [run_child(sizes, tunables, mix) for _ in range(max(1, args.runs))]
        results = combine(runs)
        report_configs[name] = {
            "GLIBC_TUNABLES": tunables,
            "malloc_env_seen_by_child": runs[0]["malloc_env"],
            "verdict": verdict(results),
            "loadavg_per_run": [{"before": r["loadavg_before"], "after": r["loadavg_after"]} for r in runs],
            "results": results,
        }
    report = {
        "benchmark": "strict decode, float32, CPU",
        "when_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "processor": platform.machine(),
        },
        "baseline": "copy: 7 bytes/element copied into a preallocated buffer (14 bytes moved, like the decode)",
        "targets": {f"{k}_max_ratio_at_1e6_and_above": v for k, v in TARGETS.items()},
        "eager_block_elements": EAGER_BLOCK_ELEMENTS,
        "configs": report_configs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    for name, cfg in report_configs.items():
        print(f"[{name}] load averages per run: {cfg['loadavg_per_run']}")
        for r in cfg["results"]:
            ratios = "  ".join(f"{k}={v:.2f}x" for k, v in r["ratio_to_copy"].items())
            print(f"{r['elements']:>10,d}  copy={r['median_ms']['copy']:.4f} ms  {ratios}")
        print(json.dumps(cfg["verdict"]))


if __name__ == "__main__":
    main()
