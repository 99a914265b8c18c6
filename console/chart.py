"""The overview's chart as inline SVG, rendered on the server: no JavaScript library, nothing fetched.

Only numbers and fixed words go into the markup; the one input-derived string (the model version, in the
accessible title) is escaped.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from markupsafe import Markup, escape

from console.feeds import ChartPoint

WIDTH, HEIGHT = 640, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 10, 26
#: (attribute of ChartPoint, legend, CSS class)
SERIES = (
    ("coverage", "coverage", "s-coverage"),
    ("gap_rate", "gap rate", "s-gap"),
    ("bottom_rate", "⊥ rate", "s-bottom"),
)


def _polylines(points: Sequence[ChartPoint], attr: str, x0: float, x1: float) -> list[str]:
    """One polyline per run of points that have a value (a window without predictions is a hole, not a 0)."""
    span = max(x1 - x0, 1e-9)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    runs: list[list[str]] = [[]]
    for p in points:
        v = getattr(p, attr)
        if v is None:
            if runs[-1]:
                runs.append([])
            continue
        x = LEFT + (p.end - x0) / span * plot_w
        y = TOP + (1.0 - min(1.0, max(0.0, float(v)))) * plot_h
        runs[-1].append(f"{x:.1f},{y:.1f}")
    return [" ".join(r) for r in runs if r]


def render(points: Sequence[ChartPoint], model_version: str, now: float | None = None) -> Markup:
    """SVG of coverage, gap rate and ⊥ rate (0 to 1) over the chart window ending at the last point."""
    title = escape(f"coverage, gap rate and ⊥ rate of {model_version}")
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{title}</title>",
    ]
    plot_h = HEIGHT - TOP - BOTTOM
    for frac in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = TOP + (1 - frac) * plot_h
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{frac:g}</text>')
    if not points:
        parts.append(f'<text class="axis" x="{WIDTH / 2:.0f}" y="{HEIGHT / 2:.0f}" text-anchor="middle">no data</text>')
    else:
        x0, x1 = points[0].end, points[-1].end
        if x1 - x0 < 1e-9:
            x0 = x1 - 1.0
        for attr, _, css in SERIES:
            for line in _polylines(points, attr, x0, x1):
                parts.append(f'<polyline class="{css}" points="{line}"/>')
        minutes = (x1 - x0) / 60.0
        left_label = f"−{minutes:.0f} min" if minutes >= 2 else f"−{x1 - x0:.0f} s"
        end_label = time.strftime("%H:%M:%S", time.localtime(x1 if now is None else now))
        parts.append(f'<text class="axis" x="{LEFT}" y="{HEIGHT - 8}" text-anchor="start">{left_label}</text>')
        parts.append(f'<text class="axis" x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end">{end_label}</text>')
    legend_x = LEFT + 80
    for i, (_, legend, css) in enumerate(SERIES):
        x = legend_x + i * 110
        parts.append(f'<line class="{css}" x1="{x}" y1="{HEIGHT - 12}" x2="{x + 18}" y2="{HEIGHT - 12}"/>')
        parts.append(f'<text class="axis" x="{x + 22}" y="{HEIGHT - 8}">{legend}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
