"""Block sizes and grid splits for the Gram and apply kernels, picked from the shape.

Picked, not autotuned: the split of L fixes the order of the float sums, so a shape must always get
the same split for the same bits; and repel runs inside pipeline hooks where a first-call tuning
sweep would stall generation. The split depends on the group's shape only, never on the number of
groups, so a group's result is the same bits whatever other groups share the call. The apply kernel
sums nothing over L, so its tiles are free to follow the real group size (`pick_apply_tiling`).
"""

from __future__ import annotations

import math
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
MIN_DOT_ROWS = 16
"""tl.dot needs every dim >= 16: smaller groups are padded to this many rows."""
MAX_FMA_ROWS = 8
"""Groups of up to this many rows form the apply update by broadcast FMAs, in tiles of their real size: a tl.dot
tile would be half padding or more. Larger ones use tl.dot (at least 9 real rows of 16): an FMA tile of 16 padded
rows needs 128 accumulator registers per thread for 16-byte vectors, or narrower vectors through shared memory,
which spilled for 16-bit x at B = 12 on sm_80 (bench/compile_check.py)."""
VECTOR_BYTES = 16
"""The widest load and store of one thread (LDG.128 / STG.128)."""
APPLY_ACC_BYTES = 128
"""Accumulator bytes per thread of one FMA apply tile (32 fp32 or 16 fp64 values): at twice that (8 rows of 16-bit
x in 16-byte vectors) ptxas, which hoists the loads of the mixing matrix's columns, took 168 registers."""
MAX_WARPS = 8
"""Most warps of one FMA apply program (binding only for B = 1), as for the dot tiles."""


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
    """The Gram kernel's tiling for groups of `group_size` rows of `length` elements.

    tl.dot needs every dim >= 16, so groups are padded to block_b = max(16, next power of 2) rows
    (masked: padding rows are never read from memory). The split of L fixes the Gram's summation order.
    """
    block_b = max(MIN_DOT_ROWS, triton.next_power_of_2(group_size))
    block_l = _dot_block_l(block_b, dtype)
    sliced = block_b == 16
    chain_per_chunk = 1 if sliced else block_l // MMA_DEPTH
    chunks = triton.cdiv(length, block_l)
    splits = min(chunks, max(_program_budget(device), triton.cdiv(chunks * chain_per_chunk, MAX_CHAIN)))
    chunks_per_split = triton.cdiv(chunks, splits)
    splits = triton.cdiv(chunks, chunks_per_split)
    num_warps = _dot_warps(block_b)
    return Tiling(block_b, block_l, MMA_DEPTH, sliced, splits, chunks_per_split, num_warps=num_warps, num_stages=3)


@dataclass(frozen=True)
class ApplyTiling:
    """How the apply kernel cuts a [groups * B, L] matrix: one program per [block_b, block_l] tile of a group.

    `dot`: the update by tl.dot (B > MAX_FMA_ROWS); otherwise by B broadcast FMAs per element.
    """

    block_b: int
    block_l: int
    dot: bool
    num_warps: int


def pick_apply_tiling(group_size: int, length: int, dtype: torch.dtype) -> ApplyTiling:
    """The apply kernel's tiling for groups of `group_size` rows of `length` elements.

    Groups of more than MAX_FMA_ROWS rows: the tl.dot tiles of `pick_tiling`. Smaller ones: block_b =
    next power of 2 of B and block_l the power of 2 nearest to TILE_BYTES / (B * itemsize), so that a
    program moves about TILE_BYTES of real data (not 16 / B times less, as padded to 16 rows). Each thread
    holds all block_b rows of its columns: one 16-byte vector of each row, fewer columns where that would
    be more than APPLY_ACC_BYTES of accumulator. Short rows get narrower tiles.
    """
    if group_size > MAX_FMA_ROWS:
        block_b = max(MIN_DOT_ROWS, triton.next_power_of_2(group_size))
        return ApplyTiling(block_b, _dot_block_l(block_b, dtype), dot=True, num_warps=_dot_warps(block_b))
    block_b = triton.next_power_of_2(group_size)
    columns = TILE_BYTES / (group_size * dtype.itemsize)
    block_l = min(2 ** round(math.log2(columns)), triton.next_power_of_2(length))
    acc_bytes = 8 if dtype == torch.float64 else 4
    per_thread = max(1, min(VECTOR_BYTES // dtype.itemsize, APPLY_ACC_BYTES // (block_b * acc_bytes)))
    num_warps = min(MAX_WARPS, max(1, block_l // (per_thread * 32)))
    return ApplyTiling(block_b, block_l, dot=False, num_warps=num_warps)


def _dot_block_l(block_b: int, dtype: torch.dtype) -> int:
    """Columns of a tl.dot tile of block_b rows: TILE_BYTES of operand (half for fp64: twice the registers)."""
    tile_bytes = TILE_BYTES // 2 if dtype == torch.float64 else TILE_BYTES
    return max(MMA_DEPTH, tile_bytes // (block_b * dtype.itemsize))


def _dot_warps(block_b: int) -> int:
    return 4 if block_b == 16 else 8


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
