"""Pass 2: the grouped apply kernel, out[g] = X[g] + D[g] X[g] with D = P - I.

One read and one write of the big tensor and one rounding: the update is formed in fp32 (fp64) and
added to the sample before the single cast on store. Each program owns all B rows of its columns,
so out may be x itself. Groups of more than 8 rows form the update on tensor cores; smaller ones by
broadcast FMAs, in tiles of their real size (a tl.dot tile would pad them to 16 rows; see
`tiling.pick_apply_tiling`). A group the device solver did not solve (its status, read on the device)
is written back as it was.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastrepulse.kernels.solve import SOLVED
from fastrepulse.kernels.tiling import ApplyTiling, dot_precision, pick_apply_tiling


@triton.jit
def _apply_kernel(
    x_ptr,
    mix_ptr,
    out_ptr,
    status_ptr,
    stride_x,
    stride_out,
    L,
    B: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
    DOT: tl.constexpr,
    SPLIT_MIX: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    HAS_STATUS: tl.constexpr,
    SOLVED_STATUS: tl.constexpr,
):
    """out[g*B + i, l] = x[g*B + i, l] + sum_j mix[g, i, j] * x[g*B + j, l]; out = x where status[g] != SOLVED.

    With DOT and SPLIT_MIX (16-bit x) the fp32 mixing matrix, scaled to max 1, is split into a high and a
    low 16-bit part so the two tensor-core products carry ~16 bits of it; x itself is exact in 16 bits.
    Without DOT every product is an fp32 (fp64) FMA with the full mixing matrix.
    """
    i_l = tl.program_id(0)
    i_g = tl.program_id(1)
    acc_dtype = tl.float64 if x_ptr.dtype.element_ty == tl.float64 else tl.float32

    o_b = tl.arange(0, BLOCK_B)
    m_b = o_b < B
    o_l = i_l * BLOCK_L + tl.arange(0, BLOCK_L)
    m_l = o_l < L
    m_x = m_b[:, None] & m_l[None, :]
    o_rows = (i_g * B + o_b).to(tl.int64)
    p_mix = mix_ptr + i_g * B * B

    p_x = x_ptr + o_rows[:, None] * stride_x + o_l[None, :]
    if DOT:
        # [BLOCK_B, BLOCK_L]
        b_x = tl.load(p_x, mask=m_x, other=0.0)
        # [BLOCK_B, BLOCK_B]
        b_mix = tl.load(p_mix + o_b[:, None] * B + o_b[None, :], mask=m_b[:, None] & m_b[None, :], other=0.0)
        b_mix = b_mix.to(acc_dtype)
        if SPLIT_MIX:
            b_scale = tl.maximum(tl.max(tl.abs(b_mix)), 1e-30)
            b_mix = b_mix / b_scale
            b_hi = b_mix.to(b_x.dtype)
            b_lo = (b_mix - b_hi.to(tl.float32)).to(b_x.dtype)
            # [BLOCK_B, BLOCK_B] @ [BLOCK_B, BLOCK_L]
            b_delta = tl.dot(b_hi, b_x)
            b_delta = tl.dot(b_lo, b_x, b_delta) * b_scale
        else:
            # [BLOCK_B, BLOCK_B] @ [BLOCK_B, BLOCK_L]
            b_delta = tl.dot(b_mix, b_x, input_precision=INPUT_PRECISION, out_dtype=acc_dtype)
    else:
        b_delta = tl.zeros((BLOCK_B, BLOCK_L), dtype=acc_dtype)
        for j in tl.static_range(B):
            # [1, BLOCK_L]
            b_x_j = tl.load(x_ptr + (i_g * B + j).to(tl.int64) * stride_x + o_l[None, :], mask=m_l[None, :], other=0.0)
            # [BLOCK_B, 1]: column j of the group's mixing matrix
            b_mix_j = tl.load(p_mix + o_b[:, None] * B + j, mask=m_b[:, None], other=0.0).to(acc_dtype)
            b_delta += b_mix_j * b_x_j.to(acc_dtype)  # contracted to FMAs (Triton's default fp fusion)
        # [BLOCK_B, BLOCK_L]: the rows just read, read again (cache hits) rather than held through the loop
        b_x = tl.load(p_x, mask=m_x, other=0.0)
    b_out = (b_x.to(acc_dtype) + b_delta).to(out_ptr.dtype.element_ty)
    if HAS_STATUS:
        # the sample itself, not x + 0: exact for -0.0 and Inf, whatever the unsolved group's mixing matrix holds
        b_out = tl.where(tl.load(status_ptr + i_g) == SOLVED_STATUS, b_out, b_x.to(out_ptr.dtype.element_ty))
    tl.store(out_ptr + o_rows[:, None] * stride_out + o_l[None, :], b_out, mask=m_x)


def apply_update(
    x: torch.Tensor,
    mix: torch.Tensor,
    out: torch.Tensor,
    status: torch.Tensor | None = None,
    tiling: ApplyTiling | None = None,
) -> torch.Tensor:
    """out = x + mix @ x per group, for x, out [N, L] and mix = P - I [N / B, B, B]; returns out.

    x and out need unit stride along L, their row strides may differ (a view such as
    ``joint[:, :T].reshape(B, -1)`` is written in place); out may be x (in place). mix may be any float
    dtype (float64 from the solvers); it is moved to x's device and read as float32 (float64 for
    float64 x). `status` [N / B] (int32, on x's device; the device solver's): groups whose status is not
    SOLVED are written as x, bit for bit, without a sync. Default tiling: `pick_apply_tiling`.

    >>> x = torch.randn(4, 10)
    >>> mix = torch.zeros(2, 2, 2, dtype=torch.float64)
    >>> torch.equal(apply_update(x, mix, torch.empty_like(x)), x)
    True
    """
    num_groups, group_size, _ = mix.shape
    num_rows, length = x.shape
    if num_rows != num_groups * group_size or out.shape != x.shape:
        raise ValueError(
            f"x and out must be [{num_groups} * {group_size}, L] for mix {tuple(mix.shape)}, got x "
            f"{tuple(x.shape)} and out {tuple(out.shape)}"
        )
    for name, rows in (("x", x), ("out", out)):
        if length > 1 and rows.stride(1) != 1:
            raise ValueError(f"{name} must have unit stride along L, got strides {rows.stride()}")
    if status is not None and (status.shape != (num_groups,) or status.dtype != torch.int32):
        raise ValueError(f"status must be int32 [{num_groups}], got {status.dtype} {tuple(status.shape)}")
    tiling = tiling or pick_apply_tiling(group_size, length, x.dtype)
    _apply_kernel[(triton.cdiv(length, tiling.block_l), num_groups)](
        x_ptr=x,
        mix_ptr=mix.to(device=x.device).contiguous(),
        out_ptr=out,
        status_ptr=status,
        stride_x=x.stride(0),
        stride_out=out.stride(0),
        L=length,
        B=group_size,
        BLOCK_B=tiling.block_b,
        BLOCK_L=tiling.block_l,
        DOT=tiling.dot,
        SPLIT_MIX=x.element_size() == 2,
        INPUT_PRECISION=dot_precision(x.dtype),
        HAS_STATUS=status is not None,
        SOLVED_STATUS=SOLVED,
        num_warps=tiling.num_warps,
    )
    return out
