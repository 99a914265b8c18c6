"""Projective layers: modules whose forward returns the pair ⟨N, D⟩."""

from zeroproof.layers.projective import ProjectiveMLP, ProjectiveRationalLayer, known_pole_model

__all__ = ["ProjectiveMLP", "ProjectiveRationalLayer", "known_pole_model"]
