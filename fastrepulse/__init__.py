"""fastrepulse: contextual repulsion for diffusion transformers, in fused Triton kernels."""

from fastrepulse.forces import EIGENVALUE_FLOOR, rbf_bandwidth, vendi_score
from fastrepulse.repulsion import repel
from fastrepulse.solver import solve

__all__ = ["EIGENVALUE_FLOOR", "rbf_bandwidth", "repel", "solve", "vendi_score"]
