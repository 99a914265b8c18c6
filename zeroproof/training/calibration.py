"""Threshold calibration: sweep ``tau_infer`` over held-out ⟨N, D⟩ and report what each candidate costs.

For every candidate the sweep decodes the same held-out pairs strictly and reports coverage (1 − ⊥ rate), the
monitor's accepted share (1 − ⊥ − gap), gap rate, error on accepted finite targets, and, when targets are
known, the ⊥ rate on finite targets (false rejections) and on singular ones (correct rejections). The table is
the evidence for choosing a threshold or A/B testing two of them (seed: "A/B test thresholds").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from zeroproof.inference.config import InferenceConfig
from zeroproof.inference.decode import strict_inference
from zeroproof.losses.targets import LiftedTargets, lift_targets


@dataclass(frozen=True)
class CalibrationRow:
    tau_infer: float
    tau_train: float
    coverage: float
    accepted_rate: float
    bottom_rate: float
    gap_rate: float
    bottom_rate_finite: float
    bottom_rate_singular: float
    mae_accepted: float
    median_rel_error_accepted: float
    max_abs_error_accepted: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def default_candidates(low: float = 1e-9, high: float = 1e-2, per_decade: int = 2) -> list[float]:
    decades = math.log10(high) - math.log10(low)
    n = max(round(decades * per_decade) + 1, 2)
    return [float(v) for v in torch.logspace(math.log10(low), math.log10(high), n, dtype=torch.float64)]


def sweep_tau_infer(
    N: Tensor,
    D: Tensor,
    y: Tensor | LiftedTargets | None = None,
    *,
    candidates: Sequence[float] | None = None,
    tau_train: float | None = None,
    gap_ratio: float | None = 100.0,
) -> list[CalibrationRow]:
    """One :class:`CalibrationRow` per candidate ``tau_infer`` (ascending).

    The gap for each candidate is ``[tau_infer, tau_train)`` with ``tau_train`` fixed if given, else
    ``gap_ratio × tau_infer`` (the default keeps the 1e-6/1e-4 ratio of the default config), else no gap.
    """
    cands = sorted(set(float(c) for c in (candidates if candidates is not None else default_candidates())))
    targets: LiftedTargets | None
    if y is None:
        targets = None
    elif isinstance(y, LiftedTargets):
        targets = y
    else:
        targets = lift_targets(torch.as_tensor(y).to(torch.float64))
    rows: list[CalibrationRow] = []
    for tau in cands:
        if tau_train is not None:
            tt: float | None = max(tau_train, tau)
        elif gap_ratio is not None:
            tt = tau * gap_ratio
        else:
            tt = None
        cfg = InferenceConfig(tau_infer=tau, tau_train=tt)
        res = strict_inference(N, D, cfg)
        bottom, gap = res.bottom_mask, res.gap_mask
        bottom_rate = float(bottom.double().mean())
        gap_rate = float(gap.double().mean())
        nan = math.nan
        b_fin = b_sing = mae = rel = mx = nan
        if targets is not None:
            fin = targets.finite_mask
            sing = targets.singular_mask
            if bool(fin.any()):
                b_fin = float(bottom[fin].double().mean())
            if bool(sing.any()):
                b_sing = float(bottom[sing].double().mean())
            acc = fin & ~bottom
            if bool(acc.any()):
                truth = targets.numerator[acc].double()
                err = (res.decoded[acc].double() - truth).abs()
                mae = float(err.mean())
                mx = float(err.max())
                rel = float((err / truth.abs().clamp_min(1e-12)).median())
        rows.append(
            CalibrationRow(
                tau_infer=tau,
                tau_train=cfg.effective_tau_train,
                coverage=1.0 - bottom_rate,
                accepted_rate=1.0 - bottom_rate - gap_rate,
                bottom_rate=bottom_rate,
                gap_rate=gap_rate,
                bottom_rate_finite=b_fin,
                bottom_rate_singular=b_sing,
                mae_accepted=mae,
                median_rel_error_accepted=rel,
                max_abs_error_accepted=mx,
            )
        )
    return rows


def choose_tau_infer(
    rows: Sequence[CalibrationRow], *, min_coverage: float = 0.95, max_gap_rate: float = 0.05
) -> CalibrationRow | None:
    """The largest (most conservative) ``tau_infer`` meeting both limits; ``None`` if none does.

    Coverage here is on finite targets when known (``1 − bottom_rate_finite``), so correct ⊥ on singular
    targets never disqualifies a candidate.
    """
    ok: list[CalibrationRow] = []
    for row in rows:
        cov = 1.0 - row.bottom_rate_finite if not math.isnan(row.bottom_rate_finite) else row.coverage
        if cov >= min_coverage and row.gap_rate <= max_gap_rate:
            ok.append(row)
    return max(ok, key=lambda r: r.tau_infer) if ok else None


def rows_to_markdown(rows: Sequence[CalibrationRow]) -> str:
    header = "| tau_infer | coverage | ⊥ finite | ⊥ singular | gap rate | MAE accepted | median rel err |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r.tau_infer:.1e} | {r.coverage:.4f} | {_fmt(r.bottom_rate_finite)} | {_fmt(r.bottom_rate_singular)} "
            f"| {r.gap_rate:.4f} | {_fmt(r.mae_accepted, '.3g')} | {_fmt(r.median_rel_error_accepted, '.3g')} |"
        )
    return "\n".join(lines)


def _fmt(value: float, spec: str = ".4f") -> str:
    return "n/a" if math.isnan(value) else format(value, spec)


def rows_to_json(rows: Sequence[CalibrationRow]) -> list[dict[str, Any]]:
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.to_dict().items()} for r in rows]
