"""Reference robotics model: differential inverse kinematics of a 2-link planar arm.

Inputs ``(θ1, θ2, dx, dy)``, outputs ``(dθ1, dθ2) = J⁻¹·(dx, dy) = adj(J)·(dx, dy) / det J`` with
``det J = l1·l2·sin θ2``: singular (no joint velocity achieves a generic end-effector velocity) at θ2 ∈ {0, π}.

The projective model mirrors that structure without being told the answer: the numerator is linear in
``(dx, dy)`` with coefficients learned from angle features (sin/cos of θ1, θ2, θ1+θ2 plus a small tanh layer),
like ``adj(J)``; the denominator ``D = 1 + δQ`` is *shared* by both outputs (the pole ``det J`` is common to them)
and depends on the relative angle θ2 only (a serial arm's singular set is invariant under rotating the base):
``δQ`` is linear in ``(sin θ2, cos θ2)``, optionally plus a small tanh layer of them (``denominator_hidden``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from zeroproof.models.registry import register_architecture

DEFAULT_L1 = 1.0
DEFAULT_L2 = 0.8

#: Every known singular set of the arm (det J = l1·l2·sin θ2 = 0), each for any θ1 and any (dx, dy): θ2 = 0 (arm
#: stretched) and θ2 = ±π (arm folded back). As float32 inputs ±π are ±3.1415927, 8.7e-8 beyond ±π: there
#: |det J| = 7e-8, far below tau_infer = 1e-6, and the served output must be ⊥ as at θ2 = 0.
ARM_SINGULAR_SETS: dict[str, float] = {"θ2 = 0": 0.0, "θ2 = +π": math.pi, "θ2 = −π": -math.pi}


def angle_features(theta1: Tensor, theta2: Tensor) -> Tensor:
    """``[sin θ1, cos θ1, sin θ2, cos θ2, sin(θ1+θ2), cos(θ1+θ2)]`` along the last axis."""
    t12 = theta1 + theta2
    return torch.stack(
        [torch.sin(theta1), torch.cos(theta1), torch.sin(theta2), torch.cos(theta2), torch.sin(t12), torch.cos(t12)],
        dim=-1,
    )


@register_architecture("arm_ik_projective")
class ArmIKProjective(nn.Module):
    """Projective rational head for 2-link differential IK: ``forward(x (B, 4)) -> (N, D)``, each ``(B, 2)``."""

    def __init__(self, hidden: int = 32, denominator_hidden: int = 0, shared_denominator: bool = True) -> None:
        super().__init__()
        if hidden < 1 or denominator_hidden < 0:
            raise ValueError("hidden must be >= 1 and denominator_hidden >= 0")
        self.init_kwargs: dict[str, Any] = {
            "hidden": hidden,
            "denominator_hidden": denominator_hidden,
            "shared_denominator": shared_denominator,
        }
        self.in_features = 4
        self.out_features = 2
        self.shared_denominator = shared_denominator
        self.body = nn.Sequential(nn.Linear(6, hidden), nn.Tanh())
        self.coefficients = nn.Linear(6 + hidden, self.out_features * 2)
        self.den_body = nn.Sequential(nn.Linear(2, denominator_hidden), nn.Tanh()) if denominator_hidden else None
        self.denominator = nn.Linear(2 + denominator_hidden, 1 if shared_denominator else self.out_features)
        nn.init.zeros_(self.denominator.weight)  # δQ = 0 at init: D = 1, far from any pole
        nn.init.zeros_(self.denominator.bias)

    @staticmethod
    def singular_sets(n: int = 2000, seed: int = 0) -> dict[str, Tensor]:
        """Inputs on every known singular set (:data:`ARM_SINGULAR_SETS`), where every output must be ⊥."""
        return {name: arm_singular_poses(theta2, n, seed=seed) for name, theta2 in ARM_SINGULAR_SETS.items()}

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        theta1, theta2, d = x[:, 0], x[:, 1], x[:, 2:4]
        phi = angle_features(theta1, theta2)
        feats = torch.cat([phi, self.body(phi)], dim=-1)
        coef = self.coefficients(feats).view(-1, self.out_features, 2)
        N = (coef * d.unsqueeze(1)).sum(dim=-1)
        psi = phi[:, 2:4]
        if self.den_body is not None:
            psi = torch.cat([psi, self.den_body(psi)], dim=-1)
        # D = 1 + δQ with the anchor folded into the bias: the same function, but (1 + b) is exact when b ≈ -1, so
        # D keeps full float precision near its zeros instead of the ~6e-8 grid of ``1.0 + (≈ -1)``.
        D = F.linear(psi, self.denominator.weight, self.denominator.bias + 1.0)
        if self.shared_denominator:
            D = D.expand_as(N)
        return N, D


class ArmIKMLP(nn.Module):
    """Baseline: plain MLP on the same features (angle features, ``(dx, dy)`` and their products) → ``(dθ1, dθ2)``."""

    def __init__(self, hidden: int = 16, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 6 + 2 + 12
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.Tanh()]
            width = hidden
        layers.append(nn.Linear(width, 2))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        phi = angle_features(x[:, 0], x[:, 1])
        d = x[:, 2:4]
        products = (phi.unsqueeze(-1) * d.unsqueeze(1)).flatten(1)
        return self.net(torch.cat([phi, d, products], dim=-1))  # type: ignore[no-any-return]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def arm_ik_truth(x: Tensor, l1: float = DEFAULT_L1, l2: float = DEFAULT_L2) -> tuple[Tensor, Tensor, Tensor]:
    """Exact ``(adj(J)·d, det J, y)`` in float64 for the inputs *as given* (e.g. float32-rounded angles).

    ``y = adj(J)·d / det J``; where ``det J == 0`` exactly, ``y = sign(adj(J)·d)·∞`` by the lifting convention
    (the limit from the side where ``det J > 0``, i.e. θ2 → 0⁺), and NaN where ``adj(J)·d == 0`` as well (0/0).
    """
    x64 = x.to(torch.float64)
    t1, t2, dx, dy = x64[:, 0], x64[:, 1], x64[:, 2], x64[:, 3]
    s1, c1 = torch.sin(t1), torch.cos(t1)
    s12, c12 = torch.sin(t1 + t2), torch.cos(t1 + t2)
    det = l1 * l2 * torch.sin(t2)
    # J = [[-l1 s1 - l2 s12, -l2 s12], [l1 c1 + l2 c12, l2 c12]]; adj(J) = [[J22, -J12], [-J21, J11]].
    num1 = l2 * c12 * dx + l2 * s12 * dy
    num2 = -(l1 * c1 + l2 * c12) * dx - (l1 * s1 + l2 * s12) * dy
    num = torch.stack([num1, num2], dim=-1)
    det2 = det.unsqueeze(-1).expand_as(num)
    y = num / det2
    singular = det2 == 0
    y = torch.where(singular & (num > 0), torch.full_like(y, math.inf), y)
    y = torch.where(singular & (num < 0), torch.full_like(y, -math.inf), y)
    y = torch.where(singular & (num == 0), torch.full_like(y, math.nan), y)
    return num, det, y


def arm_singular_poses(theta2: float, n: int = 2000, *, seed: int = 0) -> Tensor:
    """``n`` float32 inputs ``(θ1, θ2, dx, dy)`` with θ2 fixed (a singular pose) and θ1, dx, dy uniform."""
    if n < 1:
        raise ValueError("n must be >= 1")
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 3, generator=g, dtype=torch.float64)
    theta1 = (2 * u[:, 0] - 1) * math.pi
    d = 2 * u[:, 1:3] - 1
    return torch.stack([theta1, torch.full_like(theta1, theta2), d[:, 0], d[:, 1]], dim=-1).to(torch.float32)


def generate_arm_data(
    n: int,
    *,
    seed: int = 0,
    near_fraction: float = 0.2,
    singular_fraction: float = 0.05,
    near_range: tuple[float, float] = (1e-7, 1e-1),
    l1: float = DEFAULT_L1,
    l2: float = DEFAULT_L2,
) -> tuple[Tensor, Tensor]:
    """``(x float32 (n, 4), y float64 (n, 2))``: uniform poses, poses near θ2 ∈ {0, π} and exactly at θ2 = 0.

    Near poses are ``θ2 = p ± 10^u`` with ``u`` uniform in ``log10(near_range)``. Targets come from the float32
    inputs, so θ2 = float32(π) (not exactly π) has a huge finite target; θ2 = 0 is the exactly singular pose.
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if near_fraction < 0 or singular_fraction < 0 or near_fraction + singular_fraction > 1:
        raise ValueError("fractions must be >= 0 and sum to <= 1")
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 4, generator=g, dtype=torch.float64)
    theta1 = (2 * u[:, 0] - 1) * math.pi
    theta2 = (2 * u[:, 1] - 1) * math.pi
    d = 2 * u[:, 2:4] - 1
    kind = torch.rand(n, generator=g, dtype=torch.float64)
    n_sing = kind < singular_fraction
    n_near = (kind >= singular_fraction) & (kind < singular_fraction + near_fraction)
    lo, hi = math.log10(near_range[0]), math.log10(near_range[1])
    dist = 10 ** (lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64))
    side = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0).to(torch.float64)
    pole = torch.where(torch.rand(n, generator=g) < 0.5, 0.0, math.pi).to(torch.float64)
    near = pole + side * dist
    near = torch.where(near > math.pi, near - 2 * math.pi, near)
    theta2 = torch.where(n_near, near, theta2)
    theta2 = torch.where(n_sing, torch.zeros_like(theta2), theta2)
    x = torch.stack([theta1, theta2, d[:, 0], d[:, 1]], dim=-1).to(torch.float32)
    _, _, y = arm_ik_truth(x, l1, l2)
    return x, y


def arm_bucket_data(
    per_bucket: int,
    *,
    seed: int = 1,
    l1: float = DEFAULT_L1,
    l2: float = DEFAULT_L2,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Held-out inputs stratified by ``|det J|``: ``≤1e-5``, ``1e-5..1e-4``, ``1e-4..1e-3``, ``>1e-3``, and
    ``exact`` (θ2 = 0, det J = 0). Each entry is ``(x float32, y float64)``."""
    g = torch.Generator().manual_seed(seed)
    scale = l1 * l2
    ranges = {"le_1e-5": (1e-9, 1e-5), "1e-5_1e-4": (1e-5, 1e-4), "1e-4_1e-3": (1e-4, 1e-3)}
    out: dict[str, tuple[Tensor, Tensor]] = {}
    for name, (lo, hi) in ranges.items():
        xs: list[Tensor] = []
        while sum(t.shape[0] for t in xs) < per_bucket:
            u = torch.rand(per_bucket, 4, generator=g, dtype=torch.float64)
            target_det = 10 ** (math.log10(lo) + (math.log10(hi) - math.log10(lo)) * u[:, 0])
            s = torch.asin((target_det / scale).clamp(max=1.0))
            side = torch.where(u[:, 1] < 0.5, -1.0, 1.0).to(torch.float64)
            use_pi = torch.rand(per_bucket, generator=g) < 0.5
            theta2 = torch.where(use_pi, side * (math.pi - s), side * s)
            theta1 = (2 * u[:, 2] - 1) * math.pi
            d = 2 * torch.rand(per_bucket, 2, generator=g, dtype=torch.float64) - 1
            x = torch.stack([theta1, theta2, d[:, 0], d[:, 1]], dim=-1).to(torch.float32)
            _, det, _ = arm_ik_truth(x, l1, l2)
            keep = (det.abs() > lo) & (det.abs() <= hi)  # float32 rounding of θ2 can move a pose across a bucket edge
            xs.append(x[keep])
        x = torch.cat(xs)[:per_bucket]
        out[name] = (x, arm_ik_truth(x, l1, l2)[2])
    xs = []
    while sum(t.shape[0] for t in xs) < per_bucket:
        x, _ = generate_arm_data(per_bucket, seed=int(torch.randint(1 << 30, (1,), generator=g)), near_fraction=0.0)
        _, det, _ = arm_ik_truth(x, l1, l2)
        xs.append(x[det.abs() > 1e-3])
    x = torch.cat(xs)[:per_bucket]
    out["gt_1e-3"] = (x, arm_ik_truth(x, l1, l2)[2])
    x, _ = generate_arm_data(per_bucket, seed=seed + 7, near_fraction=0.0, singular_fraction=1.0)
    out["exact"] = (x, arm_ik_truth(x, l1, l2)[2])
    return out
