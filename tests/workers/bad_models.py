"""TorchScript models that break the serving contract (and a good one of each width), for the bad-model tests."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


class Rank3(nn.Module):
    """The issue's model: ⟨N, D⟩ of shape (B, 1, 1), on 3 features."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.lin(x)
        return y.unsqueeze(-1), (x[:, :1] - 0.5).unsqueeze(-1)


class Mismatch(nn.Module):
    """N (B, 2) and D (B, 1) on 3 features: a model error, never the input's feature count."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.lin(x), x[:, :1] - 0.5


class Squeezed(nn.Module):
    """``.squeeze()``: (B,) for B > 1 but a 0-d tensor for one row."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.lin(x).squeeze(), (x[:, 0] - 0.5).squeeze()


class Good(nn.Module):
    """A valid model on 3 features: N = x[:, :2], D = x[:, 2:3] - 0.5 (shared)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        d = x[:, 2:3] - 0.5
        return x[:, :2], d.expand(x.shape[0], 2)


class Wide40Mismatch(nn.Module):
    """No parameters and 40 features only, a width the load-time probe does not guess: N (B, 2), D (B, 1)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = x.view(-1, 40)
        return y[:, :2], y[:, 2:3] - 0.5


class Wide40Good(nn.Module):
    """The fixed version of :class:`Wide40Mismatch`."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = x.view(-1, 40)
        return y[:, :2], (y[:, 2:3] - 0.5).expand(y.shape[0], 2)


class Wide40Rank3(nn.Module):
    """40 features only, output of rank 3."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = x.view(-1, 40)
        return y[:, :1].unsqueeze(-1), y[:, :1].unsqueeze(-1)


def script(module: nn.Module, path: Path) -> Path:
    """``torch.jit.save`` of the scripted module, written atomically (a running worker may be watching it)."""
    tmp = path.with_name(path.name + ".tmp")
    torch.jit.save(torch.jit.script(module), str(tmp))
    tmp.replace(path)
    return path
