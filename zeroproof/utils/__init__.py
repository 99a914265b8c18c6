"""Interop helpers."""
