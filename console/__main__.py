"""``python -m console`` / ``zeroproof-console``: the review console's web server."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from console.server import main as serve

    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
