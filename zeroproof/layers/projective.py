"""Projective rational layers: features in, ⟨N, D⟩ out, never dividing.

The denominator is anchored at 1 (``D = 1 + δQ(h)`` with ``δQ`` starting at zero), so a fresh layer is far
from any pole; poles appear only where the learned ``δQ`` reaches -1. Division happens in the strict decode.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from zeroproof.models.registry import register_architecture


def _power_basis(h: Tensor, degree: int) -> Tensor:
    """``[h, h**2, ..., h**degree]`` along the last axis: a separable polynomial basis."""
    if degree == 1:
        return h
    powers = [h]
    current = h
    for _ in range(degree - 1):
        current = current * h
        powers.append(current)
    return torch.cat(powers, dim=-1)


@register_architecture("projective_rational")
class ProjectiveRationalLayer(nn.Module):
    """``N = A·φ_p(h) + a``, ``D = 1 + B·φ_q(h) + b`` with φ_k the power basis up to degree k.

    ``shared_denominator=False`` (default) gives each output its own denominator, so one output's pole does not
    make every output ⊥; ``True`` shares one denominator across outputs (a common pole, e.g. det J).
    """

    # Constructor arguments for bundles: plain Python data that TorchScript need not see.
    __jit_ignored_attributes__ = ["init_kwargs"]  # noqa: RUF012
    init_kwargs: dict[str, Any]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        numerator_degree: int = 1,
        denominator_degree: int = 1,
        shared_denominator: bool = False,
    ) -> None:
        super().__init__()
        if in_features < 1 or out_features < 1 or numerator_degree < 1 or denominator_degree < 1:
            raise ValueError("features and degrees must be >= 1")
        self.init_kwargs = {
            "in_features": in_features,
            "out_features": out_features,
            "numerator_degree": numerator_degree,
            "denominator_degree": denominator_degree,
            "shared_denominator": shared_denominator,
        }
        self.in_features = in_features
        self.out_features = out_features
        self.numerator_degree = numerator_degree
        self.denominator_degree = denominator_degree
        self.shared_denominator = shared_denominator
        self.numerator = nn.Linear(in_features * numerator_degree, out_features)
        self.denominator = nn.Linear(in_features * denominator_degree, 1 if shared_denominator else out_features)
        nn.init.zeros_(self.denominator.weight)
        nn.init.zeros_(self.denominator.bias)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        N = self.numerator(_power_basis(h, self.numerator_degree))
        D = 1.0 + self.denominator(_power_basis(h, self.denominator_degree))
        if self.shared_denominator:
            D = D.expand_as(N)
        return N, D


@register_architecture("projective_mlp")
class ProjectiveMLP(nn.Module):
    """MLP feature backbone followed by a :class:`ProjectiveRationalLayer` head."""

    # Constructor arguments for bundles: plain Python data that TorchScript need not see.
    __jit_ignored_attributes__ = ["init_kwargs"]  # noqa: RUF012
    init_kwargs: dict[str, Any]

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden: int = 64,
        depth: int = 2,
        numerator_degree: int = 1,
        denominator_degree: int = 2,
        shared_denominator: bool = False,
        activation: str = "tanh",
    ) -> None:
        super().__init__()
        acts: dict[str, type[nn.Module]] = {
            "tanh": nn.Tanh,
            "relu": nn.ReLU,
            "gelu": nn.GELU,
            "silu": nn.SiLU,
        }
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        self.init_kwargs = {
            "in_features": in_features,
            "out_features": out_features,
            "hidden": hidden,
            "depth": depth,
            "numerator_degree": numerator_degree,
            "denominator_degree": denominator_degree,
            "shared_denominator": shared_denominator,
            "activation": activation,
        }
        self.in_features = in_features
        self.out_features = out_features
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), acts[activation]()]
            width = hidden
        self.backbone = nn.Sequential(*layers)
        self.head = ProjectiveRationalLayer(
            width, out_features, numerator_degree, denominator_degree, shared_denominator
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        N, D = self.head(self.backbone(x))
        return N, D


def known_pole_model(pole: float = 0.5) -> ProjectiveRationalLayer:
    """A 1-D model computing exactly ``y = 1 / (x - pole)`` as ``N = -1/pole``, ``D = 1 - x/pole``."""
    if pole == 0:
        raise ValueError("pole must be non-zero (the denominator is anchored at D(0) = 1)")
    layer = ProjectiveRationalLayer(1, 1)
    with torch.no_grad():
        layer.numerator.weight.zero_()
        layer.numerator.bias.fill_(-1.0 / pole)
        layer.denominator.weight.fill_(-1.0 / pole)
        layer.denominator.bias.zero_()
    return layer
