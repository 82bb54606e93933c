"""Pass 2: the grouped apply kernel, out[g] = X[g] + D[g] X[g] with D = P - I.

One read and one write of the big tensor and one rounding: the update is formed in fp32 (fp64) and
added to the sample before the single cast on store. Each program owns all B rows of its columns,
so out may be x itself.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastrepulse.kernels.tiling import Tiling, dot_precision, pick_tiling


@triton.jit
def _apply_kernel(
    x_ptr,
    mix_ptr,
    out_ptr,
    stride_x,
    stride_out,
    L,
    B: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_L: tl.constexpr,
    SPLIT_MIX: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
):
    """out[g*B + i, l] = x[g*B + i, l] + sum_j mix[g, i, j] * x[g*B + j, l].

    With SPLIT_MIX (16-bit x) the fp32 mixing matrix, scaled to max 1, is split into a high and a low
    16-bit part so the two tensor-core products carry ~16 bits of it; x itself is exact in 16 bits.
    """
    i_l = tl.program_id(0)
    i_g = tl.program_id(1)

    o_b = tl.arange(0, BLOCK_B)
    m_b = o_b < B
    o_l = i_l * BLOCK_L + tl.arange(0, BLOCK_L)
    m_x = m_b[:, None] & (o_l < L)[None, :]
    o_rows = (i_g * B + o_b).to(tl.int64)

    # [BLOCK_B, BLOCK_B]
    p_mix = mix_ptr + i_g * B * B + o_b[:, None] * B + o_b[None, :]
    b_mix = tl.load(p_mix, mask=m_b[:, None] & m_b[None, :], other=0.0)
    # [BLOCK_B, BLOCK_L]
    b_x = tl.load(x_ptr + o_rows[:, None] * stride_x + o_l[None, :], mask=m_x, other=0.0)
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
        b_delta = tl.dot(b_mix, b_x, input_precision=INPUT_PRECISION, out_dtype=b_mix.dtype)
    b_out = b_x.to(b_delta.dtype) + b_delta
    tl.store(out_ptr + o_rows[:, None] * stride_out + o_l[None, :], b_out.to(out_ptr.dtype.element_ty), mask=m_x)


def apply_update(x: torch.Tensor, mix: torch.Tensor, out: torch.Tensor, tiling: Tiling | None = None) -> torch.Tensor:
    """out = x + mix @ x per group, for x, out [N, L] (unit stride along L) and mix = P - I [N / B, B, B].

    out may be x (in place). mix is cast to float32 (float64 for float64 x) on x's device.
    """
    num_groups, group_size, _ = mix.shape
    length = x.shape[1]
    tiling = tiling or pick_tiling(group_size, length, x.dtype, x.device)
    mix_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    mix = mix.to(device=x.device, dtype=mix_dtype).contiguous()
    _apply_kernel[(triton.cdiv(length, tiling.block_l), num_groups)](
        x_ptr=x,
        mix_ptr=mix,
        out_ptr=out,
        stride_x=x.stride(0),
        stride_out=out.stride(0),
        L=length,
        B=group_size,
        BLOCK_B=tiling.block_b,
        BLOCK_L=tiling.block_l,
        SPLIT_MIX=x.element_size() == 2,
        INPUT_PRECISION=dot_precision(x.dtype),
        num_warps=tiling.num_warps,
    )
    return out
