"""zeroproof: strict projective (SCM) inference. Models emit ⟨N, D⟩; the decode says value, gap or ⊥."""

from zeroproof.inference import (
    InferenceConfig,
    SCMInferenceWrapper,
    SCMMonitor,
    StrictResult,
    WindowedSCMMonitor,
    batch_inference,
    strict_inference,
)

__version__ = "0.1.0"

__all__ = [
    "InferenceConfig",
    "SCMInferenceWrapper",
    "SCMMonitor",
    "StrictResult",
    "WindowedSCMMonitor",
    "__version__",
    "batch_inference",
    "strict_inference",
]
