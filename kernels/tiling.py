"""Block sizes and grid splits for the Gram and apply kernels, picked from the shape.

Picked, not autotuned: the split of L fixes the order of the float sums, so a shape must always get
the same split for the same bits; and repel runs inside pipeline hooks where a first-call tuning
sweep would stall generation. The split depends on the group's shape only, never on the number of
groups, so a group's result is the same bits whatever other groups share the call.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import torch
import triton

TILE_BYTES = 8192
"""Bytes of one [BLOCK_B, BLOCK_L] tile: enough loads in flight per program, and no register spills
(bench/compile_check.py) even for fp32, whose tf32x3 products hold three copies of each operand."""
PROGRAMS_PER_SM = 4
"""Gram programs per multiprocessor for one group: enough to hide memory latency, few partials to sum."""
MMA_DEPTH = 16
"""Columns of one tensor-core MMA step: the Gram kernel's slices of 16-row tiles are this wide."""
MAX_CHAIN = 64
"""Most MMA steps chained into one Gram accumulator. Tensor cores accumulate with truncation, so the
error grows with the chain: on an H100 a 1024-step chain gave 3.4e-5 relative error, a 64-step one
1e-6, below cuBLAS float32 (bench/gram_accuracy.py). Longer rows get more splits instead."""
INTERPRETER_PROGRAMS = 8


@dataclass(frozen=True)
class Tiling:
    """How a [groups * B, L] matrix is cut: tiles of [block_b, block_l], and L in `splits` shares.

    `sliced`: the Gram kernel cuts 16-row tiles into slices of block_k columns with an accumulator
    each, so that they spread over the warps; wider tiles spread by themselves.
    """

    block_b: int
    block_l: int
    block_k: int
    sliced: bool
    splits: int
    chunks_per_split: int
    num_warps: int
    num_stages: int


def pick_tiling(group_size: int, length: int, dtype: torch.dtype, device: torch.device) -> Tiling:
    """The tiling of both kernels for groups of `group_size` rows of `length` elements.

    tl.dot needs every dim >= 16, so groups are padded to block_b = max(16, next power of 2) rows
    (masked: padding rows are never read from memory).
    """
    block_b = max(16, triton.next_power_of_2(group_size))
    tile_bytes = TILE_BYTES // 2 if dtype == torch.float64 else TILE_BYTES  # fp64 operands: twice the registers
    block_l = max(MMA_DEPTH, tile_bytes // (block_b * dtype.itemsize))
    sliced = block_b == 16
    chain_per_chunk = 1 if sliced else block_l // MMA_DEPTH
    chunks = triton.cdiv(length, block_l)
    splits = min(chunks, max(_program_budget(device), triton.cdiv(chunks * chain_per_chunk, MAX_CHAIN)))
    chunks_per_split = triton.cdiv(chunks, splits)
    splits = triton.cdiv(chunks, chunks_per_split)
    num_warps = 4 if block_b == 16 else 8
    return Tiling(block_b, block_l, MMA_DEPTH, sliced, splits, chunks_per_split, num_warps=num_warps, num_stages=3)


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: fp32 operands in three tf32 products (about fp32-exact), others exact."""
    return "tf32x3" if dtype == torch.float32 else "ieee"


def _program_budget(device: torch.device) -> int:
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    return PROGRAMS_PER_SM * _multiprocessors(device.index if device.index is not None else torch.cuda.current_device())


@cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
