"""Strict inference: one decode semantics for ⟨N, D⟩ (contract §1) and the tools built on it."""

from zeroproof.inference.batch import BatchInferenceResult, batch_inference
from zeroproof.inference.config import DEFAULT_TAU_INFER, DEFAULT_TAU_TRAIN, InferenceConfig, dtype_threshold
from zeroproof.inference.decode import StrictDecoder, StrictResult, decode_eager, decode_eager_into, strict_inference
from zeroproof.inference.monitor import SCMMonitor, WindowedSCMMonitor
from zeroproof.inference.wrapper import DecodeOnly, SCMInferenceWrapper, StrictDecodeModule

__all__ = [
    "DEFAULT_TAU_INFER",
    "DEFAULT_TAU_TRAIN",
    "BatchInferenceResult",
    "DecodeOnly",
    "InferenceConfig",
    "SCMInferenceWrapper",
    "SCMMonitor",
    "StrictDecodeModule",
    "StrictDecoder",
    "StrictResult",
    "WindowedSCMMonitor",
    "batch_inference",
    "decode_eager",
    "decode_eager_into",
    "dtype_threshold",
    "strict_inference",
]
