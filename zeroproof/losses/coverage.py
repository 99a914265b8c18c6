"""Coverage in the training sense: the share of predictions that are not ⊥."""

from __future__ import annotations

from typing import Any

import torch


def coverage_metric(bottom_mask: Any) -> float:
    """``1 - mean(bottom_mask)``. (The monitor's ``coverage`` also subtracts the gap rate; see SCMMonitor.)"""
    mask = bottom_mask if isinstance(bottom_mask, torch.Tensor) else torch.as_tensor(bottom_mask)
    if mask.numel() == 0:
        raise ValueError("coverage_metric: empty mask, coverage is undefined")
    return 1.0 - float(mask.to(torch.float64).mean().item())
