"""Reference model benchmark: 2-link arm differential IK, projective model vs a same-size MLP.

Trains the projective model (≤ 90 s on one CPU thread by default), trains the MLP with the same step budget,
evaluates both on held-out data bucketed by |det J|, and writes the raw numbers to bench/arm_ik.json (plus the
bundle, checkpoint and held-out data under runs/). Usage::

    .venv/bin/python -m bench.arm_ik [--seconds 90] [--max-steps 20000] [--seed 0]

Extra arguments are passed to ``zeroproof train-arm``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from zeroproof.cli import main

ROOT = Path(__file__).resolve().parent.parent

if __name__ == "__main__":
    sys.exit(
        main(
            [
                "train-arm",
                "--out",
                str(ROOT / "runs" / "arm.zpb"),
                "--checkpoint",
                str(ROOT / "runs" / "arm.ckpt.pt"),
                "--heldout",
                str(ROOT / "runs" / "arm_heldout.npz"),
                "--report",
                str(ROOT / "bench" / "arm_ik.json"),
                *sys.argv[1:],
            ]
        )
    )
