"""fastrepulse: contextual repulsion for diffusion transformers, in fused Triton kernels."""

from fastrepulse.forces import EIGENVALUE_FLOOR
from fastrepulse.repulsion import repel
from fastrepulse.solver import solve

__all__ = ["EIGENVALUE_FLOOR", "repel", "solve"]
