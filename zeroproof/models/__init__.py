"""Model architectures that model bundles can rebuild without unpickling code."""

from zeroproof.models.registry import architecture_of, build_architecture, register_architecture, registered

__all__ = ["architecture_of", "build_architecture", "register_architecture", "registered"]
