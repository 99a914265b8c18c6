"""Train and evaluate the reference 2-link arm IK model against a plain MLP with the same step budget.

Used by ``zeroproof train-arm`` and ``bench/arm_ik.py``; every figure it reports is measured on held-out data
generated with seeds disjoint from the training seed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroproof.inference.config import InferenceConfig
from zeroproof.inference.decode import strict_inference
from zeroproof.losses.coverage import coverage_metric
from zeroproof.losses.scm import LossWeights
from zeroproof.losses.targets import lift_targets
from zeroproof.models.arm import (
    ArmIKMLP,
    ArmIKProjective,
    arm_bucket_data,
    arm_ik_truth,
    generate_arm_data,
    parameter_count,
)
from zeroproof.ops.weak_sign import WeakSignTracker, infinity_sign
from zeroproof.training.calibration import rows_to_json, sweep_tau_infer
from zeroproof.training.polish import polish_rational_head
from zeroproof.training.trainer import SCMTrainer, TrainerConfig

log = structlog.get_logger("zeroproof.training.arm")

#: The linear rational head of :class:`ArmIKProjective` (what :func:`polish_rational_head` solves for).
ARM_HEAD_PARAMETERS = ("coefficients.weight", "coefficients.bias", "denominator.weight", "denominator.bias")

BUCKETS = ("le_1e-5", "1e-5_1e-4", "1e-4_1e-3", "gt_1e-3")
BUCKET_LABELS = {
    "le_1e-5": "|det J| ≤ 1e-5",
    "1e-5_1e-4": "1e-5 < |det J| ≤ 1e-4",
    "1e-4_1e-3": "1e-4 < |det J| ≤ 1e-3",
    "gt_1e-3": "|det J| > 1e-3",
}


@dataclass
class ArmTrainResult:
    model: ArmIKProjective
    trainer: SCMTrainer
    steps: int
    seconds: float
    config: InferenceConfig
    extra: dict[str, Any] = field(default_factory=dict)


def train_arm(
    *,
    seconds: float = 90.0,
    max_steps: int = 20_000,
    n_train: int = 40_000,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    hidden: int = 32,
    denominator_hidden: int = 0,
    config: InferenceConfig | None = None,
    progress: bool = False,
    polish: bool = True,
    polish_samples: int = 16_000,
    evaluate_before_polish: Callable[[nn.Module], Any] | None = None,
) -> ArmTrainResult:
    """Train :class:`ArmIKProjective` for ``max_steps`` optimizer steps or ``seconds``, whichever comes first,
    with :class:`SCMTrainer` and the SCM losses, then (``polish``) solve the rational head's weighted implicit
    least squares in closed form (:func:`polish_rational_head`): SGD learns features and orientation, the polish
    pins the denominator's zeros below tau_infer. ``evaluate_before_polish(model)`` is called in between (to
    report what SGD alone achieved); its time is not counted in ``seconds``.
    """
    cfg = config if config is not None else InferenceConfig()
    torch.manual_seed(seed)
    x, y = generate_arm_data(n_train, seed=seed)
    x_val, y_val = generate_arm_data(4096, seed=seed + 1000)
    model = ArmIKProjective(hidden=hidden, denominator_hidden=denominator_hidden)
    tcfg = TrainerConfig(
        batch_size=batch_size,
        lr=lr,
        tau_infer=cfg.tau_infer,
        tau_train=cfg.tau_train,
        perturb_tau_train=(cfg.effective_tau_train, cfg.effective_tau_train * 10) if cfg.tau_train else None,
        loss=LossWeights(fit=1.0, margin=0.01, sign=1.0, rejection=0.1, target_coverage=0.95),
        scheduler_interval="step",
        seed=seed,
        progress=progress,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine(max_steps))
    trainer = SCMTrainer(model, tcfg, optimizer=optimizer, scheduler=scheduler)
    steps_per_epoch = math.ceil(n_train / batch_size)
    epochs = math.ceil(max_steps / steps_per_epoch)
    t0 = time.perf_counter()
    trainer.fit((x, y.float()), (x_val, y_val.float()), epochs=epochs, max_seconds=seconds)
    sgd_seconds = time.perf_counter() - t0
    extra: dict[str, Any] = {"sgd_seconds": sgd_seconds}
    if evaluate_before_polish is not None:
        t_eval = time.perf_counter()
        extra["before_polish"] = evaluate_before_polish(model)
        extra["before_polish_seconds"] = time.perf_counter() - t_eval
    if polish:
        report = polish_rational_head(model, ARM_HEAD_PARAMETERS, x[:polish_samples], y[:polish_samples])
        extra["polish"] = {
            "accepted": report.accepted,
            "fit_before": report.fit_before,
            "fit_after": report.fit_after,
            "reason": report.reason,
            "parameters": report.parameters,
            "resolves": report.resolves,
            "mean_abs_d_before": report.scale_before,
            "mean_abs_d_after": report.scale_after,
            "samples": min(polish_samples, n_train),
        }
        extra["val_after_polish"] = trainer.evaluate((x_val, y_val.float()))
    elapsed = time.perf_counter() - t0 - extra.get("before_polish_seconds", 0.0)
    log.info("arm.trained", steps=trainer.global_step, seconds=round(elapsed, 2))
    return ArmTrainResult(model, trainer, trainer.global_step, elapsed, cfg, extra)


def _cosine(total: int) -> Any:
    def factor(step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total)) * 0.999 + 0.001

    return factor


def train_mlp_baseline(
    steps: int,
    *,
    n_train: int = 40_000,
    batch_size: int = 256,
    lr: float = 3e-3,
    seed: int = 0,
    hidden: int | None = None,
    target_params: int | None = None,
) -> tuple[ArmIKMLP, float]:
    """Plain MLP, same data, batch size, optimizer, schedule and step count; Huber loss on finite targets
    (MSE on targets up to ~1e7 near the poles diverges; Huber is the kindest standard choice for the MLP)."""
    if hidden is None:
        want = target_params if target_params is not None else parameter_count(ArmIKProjective())
        hidden = min(range(2, 256), key=lambda h: abs(parameter_count(ArmIKMLP(h)) - want))
    torch.manual_seed(seed)
    x, y = generate_arm_data(n_train, seed=seed)
    finite = torch.isfinite(y).all(dim=1)
    x, y = x[finite], y[finite].float()
    model = ArmIKMLP(hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(steps))
    gen = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    done = 0
    model.train()
    while done < steps:
        order = torch.randperm(x.shape[0], generator=gen)
        for start in range(0, x.shape[0], batch_size):
            if done >= steps:
                break
            idx = order[start : start + batch_size]
            loss = F.smooth_l1_loss(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            done += 1
    model.eval()
    return model, time.perf_counter() - t0


def _rel_err(pred: Tensor, truth: Tensor) -> Tensor:
    return (pred.double() - truth).abs() / truth.abs().clamp_min(1e-300)


def _median(t: Tensor) -> float | None:
    return float(t.median()) if t.numel() else None


def _stats(t: Tensor) -> dict[str, float | None]:
    if not t.numel():
        return {"median": None, "p90": None, "mean": None}
    t = t.double()
    return {"median": float(t.median()), "p90": float(torch.quantile(t, 0.9)), "mean": float(t.mean())}


class _NoBaseline(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return torch.full((x.shape[0], 2), math.nan)


@torch.no_grad()
def evaluate_arm(
    model: nn.Module,
    mlp: nn.Module | None,
    config: InferenceConfig,
    *,
    per_bucket: int = 4000,
    seed: int = 12345,
) -> dict[str, Any]:
    """Bucketed comparison (raw numbers). Errors of the projective model are over its non-⊥ outputs; the ⊥ rate of
    each bucket is reported beside them (⊥ is the model saying "no value", which the MLP can never say)."""
    model.eval()
    baseline: nn.Module = mlp if mlp is not None else _NoBaseline()
    baseline.eval()
    data = arm_bucket_data(per_bucket, seed=seed)
    buckets: dict[str, Any] = {}
    for name in BUCKETS:
        x, y = data[name]
        N, D = model(x)
        res = strict_inference(N, D, config)
        pred_mlp = baseline(x)
        ok = ~res.bottom_mask
        rel_p = _rel_err(res.decoded[ok], y[ok])
        rel_m = _rel_err(pred_mlp, y).flatten()
        abs_p = (res.decoded[ok].double() - y[ok]).abs()
        abs_m = (pred_mlp.double() - y).abs().flatten()
        # Direction of the joint velocity vector (what a controller steers by), per input, non-⊥ inputs only.
        row_ok = ok.all(dim=1)
        cos_p = F.cosine_similarity(res.decoded[row_ok].double(), y[row_ok], dim=1)
        cos_m = F.cosine_similarity(pred_mlp.double(), y, dim=1)
        buckets[name] = {
            "label": BUCKET_LABELS[name],
            "inputs": int(x.shape[0]),
            "projective": {
                "bottom_rate": float(res.bottom_mask.float().mean()),
                "gap_rate": float(res.gap_mask.float().mean()),
                "coverage": coverage_metric(res.bottom_mask),
                "rel_error": _stats(rel_p),
                "abs_error": _stats(abs_p),
                "direction_cosine_median": _median(cos_p),
            },
            "mlp": None
            if mlp is None
            else {
                "rel_error": _stats(rel_m),
                "abs_error": _stats(abs_m),
                "direction_cosine_median": _median(cos_m),
            },
        }
    # Exactly singular inputs (θ2 = 0, det J = 0): the right answer is ⊥, with the orientation of ∞.
    x, y = data["exact"]
    N, D = model(x)
    res = strict_inference(N, D, config)
    signed = torch.isinf(y)
    target_sign = torch.sign(y)
    reported = infinity_sign(N, res.bottom_mask)
    mlp_sign = torch.sign(baseline(x))
    exact = {
        "inputs": int(x.shape[0]),
        "elements_with_signed_infinity": int(signed.sum()),
        "projective_bottom_rate": float(res.bottom_mask.float().mean()),
        "projective_orientation_accuracy": float((reported[signed].double() == target_sign[signed]).double().mean()),
        "projective_orientation_accuracy_sign_n": float(
            (torch.sign(N)[signed].double() == target_sign[signed]).double().mean()
        ),
        "mlp_bottom_rate": None if mlp is None else 0.0,
        "mlp_sign_matches_orientation": None
        if mlp is None
        else float((mlp_sign[signed].double() == target_sign[signed]).double().mean()),
        "max_abs_D": float(D.abs().max()),
    }
    return {
        "buckets": buckets,
        "exact_singular": exact,
        "approach": approach_orientation(model, config, seed=seed + 1),
    }


@torch.no_grad()
def approach_orientation(
    model: nn.Module, config: InferenceConfig, *, entities: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Robots moving θ2 → 0 from either side, one :class:`WeakSignTracker` state per robot: at θ2 = 0 the decode is
    ⊥ and the held sign of D must give the one-sided limit's orientation (−∞ side when approaching from θ2 < 0)."""
    g = torch.Generator().manual_seed(seed)
    tracker = WeakSignTracker(config=config)
    path = torch.cat([torch.logspace(-1, -9, 17, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    correct = total = bottom_at_pole = 0
    for e in range(entities):
        side = -1.0 if e % 2 else 1.0
        theta1 = float((2 * torch.rand((), generator=g) - 1) * math.pi)
        d = (2 * torch.rand(2, generator=g, dtype=torch.float64) - 1).tolist()
        reported: Tensor | None = None
        last_bottom: Tensor | None = None
        for t2 in path.tolist():
            x = torch.tensor([[theta1, side * t2, d[0], d[1]]], dtype=torch.float32)
            N, D = model(x)
            res = strict_inference(N, D, config)
            reported = tracker.observe(f"robot-{e}", N[0], D[0], res.bottom_mask[0])
            last_bottom = res.bottom_mask[0]
        assert reported is not None
        assert last_bottom is not None
        num, _, _ = arm_ik_truth(torch.tensor([[theta1, 0.0, d[0], d[1]]]))
        truth = torch.sign(num[0]) * side  # one-sided limit: det J has the sign of θ2 near 0
        bottom_at_pole += int(last_bottom.all())
        mask = truth != 0
        correct += int((reported[mask].double() == truth[mask]).sum())
        total += int(mask.sum())
    return {
        "entities": entities,
        "bottom_rate_at_pole": bottom_at_pole / entities,
        "orientation_accuracy": correct / total if total else None,
        "note": "half approach θ2 → 0⁺, half θ2 → 0⁻; the sign of ∞ comes from WeakSignTracker (hysteresis on D)",
    }


@torch.no_grad()
def heldout_summary(model: nn.Module, config: InferenceConfig, *, n: int = 20_000, seed: int = 777) -> dict[str, Any]:
    """Coverage and gap rate on a realistic held-out mixture (10% near-singular, 2% exactly singular poses)."""
    x, y = generate_arm_data(n, seed=seed, near_fraction=0.1, singular_fraction=0.02)
    N, D = model(x)
    res = strict_inference(N, D, config)
    targets = lift_targets(y)
    fin_rows = targets.finite_mask.all(dim=1)
    calib = sweep_tau_infer(N.double(), D.double(), y, gap_ratio=100.0)
    return {
        "inputs": n,
        "coverage_all": coverage_metric(res.bottom_mask),
        "coverage_nonsingular": coverage_metric(res.bottom_mask[fin_rows]),
        "gap_rate": float(res.gap_mask.float().mean()),
        "bottom_rate_singular": float(res.bottom_mask[~fin_rows].float().mean()) if bool((~fin_rows).any()) else None,
        "calibration": rows_to_json(calib),
    }


def jsonable(value: Any) -> Any:
    """``value`` with NaN/±inf floats replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
