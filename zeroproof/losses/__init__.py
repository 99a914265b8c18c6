"""Losses and metrics for projective models."""

from zeroproof.losses.coverage import coverage_metric

__all__ = ["coverage_metric"]
