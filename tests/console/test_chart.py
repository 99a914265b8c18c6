"""The overview chart (server-side SVG): three series on a 0-1 axis, holes where a window had no predictions."""

from __future__ import annotations

import re

import pytest

from console.chart import render
from console.feeds import ChartPoint

pytestmark = pytest.mark.unit


def test_three_series_and_a_hole_where_no_prediction_was_made() -> None:
    pts = [ChartPoint(100.0 + i, 0.9, 0.05, 0.05, 10) for i in range(5)]
    pts[2] = ChartPoint(102.0, None, None, None, 0)
    svg = str(render(pts, "v1"))
    lines = re.findall(r'<polyline class="(s-[a-z]+)" points="([^"]*)"', svg)
    assert sorted({c for c, _ in lines}) == ["s-bottom", "s-coverage", "s-gap"]
    assert len(lines) == 6  # each series in two runs around the hole
    assert all(len(p.split()) == 2 for _, p in lines)
    ys = {c: float(p.split()[0].split(",")[1]) for c, p in lines}
    assert ys["s-coverage"] < ys["s-gap"]  # 0.9 is drawn higher (smaller y) than 0.05


def test_no_data_and_an_escaped_title() -> None:
    svg = str(render([], "<script>alert(1)</script>"))
    assert "no data" in svg and "<polyline" not in svg
    assert "<script>" not in svg and "&lt;script&gt;" in svg
