"""Batch inference over a data loader with coverage tracking (the seed page's ``batch_inference``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from zeroproof.inference.config import InferenceConfig
from zeroproof.inference.decode import strict_inference
from zeroproof.inference.wrapper import SCMInferenceWrapper


class BatchInferenceResult(NamedTuple):
    """Unpacks as ``outputs, bottom_masks, gap_masks, coverage, gap_rate`` like the seed page.

    ``coverage`` here is the training notion ``1 - bottom_rate`` (as on the seed page); the share accepted
    as-is (``1 - bottom_rate - gap_rate``) is :attr:`accepted_rate`.
    """

    outputs: Tensor
    bottom_masks: Tensor
    gap_masks: Tensor
    coverage: Tensor
    gap_rate: Tensor

    @property
    def accepted_rate(self) -> Tensor:
        return 1.0 - self.bottom_masks.float().mean() - self.gap_rate


def _inputs_of(batch: Any) -> Tensor:
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], Tensor):
        return batch[0]  # (x, y) pairs from a TensorDataset
    raise TypeError(f"data loader must yield tensors or (x, ...) tuples, got {type(batch).__name__}")


def batch_inference(
    model: nn.Module, data_loader: Iterable[Any], config: InferenceConfig | None = None
) -> BatchInferenceResult:
    """Run ``model`` over ``data_loader`` under strict decode.

    ``model`` is either an :class:`SCMInferenceWrapper` (its own config applies unless ``config`` is given)
    or a raw projective model returning ``(N, D)``.
    """
    if isinstance(model, SCMInferenceWrapper):
        inner, cfg = model.model, config if config is not None else model.config
    else:
        inner, cfg = model, config if config is not None else InferenceConfig()
    was_training = model.training
    model.eval()
    outputs: list[Tensor] = []
    bottoms: list[Tensor] = []
    gaps: list[Tensor] = []
    try:
        with torch.no_grad():
            for batch in data_loader:
                N, D = inner(_inputs_of(batch))
                decoded, bottom, gap = strict_inference(N, D, cfg)
                outputs.append(decoded)
                bottoms.append(bottom)
                gaps.append(gap)
    finally:
        model.train(was_training)
    if not outputs:
        raise ValueError("batch_inference: the data loader yielded no batches")
    bottom_masks = torch.cat(bottoms)
    gap_masks = torch.cat(gaps)
    coverage = (~bottom_masks).float().mean()
    gap_rate = gap_masks.float().mean()
    return BatchInferenceResult(torch.cat(outputs), bottom_masks, gap_masks, coverage, gap_rate)
