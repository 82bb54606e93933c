"""Triton kernels of fastrepulse, installed as `fastrepulse.kernels`: the two passes over the big tensor."""

from fastrepulse.kernels.apply import apply_update
from fastrepulse.kernels.gram import gram, gram_partials
from fastrepulse.kernels.tiling import ApplyTiling, Tiling, pick_apply_tiling, pick_tiling

__all__ = ["ApplyTiling", "Tiling", "apply_update", "gram", "gram_partials", "pick_apply_tiling", "pick_tiling"]
