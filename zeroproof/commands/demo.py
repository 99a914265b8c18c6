"""``zeroproof demo``: strict decode on a model with a known pole, with coverage, gap and ⊥ rates."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from zeroproof.inference import InferenceConfig, SCMInferenceWrapper, SCMMonitor
from zeroproof.layers import known_pole_model
from zeroproof.losses.coverage import coverage_metric


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="strict decode of y = 1/(x - pole) near its pole")
    p.add_argument("--pole", type=float, default=0.5)
    p.add_argument("--samples", type=int, default=100_001, help="inputs evenly spaced on [pole - 1, pole + 1]")
    p.add_argument("--tau-infer", type=float, default=1e-6)
    p.add_argument("--tau-train", type=float, default=1e-4)
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run_demo)


def demo_report(pole: float, samples: int, config: InferenceConfig) -> dict[str, Any]:
    model = SCMInferenceWrapper(known_pole_model(pole), config=config).eval()
    # float64 grid so that the pole itself is one of the inputs; the model computes in float32.
    x = torch.linspace(pole - 1.0, pole + 1.0, samples, dtype=torch.float64).float().unsqueeze(1)
    with torch.no_grad():
        decoded, bottom, gap = model(x)
    monitor = SCMMonitor()
    monitor.update(bottom, gap)
    report = monitor.report()
    near = (x - pole).abs().squeeze(1)
    examples = []
    for idx in torch.argsort(near)[:5].tolist():
        examples.append(
            {
                "x": float(x[idx, 0]),
                "status": "bottom" if bool(bottom[idx, 0]) else ("gap" if bool(gap[idx, 0]) else "ok"),
                "value": None if bool(bottom[idx, 0]) else float(decoded[idx, 0]),
            }
        )
    return {
        "model": f"y = 1/(x - {pole})",
        "tau_infer": config.tau_infer,
        "tau_train": config.tau_train,
        **report,
        "coverage_metric": coverage_metric(bottom),
        "bottom_count": int(bottom.sum()),
        "gap_count": int(gap.sum()),
        "nonfinite_outside_bottom": int((~torch.isfinite(decoded) & ~bottom).sum()),
        "closest_to_pole": examples,
    }


def run_demo(args: argparse.Namespace) -> int:
    config = InferenceConfig(tau_infer=args.tau_infer, tau_train=args.tau_train)
    report = demo_report(args.pole, args.samples, config)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
        return 0
    out = sys.stdout
    out.write(f"zeroproof demo: {report['model']} on {report['total_predictions']} inputs around the pole\n")
    out.write(f"  thresholds      tau_infer={config.tau_infer:g}  tau_train={config.tau_train}\n")
    out.write(f"  coverage        {report['coverage']:.6f}  (accepted as-is: 1 - ⊥ rate - gap rate)\n")
    out.write(f"  coverage_metric {report['coverage_metric']:.6f}  (training notion: 1 - ⊥ rate)\n")
    out.write(f"  ⊥ rate          {report['bottom_rate']:.6f}  ({report['bottom_count']} inputs)\n")
    out.write(f"  gap rate        {report['gap_rate']:.6f}  ({report['gap_count']} inputs)\n")
    out.write(f"  non-finite outside ⊥: {report['nonfinite_outside_bottom']} (the contract says 0)\n")
    out.write("  closest inputs to the pole:\n")
    for ex in report["closest_to_pole"]:
        value = "⊥" if ex["value"] is None else f"{ex['value']:.6g}"
        out.write(f"    x={ex['x']:.9f}  {ex['status']:<6} {value}\n")
    return 0
