"""Closed-form polish of a projective model's linear rational head (variable projection, after SGD).

Given the learned features, ``N`` and ``D`` of a rational head are *linear* in the head's parameters, so the
implicit residual ``N·t_D − D·t_N`` is linear too and the weighted implicit fit is an ordinary least-squares
problem. SGD reaches the neighbourhood of its minimum quickly but pins the zeros of ``D`` only to the level of
its gradient noise (~1e-5), while the strict decode needs ``|D| < tau_infer`` (1e-6) at a pole. Solving the
least squares in float64 puts the zeros where the data say, to float precision.

The projective scale is fixed by keeping ``mean(sign(D_now)·D)`` over finite targets (the current mean ``|D|``)
at its current value (the trivial ⟨0, 0⟩ also has zero residual); weighting by the current signs also keeps the
orientation the sign consistency loss chose (a plain mean of ``D`` can be ~0 for a ``D`` that changes sign).
When SGD has not yet given D its sign changes (a short run: D ≈ 1 everywhere), that constraint is nearly a plain
mean of the solved D, which is ~0, and the solve blows the scale up (×160 on the arm after 300 steps): the strict
decode's ⊥ band |D| < tau_infer then shrinks by as much and float32 poses next to a pole (θ2 = ±π) come out finite.
So the solve is repeated with the signs of the solved D itself until its mean ``|D|`` is within 2× of the
intended one (one repeat on the arm; none when SGD already got the signs right).
The polish is accepted only if the head really is linear in those parameters (checked numerically) and the
implicit fit loss goes down; otherwise the model is left untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog
import torch
from torch import Tensor, nn
from torch.func import functional_call, jacfwd

from zeroproof.losses.scm import implicit_fit_loss
from zeroproof.losses.targets import lift_targets

log = structlog.get_logger("zeroproof.training.polish")


@dataclass(frozen=True)
class PolishReport:
    accepted: bool
    fit_before: float
    fit_after: float
    reason: str
    parameters: int
    #: solves repeated with the solved D's own signs to restore the intended scale (0: the first solve kept it)
    resolves: int = 0
    #: mean |D| over finite targets before the polish (the scale kept) and after it
    scale_before: float = float("nan")
    scale_after: float = float("nan")


def _flat(params: dict[str, Tensor]) -> Tensor:
    return torch.cat([p.reshape(-1) for p in params.values()])


def _unflat(vec: Tensor, like: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    offset = 0
    for name, p in like.items():
        out[name] = vec[offset : offset + p.numel()].view_as(p)
        offset += p.numel()
    return out


@torch.no_grad()
def polish_rational_head(
    model: nn.Module,
    head_parameters: Sequence[str],
    x: Tensor,
    y: Tensor,
    *,
    singular_weight: float = 1.0,
    ridge: float = 1e-12,
    chunk: int = 4096,
    max_resolves: int = 3,
) -> PolishReport:
    """Solve the weighted implicit least squares for ``head_parameters`` (names in ``model.named_parameters()``).

    Weights follow the ``"balanced"`` fit loss: ``1/(1+|y|)`` on finite targets, ``singular_weight`` on ±∞
    targets (residual ``D``), ⊥ targets ignored.
    """
    named = dict(model.named_parameters())
    missing = [n for n in head_parameters if n not in named]
    if missing:
        raise KeyError(f"unknown parameters {missing}")
    model64 = _double_copy(model)
    base = {n: dict(model64.named_parameters())[n].detach().clone() for n in head_parameters}
    theta0 = _flat(base)
    x64 = x.to(torch.float64)
    targets = lift_targets(y.to(torch.float64))

    def outputs(params: dict[str, Tensor], xb: Tensor) -> tuple[Tensor, Tensor]:
        N, D = functional_call(model64, params, (xb,))
        return N, D

    p = theta0.numel()
    M = torch.zeros(p, p, dtype=torch.float64)
    g = torch.zeros(p, dtype=torch.float64)
    v = torch.zeros(p, dtype=torch.float64)
    v0 = 0.0
    n_finite = 0
    linear_err = 0.0

    def sign_constraint(params: dict[str, Tensor]) -> tuple[Tensor, float]:
        """``(v, v0)`` with ``v·θ + v0 = mean(sign(D(params))·D(θ))`` over finite targets."""
        vs = torch.zeros(p, dtype=torch.float64)
        vs0 = 0.0
        for start in range(0, x64.shape[0], chunk):
            xb = x64[start : start + chunk]
            fin = targets.finite_mask[start : start + chunk].to(torch.float64)
            _, jd = jacfwd(outputs)(base, xb)
            Jd = torch.cat([jd[k].reshape(*jd[k].shape[:2], -1) for k in base], dim=-1)
            cd = outputs(base, xb)[1] - Jd @ theta0
            Ds = outputs(params, xb)[1]
            sel = fin * torch.sign(Ds)
            vs += (Jd * sel.unsqueeze(-1)).sum(dim=(0, 1))
            vs0 += float((cd * sel).sum())
        return vs / n_finite, vs0 / n_finite

    def mean_abs_d(params: dict[str, Tensor]) -> float:
        total = 0.0
        for start in range(0, x64.shape[0], chunk):
            fin = targets.finite_mask[start : start + chunk].to(torch.float64)
            total += float((fin * outputs(params, x64[start : start + chunk])[1].abs()).sum())
        return total / n_finite

    for start in range(0, x64.shape[0], chunk):
        xb = x64[start : start + chunk]
        tb = targets.select(torch.arange(start, min(start + chunk, x64.shape[0])))
        jac_n, jac_d = jacfwd(outputs)(base, xb)
        Jn = torch.cat([jac_n[k].reshape(*jac_n[k].shape[:2], -1) for k in base], dim=-1)  # (B, out, P)
        Jd = torch.cat([jac_d[k].reshape(*jac_d[k].shape[:2], -1) for k in base], dim=-1)
        N0, D0 = outputs(base, xb)
        cn = N0 - Jn @ theta0  # the parts not produced by the head parameters (e.g. the anchor 1 in D)
        cd = D0 - Jd @ theta0
        # linearity check at a second point: outputs must equal J·θ + c there too
        probe = {k: t + 0.01 * torch.randn_like(t) for k, t in base.items()}
        Np, Dp = outputs(probe, xb)
        tp = _flat(probe)
        linear_err = max(
            linear_err,
            float((Np - (Jn @ tp + cn)).abs().max()),
            float((Dp - (Jd @ tp + cd)).abs().max()),
        )
        tN, tD = tb.numerator, tb.denominator
        A = Jn * tD.unsqueeze(-1) - Jd * tN.unsqueeze(-1)  # residual = A·θ + c
        c = cn * tD - cd * tN
        w = torch.where(tb.finite_mask, 1.0 / (1.0 + tN.abs()), torch.full_like(tN, singular_weight))
        w = torch.where(tb.bottom_mask, torch.zeros_like(w), w)
        Aw = A * w.unsqueeze(-1)
        M += torch.einsum("bkp,bkq->pq", Aw, A)
        g += torch.einsum("bkp,bk->p", Aw, c)
        # normaliser: mean of sign(D_now)·D over finite targets, i.e. mean |D| for the current signs (linear in θ)
        sel = tb.finite_mask.to(torch.float64) * torch.sign(D0)
        v += (Jd * sel.unsqueeze(-1)).sum(dim=(0, 1))
        v0 += float((cd * sel).sum())
        n_finite += int(tb.finite_mask.sum())
    if linear_err > 1e-6:
        return PolishReport(False, float("nan"), float("nan"), f"head is not linear (err {linear_err:.2e})", p)
    if n_finite == 0:
        return PolishReport(False, float("nan"), float("nan"), "no finite targets", p)
    v /= n_finite
    v0 /= n_finite
    m = float(v @ theta0) + v0  # current mean |D| over finite targets: keeps the scale and the orientation
    scale = float(M.diagonal().mean()) or 1.0

    def solve(vs: Tensor, vs0: float) -> Tensor:
        K = torch.zeros(p + 1, p + 1, dtype=torch.float64)
        K[:p, :p] = 2 * M + 2 * ridge * scale * torch.eye(p, dtype=torch.float64)
        K[:p, p] = vs
        K[p, :p] = vs
        rhs = torch.cat([-2 * g, torch.tensor([m - vs0], dtype=torch.float64)])
        solution: Tensor = torch.linalg.lstsq(K, rhs.unsqueeze(-1)).solution
        return solution.squeeze(-1)[:p]

    theta = solve(v, v0)
    if not bool(torch.isfinite(theta).all()):
        return PolishReport(False, float("nan"), float("nan"), "least squares produced non-finite values", p)
    resolves = 0
    achieved = mean_abs_d(_unflat(theta, base))
    # The signs of D_now were not those of the solved D (see the module docstring): solve again with the solved
    # D's own signs, which keeps its orientation and puts its mean |D| back at m.
    while m > 0 and not (0.5 * m <= achieved <= 2.0 * m) and resolves < max_resolves:
        vs, vs0 = sign_constraint(_unflat(theta, base))
        candidate = solve(vs, vs0)
        if not bool(torch.isfinite(candidate).all()):
            break
        theta = candidate
        resolves += 1
        achieved = mean_abs_d(_unflat(theta, base))
    if resolves:
        log.info("polish.rescaled", resolves=resolves, mean_abs_d_target=m, mean_abs_d=achieved)
    before = _fit(model, x, targets)
    saved = {n: named[n].detach().clone() for n in head_parameters}
    for name, value in _unflat(theta, base).items():
        named[name].copy_(value.to(named[name].dtype))
    after = _fit(model, x, targets)
    if not after < before:
        for name, value in saved.items():
            named[name].copy_(value)
        log.info("polish.rejected", fit_before=before, fit_after=after)
        return PolishReport(False, before, after, "fit loss did not improve", p, resolves, m, achieved)
    log.info("polish.accepted", fit_before=before, fit_after=after, parameters=p)
    return PolishReport(True, before, after, "ok", p, resolves, m, achieved)


def _double_copy(model: nn.Module) -> nn.Module:
    import copy

    clone = copy.deepcopy(model)
    return clone.to(torch.float64).eval()


def _fit(model: nn.Module, x: Tensor, targets: object) -> float:
    from zeroproof.losses.targets import LiftedTargets

    assert isinstance(targets, LiftedTargets)
    model.eval()
    N, D = model(x)
    t32 = LiftedTargets(
        targets.numerator.to(N.dtype), targets.denominator.to(N.dtype), targets.status
    )  # evaluate in the model's own dtype: what deployment sees
    return float(implicit_fit_loss(N.double(), D.double(), t32))
