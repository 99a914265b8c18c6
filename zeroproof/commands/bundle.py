"""``zeroproof bundle``: inspect, verify and export model bundles; check ⊥ semantics of an export."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import torch

from zeroproof.export.bundle import load_bundle, read_manifest, save_bundle
from zeroproof.export.torchscript import save_torchscript
from zeroproof.inference import InferenceConfig
from zeroproof.layers import known_pole_model


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("bundle", help="inspect, verify, export model bundles")
    bsub = p.add_subparsers(dest="bundle_command", metavar="ACTION")
    bsub.required = True

    info = bsub.add_parser("info", help="print a bundle's manifest (no weights loaded)")
    info.add_argument("path")
    info.set_defaults(func=_info)

    verify = bsub.add_parser("verify", help="load a bundle and verify its weights checksum")
    verify.add_argument("path")
    verify.add_argument("--sha256", help="also require this weights checksum (pinning)")
    verify.set_defaults(func=_verify)

    ts = bsub.add_parser("torchscript", help="write a TorchScript file with the strict decode inside")
    ts.add_argument("path")
    ts.add_argument("output")
    ts.set_defaults(func=_torchscript)

    onnx = bsub.add_parser("onnx", help="write an ONNX file with the strict decode inside, then check it")
    onnx.add_argument("path")
    onnx.add_argument("output")
    onnx.add_argument("--samples", type=int, default=4096, help="random inputs for the ⊥-semantics check")
    onnx.set_defaults(func=_onnx)

    demo = bsub.add_parser("make-known-pole", help="write the y = 1/(x - pole) model as a bundle")
    demo.add_argument("output")
    demo.add_argument("--pole", type=float, default=0.5)
    demo.add_argument("--version", default="known-pole-1")
    demo.set_defaults(func=_make_known_pole)


def _info(args: argparse.Namespace) -> int:
    sys.stdout.write(read_manifest(args.path).to_json() + "\n")
    return 0


def _verify(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.path, expected_sha256=args.sha256)
    m = bundle.manifest
    sys.stdout.write(f"ok: {m.architecture} version={m.model_version} weights_sha256={m.weights_sha256}\n")
    return 0


def _torchscript(args: argparse.Namespace) -> int:
    bundle = load_bundle(args.path)
    save_torchscript(bundle.model, args.output, bundle.config)
    sys.stdout.write(f"wrote {args.output}\n")
    return 0


def _onnx(args: argparse.Namespace) -> int:
    from zeroproof.export.check import onnx_runtime, probe_decode_onnx, verify_bottom_semantics
    from zeroproof.export.onnx import export_onnx

    bundle = load_bundle(args.path)
    in_features = bundle.manifest.in_features
    if in_features is None:
        raise ValueError("bundle manifest has no in_features; cannot build an ONNX input")
    export_onnx(bundle.model, args.output, in_features, bundle.config)
    inputs = torch.randn(args.samples, in_features, generator=torch.Generator().manual_seed(0))
    reports = [
        verify_bottom_semantics(onnx_runtime(args.output), bundle.model, bundle.config, inputs, name="onnxruntime"),
        probe_decode_onnx(bundle.config),
    ]
    sys.stdout.write(json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
    return 0 if all(r.passed for r in reports) else 1


def _make_known_pole(args: argparse.Namespace) -> int:
    manifest = save_bundle(
        known_pole_model(args.pole), args.output, config=InferenceConfig(), model_version=args.version
    )
    sys.stdout.write(f"wrote {args.output} ({manifest.model_version}, sha256 {manifest.weights_sha256[:12]}…)\n")
    return 0
