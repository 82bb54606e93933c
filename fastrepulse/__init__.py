"""fastrepulse: contextual repulsion for diffusion transformers, in fused Triton kernels."""

from fastrepulse.config import PRESETS, RepulsionConfig
from fastrepulse.forces import EIGENVALUE_FLOOR
from fastrepulse.patching import RepulsionHandle, patch, patched, unpatch
from fastrepulse.repulsion import repel
from fastrepulse.solver import solve

__all__ = [
    "EIGENVALUE_FLOOR",
    "PRESETS",
    "RepulsionConfig",
    "RepulsionHandle",
    "patch",
    "patched",
    "repel",
    "solve",
    "unpatch",
]
