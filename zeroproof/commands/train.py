"""``zeroproof train-arm``, ``zeroproof validate``, ``zeroproof calibrate``: train the reference model, check a
bundle before deployment, and sweep tau_infer over held-out data."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from zeroproof.inference import InferenceConfig


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "train-arm", help="train the 2-link arm IK projective model, write a bundle (and compare with an MLP)"
    )
    p.add_argument("--out", default="runs/arm.zpb", help="bundle path to write (default: runs/arm.zpb)")
    p.add_argument("--seconds", type=float, default=90.0, help="wall-clock training budget (default 90)")
    p.add_argument("--max-steps", type=int, default=20_000, help="optimizer steps (cosine schedule length)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--checkpoint", help="also write a training checkpoint here")
    p.add_argument("--heldout", help="also write held-out data (.npz with x, y) for `zeroproof validate`")
    p.add_argument("--report", help="evaluate against a same-size MLP and write the raw numbers (JSON) here")
    p.add_argument("--per-bucket", type=int, default=4000, help="held-out inputs per |det J| bucket")
    p.add_argument("--model-version", default="arm-ik-1")
    p.add_argument("--tau-infer", type=float, default=1e-6)
    p.add_argument("--tau-train", type=float, default=1e-4)
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.add_argument("--verbose", action="store_true", help="log every training epoch (structlog, debug level)")
    p.set_defaults(func=run_train_arm)

    v: argparse.ArgumentParser = sub.add_parser(
        "validate", help="pre-deployment checks of a bundle on held-out data; exit 1 when a check fails"
    )
    v.add_argument("bundle")
    v.add_argument("--data", required=True, help=".npz with 'x' (inputs) and optionally 'y' (targets)")
    v.add_argument("--checkpoint", help="training checkpoint (sign-consistency evidence from its history)")
    v.add_argument("--report-dir", default="validation-report", help="writes validation.md and validation.json")
    v.add_argument("--min-coverage", type=float, default=0.95)
    v.add_argument("--max-gap-rate", type=float, default=0.05)
    v.add_argument("--tau-infer", type=float, help="override the bundle's tau_infer")
    v.add_argument("--tau-train", type=float, help="override the bundle's tau_train")
    v.add_argument("--skip-onnx", action="store_true", help="skip the ONNX export check (reported as a failure)")
    v.set_defaults(func=run_validate)

    c: argparse.ArgumentParser = sub.add_parser("calibrate", help="sweep tau_infer over held-out |D|")
    c.add_argument("bundle")
    c.add_argument("--data", required=True, help=".npz with 'x' and optionally 'y'")
    c.add_argument("--candidates", help="comma-separated tau_infer values (default: 1e-9..1e-2, 2 per decade)")
    c.add_argument("--tau-train", type=float, help="fixed tau_train for every candidate (default 100 × tau_infer)")
    c.add_argument("--min-coverage", type=float, default=0.95)
    c.add_argument("--max-gap-rate", type=float, default=0.05)
    c.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    c.set_defaults(func=run_calibrate)


def _configure_logs(verbose: bool) -> None:
    """The CLI's own log level: per-epoch events are debug-level and would drown the summary otherwise."""
    import logging

    import structlog

    level = logging.DEBUG if verbose else logging.WARNING
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(level))


def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return format(value, spec)


def bucket_table(evaluation: dict[str, Any]) -> str:
    """Markdown table of the bucketed comparison (median relative error; ⊥ rate of the projective model)."""
    lines = [
        "| held-out bucket | projective: median rel. error | projective: ⊥ rate | projective: gap rate "
        "| MLP: median rel. error |",
        "|---|---|---|---|---|",
    ]
    for row in evaluation["buckets"].values():
        p, m = row["projective"], row["mlp"]
        lines.append(
            f"| {row['label']} | {_fmt(p['rel_error']['median'])} | {p['bottom_rate']:.3f} | {p['gap_rate']:.3f} "
            f"| {_fmt(m['rel_error']['median'])} |"
        )
    ex = evaluation["exact_singular"]
    lines.append(
        f"| det J = 0 exactly (θ2 = 0) | ∞, orientation correct {ex['projective_orientation_accuracy']:.3f} "
        f"| {ex['projective_bottom_rate']:.3f} | – "
        f"| finite output, sign matches {ex['mlp_sign_matches_orientation']:.3f} |"
    )
    return "\n".join(lines)


def run_train_arm(args: argparse.Namespace) -> int:
    from zeroproof.export.bundle import save_bundle
    from zeroproof.models.arm import DEFAULT_L1, DEFAULT_L2, generate_arm_data, parameter_count
    from zeroproof.training.arm import evaluate_arm, heldout_summary, jsonable, train_arm, train_mlp_baseline
    from zeroproof.training.validation import known_singular_sets, save_heldout, singular_set_checks

    _configure_logs(args.verbose)
    torch.set_num_threads(max(args.threads, 1))
    config = InferenceConfig(tau_infer=args.tau_infer, tau_train=args.tau_train)
    out = sys.stdout
    out.write(f"training the arm IK model (≤ {args.seconds:g} s, ≤ {args.max_steps} steps)…\n")
    eval_seed = args.seed + 12345

    def before_polish(model: torch.nn.Module) -> dict[str, Any]:
        if not args.report:
            return {}
        return evaluate_arm(model, None, config, per_bucket=args.per_bucket, seed=eval_seed)

    result = train_arm(
        seconds=args.seconds,
        max_steps=args.max_steps,
        seed=args.seed,
        config=config,
        progress=args.progress,
        evaluate_before_polish=before_polish,
    )
    polish = result.extra.get("polish", {})
    out.write(
        f"  {result.steps} SGD steps + closed-form head polish (accepted={polish.get('accepted')}) "
        f"in {result.seconds:.1f} s\n"
    )
    # Every known singular set must decode to ⊥ before anything is written: a bundle that answers a finite joint
    # velocity at a singular pose must never be deployed, nor reused by `zeroproof run` (which reuses --out).
    singular = singular_set_checks(result.model, config, known_singular_sets(result.model))
    for check in singular:
        out.write(f"  {check.status.upper():<4}  {check.name}: {check.detail}\n")
    failed = [c for c in singular if c.status == "fail"]
    if failed:
        sys.stderr.write(
            "zeroproof train-arm: FAILED: outputs not ⊥ on singular set "
            + ", ".join(f"{c.name.removeprefix('singular_set[').removesuffix(']')} [{c.detail}]" for c in failed)
            + f"; no bundle written to {args.out}. Train longer (--max-steps, --seconds) or check --tau-infer.\n"
        )
        return 1
    provenance = result.trainer.provenance()
    provenance.update(
        {
            "reference_model": "2-link planar arm differential IK",
            "link_lengths": [DEFAULT_L1, DEFAULT_L2],
            "train_seconds": round(result.seconds, 3),
            "train_steps": result.steps,
            "head_polish": polish,
            "seed": args.seed,
            "singular_sets": {c.name: {"status": c.status, "detail": c.detail} for c in singular},
        }
    )
    manifest = save_bundle(
        result.model, args.out, config=config, model_version=args.model_version, extra=jsonable(provenance)
    )
    out.write(f"  wrote bundle {args.out} ({manifest.model_version}, sha256 {manifest.weights_sha256[:12]}…)\n")
    if args.checkpoint:
        result.trainer.save_checkpoint(args.checkpoint, epoch=result.trainer.epoch)
        out.write(f"  wrote checkpoint {args.checkpoint}\n")
    if args.heldout:
        x, y = generate_arm_data(20_000, seed=args.seed + 777, near_fraction=0.1, singular_fraction=0.02)
        save_heldout(args.heldout, x, y)
        out.write(f"  wrote held-out data {args.heldout} (20000 inputs: 10% near-singular, 2% exactly singular)\n")
    if not args.report:
        return 0
    out.write(f"training the MLP baseline with the same {result.steps} steps…\n")
    mlp, mlp_seconds = train_mlp_baseline(result.steps, seed=args.seed)
    t0 = time.perf_counter()
    evaluation = evaluate_arm(result.model, mlp, config, per_bucket=args.per_bucket, seed=eval_seed)
    summary = heldout_summary(result.model, config, seed=args.seed + 777)
    report = {
        "generated_by": "zeroproof train-arm",
        "config": {"tau_infer": config.tau_infer, "tau_train": config.tau_train, "seed": args.seed},
        "training": {
            "projective_seconds": result.seconds,
            "projective_steps": result.steps,
            "mlp_seconds": mlp_seconds,
            "mlp_steps": result.steps,
            "torch_threads": torch.get_num_threads(),
            "projective_parameters": parameter_count(result.model),
            "mlp_parameters": parameter_count(mlp),
            "sgd_seconds": result.extra.get("sgd_seconds"),
            "polish": polish,
            "val_after_polish": result.extra.get("val_after_polish"),
            "history_tail": provenance["history_tail"],
        },
        "evaluation": evaluation,
        "evaluation_sgd_only": result.extra.get("before_polish"),
        "heldout": summary,
        "evaluation_seconds": time.perf_counter() - t0,
    }
    path = Path(args.report)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    out.write(bucket_table(evaluation) + "\n")
    out.write(
        f"held-out mixture: coverage (non-singular) {summary['coverage_nonsingular']:.4f}, "
        f"gap rate {summary['gap_rate']:.4f}, ⊥ rate on singular targets {_fmt(summary['bottom_rate_singular'])}\n"
    )
    out.write(f"approach orientation accuracy (hysteresis): {_fmt(evaluation['approach']['orientation_accuracy'])}\n")
    out.write(f"wrote {path}\n")
    return 0


def _override(bundle_cfg: InferenceConfig, tau_infer: float | None, tau_train: float | None) -> InferenceConfig | None:
    if tau_infer is None and tau_train is None:
        return None
    return InferenceConfig(
        tau_infer=bundle_cfg.tau_infer if tau_infer is None else tau_infer,
        tau_train=bundle_cfg.tau_train if tau_train is None else tau_train,
    )


def run_validate(args: argparse.Namespace) -> int:
    from zeroproof.export.bundle import read_manifest
    from zeroproof.training.validation import load_heldout, validate_bundle, write_reports

    _configure_logs(False)
    x, y = load_heldout(args.data)
    cfg = _override(read_manifest(args.bundle).config, args.tau_infer, args.tau_train)
    report = validate_bundle(
        args.bundle,
        x,
        y,
        checkpoint=args.checkpoint,
        config=cfg,
        min_coverage=args.min_coverage,
        max_gap_rate=args.max_gap_rate,
        onnx=not args.skip_onnx,
        workdir=args.report_dir,
    )
    if args.skip_onnx:
        from zeroproof.training.validation import Check

        report.checks.append(Check("onnx_bottom_semantics", "fail", "skipped (--skip-onnx): not verified"))
    md, js = write_reports(report, args.report_dir)
    for check in report.checks:
        sys.stdout.write(f"{check.status.upper():<4}  {check.name}: {check.detail}\n")
    sys.stdout.write(f"{'PASSED' if report.passed else 'FAILED'}; reports: {md}, {js}\n")
    return 0 if report.passed else 1


def run_calibrate(args: argparse.Namespace) -> int:
    from zeroproof.export.bundle import load_bundle
    from zeroproof.training.calibration import choose_tau_infer, rows_to_json, rows_to_markdown, sweep_tau_infer
    from zeroproof.training.validation import load_heldout

    x, y = load_heldout(args.data)
    bundle = load_bundle(args.bundle)
    with torch.no_grad():
        N, D = bundle.model(x)
    candidates = [float(v) for v in args.candidates.split(",")] if args.candidates else None
    if y is not None:
        y = y.reshape(N.shape)
    rows = sweep_tau_infer(N, D, y, candidates=candidates, tau_train=args.tau_train)
    best = choose_tau_infer(rows, min_coverage=args.min_coverage, max_gap_rate=args.max_gap_rate)
    if args.json:
        payload = {"rows": rows_to_json(rows), "recommended_tau_infer": best.tau_infer if best else None}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    else:
        sys.stdout.write(rows_to_markdown(rows) + "\n")
        if best is None:
            sys.stdout.write("no candidate meets the coverage and gap-rate limits\n")
        else:
            sys.stdout.write(
                f"recommended tau_infer={best.tau_infer:.1e} (largest meeting coverage ≥ {args.min_coverage} "
                f"and gap rate ≤ {args.max_gap_rate}); bundle has {bundle.config.tau_infer:g}\n"
            )
    return 0 if best is not None else 1
