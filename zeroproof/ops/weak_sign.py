"""Weak sign and the orientation of ∞.

Near a pole ``D`` is tiny and its sign is noise, so ``sign(N/D)`` flickers exactly where a controller needs
it to be steady. The *weak* sign is 0 inside a dead band ``|x| < band``; :class:`HysteresisSign` holds the last
confident sign through the band (a Schmitt trigger with thresholds ``±band``): the sign flips only when ``x``
crosses the whole band. :class:`WeakSignTracker` keeps one such state per entity (one per robot id in the
streaming worker), bounded in memory.

:func:`infinity_sign` is the sign of ∞ the decode can report for a ⊥ that is a pole (``N ≠ 0``):
``sign(N) · held_sign(D)``, where an unknown held sign means the lifting convention's ``D → +0`` side
(see :mod:`zeroproof.losses.targets`). ``⟨0, 0⟩`` and non-finite pairs have no orientation: 0.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from zeroproof.inference.config import InferenceConfig


def weak_sign(x: Tensor, band: float) -> Tensor:
    """``sign(x)`` where ``|x| >= band``, 0 inside the band (and for NaN); same dtype as ``x``."""
    if band < 0:
        raise ValueError("band must be >= 0")
    confident = x.abs() >= band
    return torch.where(confident, torch.sign(x), torch.zeros_like(x))


class HysteresisSign:
    """Held sign of a tensor stream: updates where ``|x| >= band``, keeps the previous sign elsewhere.

    ``state`` is int8 in {-1, 0, +1}; 0 means no confident observation yet.
    """

    def __init__(self, band: float, shape: torch.Size | tuple[int, ...] | None = None) -> None:
        if band < 0:
            raise ValueError("band must be >= 0")
        self.band = float(band)
        self.state: Tensor | None = None if shape is None else torch.zeros(shape, dtype=torch.int8)

    def update(self, x: Tensor) -> Tensor:
        """Feed one observation (same shape each time); returns the held sign after it (a copy)."""
        current = weak_sign(x.detach(), self.band).to(torch.int8).cpu()
        if self.state is None or self.state.shape != current.shape:
            if self.state is not None:
                raise ValueError(f"shape changed from {tuple(self.state.shape)} to {tuple(current.shape)}")
            self.state = torch.zeros_like(current)
        self.state = torch.where(current != 0, current, self.state)
        return self.state.clone()

    def reset(self) -> None:
        if self.state is not None:
            self.state.zero_()


def infinity_sign(N: Tensor, bottom_mask: Tensor, held_d_sign: Tensor | None = None) -> Tensor:
    """int8 sign of ∞ at ⊥ elements that are poles; 0 elsewhere (not ⊥, ``N == 0``, or non-finite N).

    ``held_d_sign``: the hysteresis sign of ``D`` (e.g. from :class:`WeakSignTracker`); 0/None means the
    canonical ``D → +0`` side, so the answer is ``sign(N)``, the same convention as the lifted targets.
    """
    pole = bottom_mask.to(torch.bool) & torch.isfinite(N) & (N != 0)
    sign_n = torch.sign(N).to(torch.int8)
    if held_d_sign is None:
        orient = torch.ones_like(sign_n)
    else:
        held = held_d_sign.to(device=N.device, dtype=torch.int8)
        orient = torch.where(held != 0, held, torch.ones_like(held))
    return torch.where(pole, sign_n * orient, torch.zeros_like(sign_n))


class WeakSignTracker:
    """Per-entity :class:`HysteresisSign` of ``D``, least-recently-used entities evicted past ``max_entities``.

    The worker calls :meth:`observe` with one message's ``N``/``D``/``bottom_mask`` per entity, in arrival order,
    and gets back the sign of ∞ to report; an entity approaching a pole from the ``D < 0`` side then reports
    ``-sign(N)·∞`` even when ``D`` has shrunk to noise at the pole itself.
    """

    def __init__(
        self, band: float | None = None, *, config: InferenceConfig | None = None, max_entities: int = 100_000
    ):
        if max_entities < 1:
            raise ValueError("max_entities must be >= 1")
        if band is None:
            band = (config if config is not None else InferenceConfig()).effective_tau_train
        self.band = float(band)
        self.max_entities = max_entities
        self._states: OrderedDict[str, HysteresisSign] = OrderedDict()

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, entity: object) -> bool:
        return entity in self._states

    def held_sign(self, entity: str, D: Tensor) -> Tensor:
        """Update ``entity``'s state with ``D`` and return its held sign (int8, shape of ``D``)."""
        state = self._states.get(entity)
        if state is None:
            state = HysteresisSign(self.band)
            self._states[entity] = state
            while len(self._states) > self.max_entities:
                self._states.popitem(last=False)
        else:
            self._states.move_to_end(entity)
        try:
            return state.update(D)
        except ValueError:  # the entity's output shape changed (new model): start over
            state.state = None
            return state.update(D)

    def observe(self, entity: str, N: Tensor, D: Tensor, bottom_mask: Tensor) -> Tensor:
        """Update the entity's state and return the int8 sign of ∞ for this observation (0 where not a pole)."""
        held = self.held_sign(entity, D)
        return infinity_sign(N.detach().cpu(), bottom_mask.detach().cpu(), held)

    def reset(self, entity: str | None = None) -> None:
        if entity is None:
            self._states.clear()
        else:
            self._states.pop(entity, None)
