"""Triton kernels of fastrepulse, installed as `fastrepulse.kernels`: the two passes over the big tensor."""

from fastrepulse.kernels.apply import apply_update
from fastrepulse.kernels.gram import gram
from fastrepulse.kernels.tiling import Tiling, pick_tiling

__all__ = ["Tiling", "apply_update", "gram", "pick_tiling"]
