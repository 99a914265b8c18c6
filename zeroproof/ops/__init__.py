"""Tensor operators for projective outputs: weak sign with hysteresis and the orientation of ∞."""

from zeroproof.ops.weak_sign import HysteresisSign, WeakSignTracker, infinity_sign, weak_sign

__all__ = ["HysteresisSign", "WeakSignTracker", "infinity_sign", "weak_sign"]
