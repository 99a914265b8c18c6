"""An independent, element-by-element statement of contract §1, used as the test oracle.

It shares no code with the library: comparisons are done on exact values (Python floats hold every
float16/bfloat16/float32 value exactly) and the quotient is rounded in the inputs' dtype by numpy/torch scalar
division, as IEEE specifies.
"""

from __future__ import annotations

import math

import torch


def decode_element(
    n: float, d: float, dtype: torch.dtype, tau_infer: float, tau_train: float | None
) -> tuple[float, bool, bool]:
    if not (math.isfinite(n) and math.isfinite(d)) or abs(d) < tau_infer:
        return math.nan, True, False
    q = float(torch.tensor(n, dtype=dtype) / torch.tensor(d, dtype=dtype))
    if not math.isfinite(q):
        return math.nan, True, False
    gap = tau_train is not None and abs(d) < tau_train
    return q, False, gap


def decode_reference(
    N: torch.Tensor, D: torch.Tensor, tau_infer: float, tau_train: float | None
) -> tuple[list[float], list[bool], list[bool]]:
    values, bottoms, gaps = [], [], []
    for n, d in zip(N.reshape(-1).tolist(), D.reshape(-1).tolist(), strict=True):
        v, b, g = decode_element(n, d, N.dtype, tau_infer, tau_train)
        values.append(v)
        bottoms.append(b)
        gaps.append(g)
    return values, bottoms, gaps
