"""What every peer app shares: its command line and the job itself (the ProjectiveMLP bundle with the strict
decode), written once so that the peers differ only in how they use their Kafka framework.

Input ``{"id", "features": [16 floats]}``; output ``{"id", "value", "bottom", "gap", "status"}`` (``value`` is
``null`` where the decode is ⊥).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import torch

from zeroproof.export import load_servable
from zeroproof.inference import InferenceConfig, strict_inference

#: tansu holds a JoinGroup for session_timeout/2 and answers an empty fetch only after the fetch wait: every app
#: gets the same consumer settings the worker's defaults and its tests use (docs/benchmarks.md)
SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 1000
FETCH_MAX_WAIT_MS = 5


def arguments(description: str) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--model", type=Path, help="model bundle (not for the pass-through)")
    return ap.parse_args()


class Model:
    """The bundle, served with the strict decode, one batch at a time (``torch`` on one thread, as the worker)."""

    def __init__(self, path: Path) -> None:
        torch.set_num_threads(1)
        servable = load_servable(path)
        self.model = servable.model
        self.config = servable.config or InferenceConfig()

    def batch(self, messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        x = torch.tensor([m["features"] for m in messages], dtype=torch.float32)
        with torch.inference_mode():
            N, D = self.model(x)
        dec, bot, gap = strict_inference(N, D, self.config)
        out = []
        for m, v, b, g in zip(messages, dec.tolist(), bot.tolist(), gap.tolist(), strict=True):
            out.append(
                {
                    "id": m["id"],
                    "value": [None if bi else vi for vi, bi in zip(v, b, strict=True)],
                    "bottom": b,
                    "gap": g,
                    "status": "bottom" if any(b) else "gap" if any(g) else "ok",
                }
            )
        return out

    def one(self, message: dict[str, Any]) -> dict[str, Any]:
        return self.batch([message])[0]

    def encoded(self, values: Sequence[bytes]) -> list[bytes]:
        return [orjson.dumps(o) for o in self.batch([orjson.loads(v) for v in values])]
