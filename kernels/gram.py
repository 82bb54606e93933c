"""Pass 1: the grouped Gram kernel, G[g] = X[g] X[g]^T for every group g of a [N, L] matrix.

L is split across many programs; each writes a partial [B, B] sum of its contiguous share of L, and
the partials are added in float64 in a fixed order after the launch (by `gram`, or inside the device
solver, which takes them as they are), so the same input always gives the same bits (no atomics).
Tensor cores add into an accumulator with truncation, so the error grows with the chain of MMA steps
into one accumulator: the tiling bounds every chain (see `tiling.MAX_CHAIN`); unbounded, a 1e8-element
row lost 1e-3 of its norm on an H100.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastrepulse.kernels.tiling import Tiling, dot_precision, pick_tiling


@triton.jit
def _gram_kernel(
    x_ptr,
    partial_ptr,
    stride_row,
    stride_group,
    L,
    CHUNKS_PER_SPLIT,
    B: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_K: tl.constexpr,
    SLICED: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """partial[g, s] = sum over the L-share s of X[g*B + i, l] * X[g*B + j, l], accumulated in fp32 (fp64); group
    g's partials start stride_group elements after group g - 1's."""
    i_s = tl.program_id(0)
    i_g = tl.program_id(1)

    o_b = tl.arange(0, BLOCK_B)
    m_b = o_b < B
    p_rows = x_ptr + (i_g * B + o_b).to(tl.int64) * stride_row
    l_start = i_s * CHUNKS_PER_SPLIT * BLOCK_L
    if SLICED:
        b_gram = _sliced_products(p_rows, m_b, l_start, L, CHUNKS_PER_SPLIT, BLOCK_B, BLOCK_L, BLOCK_K, INPUT_PRECISION)
    else:
        b_gram = _tile_products(p_rows, m_b, l_start, L, CHUNKS_PER_SPLIT, BLOCK_B, BLOCK_L, INPUT_PRECISION)

    o_out = i_g.to(tl.int64) * stride_group + i_s * B * B + o_b[:, None] * B + o_b[None, :]
    tl.store(partial_ptr + o_out, b_gram, mask=m_b[:, None] & m_b[None, :])


@triton.jit
def _tile_products(
    p_rows,
    m_b,
    l_start,
    L,
    CHUNKS,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """sum over CHUNKS tiles [BLOCK_B, BLOCK_L] of X_tile X_tile^T, one dot per tile (32 rows and more)."""
    acc_dtype = tl.float64 if p_rows.dtype.element_ty == tl.float64 else tl.float32
    b_acc = tl.zeros((BLOCK_B, BLOCK_B), dtype=acc_dtype)
    for i_c in range(CHUNKS):
        o_l = l_start + i_c * BLOCK_L + tl.arange(0, BLOCK_L)
        # [BLOCK_B, BLOCK_L]
        b_x = tl.load(p_rows[:, None] + o_l[None, :], mask=m_b[:, None] & (o_l < L)[None, :], other=0.0)
        # [BLOCK_B, BLOCK_L] @ [BLOCK_L, BLOCK_B]
        b_acc = tl.dot(b_x, tl.trans(b_x), b_acc, input_precision=PRECISION, out_dtype=acc_dtype)
    return b_acc


@triton.jit
def _sliced_products(
    p_rows,
    m_b,
    l_start,
    L,
    CHUNKS,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """As `_tile_products` for 16-row tiles: each tile is cut into slices of BLOCK_K columns, multiplied
    as one batched [SLICES, BLOCK_B, BLOCK_B] product into an accumulator per slice, and the slices
    are summed once at the end. The batch spreads the work over the warps (one 16 x 16 dot would
    repeat in every warp) and shortens each accumulator's chain of MMAs.
    """
    SLICES: tl.constexpr = BLOCK_L // BLOCK_K
    acc_dtype = tl.float64 if p_rows.dtype.element_ty == tl.float64 else tl.float32
    o_slice = tl.arange(0, SLICES)[:, None, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, None, :]
    b_acc = tl.zeros((SLICES, BLOCK_B, BLOCK_B), dtype=acc_dtype)
    for i_c in range(CHUNKS):
        o_l = l_start + i_c * BLOCK_L + o_slice
        # [SLICES, BLOCK_B, BLOCK_K]
        b_x = tl.load(p_rows[None, :, None] + o_l, mask=m_b[None, :, None] & (o_l < L), other=0.0)
        # [SLICES, BLOCK_B, BLOCK_K] @ [SLICES, BLOCK_K, BLOCK_B]
        b_acc = tl.dot(b_x, tl.permute(b_x, (0, 2, 1)), b_acc, input_precision=PRECISION, out_dtype=acc_dtype)
    return tl.sum(b_acc, axis=0)


def gram_partials(
    x: torch.Tensor, group_size: int, tiling: Tiling | None = None, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The per-program partial Gram sums [N / group_size, S, group_size, group_size] of the rows of x [N, L].

    Partial s is X[g] X[g]^T over the s-th of the S shares of L that `tiling` (default: `pick_tiling`)
    cuts, accumulated in float32 (float64 for float64 x). Their sum over s is the Gram matrix; the device
    solver takes them as they are and adds them itself, in float64 and in a fixed order. x must have unit
    stride along L; rows are grouped contiguously. `out` (else a new tensor) may be a slice along S of a larger
    buffer, e.g. one share of the partials of several parts of one sample: only its last three dimensions need
    to be contiguous.

    >>> x = torch.randn(8, 300)
    >>> gram_partials(x, 4).shape[::2]
    torch.Size([2, 4])
    """
    num_rows, length = x.shape
    if group_size < 1 or num_rows % group_size:
        raise ValueError(f"group_size must divide the {num_rows} rows of x, got {group_size}")
    if length > 1 and x.stride(1) != 1:
        raise ValueError(f"x must have unit stride along L, got strides {x.stride()}")
    num_groups = num_rows // group_size
    tiling = tiling or pick_tiling(group_size, length, x.dtype, x.device)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    shape = (num_groups, tiling.splits, group_size, group_size)
    if out is None:
        out = torch.empty(shape, dtype=acc_dtype, device=x.device)
    elif out.shape != shape or out.dtype != acc_dtype or out.device != x.device or not out[0].is_contiguous():
        raise ValueError(
            f"out must be a {acc_dtype} tensor of shape {list(shape)} on {x.device} whose last three dimensions are "
            f"contiguous, got {out.dtype} {list(out.shape)} with strides {out.stride()} on {out.device}"
        )
    _gram_kernel[(tiling.splits, num_groups)](
        x_ptr=x,
        partial_ptr=out,
        stride_row=x.stride(0),
        stride_group=out.stride(0),
        L=length,
        CHUNKS_PER_SPLIT=tiling.chunks_per_split,
        B=group_size,
        BLOCK_B=tiling.block_b,
        BLOCK_L=tiling.block_l,
        BLOCK_K=tiling.block_k,
        SLICED=tiling.sliced,
        INPUT_PRECISION=dot_precision(x.dtype),
        num_warps=tiling.num_warps,
        num_stages=tiling.num_stages,
    )
    return out


def gram(x: torch.Tensor, group_size: int, tiling: Tiling | None = None) -> torch.Tensor:
    """Gram matrices [N / group_size, group_size, group_size] (float64) of the rows of x [N, L].

    x must have unit stride along L; rows are grouped contiguously. Accumulates in float32
    (float64 for float64 x) inside a program and sums the per-program partials (`gram_partials`) in
    float64.
    """
    return gram_partials(x, group_size, tiling).sum(dim=1, dtype=torch.float64)
