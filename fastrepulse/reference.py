"""Eager PyTorch references: the Gram-space passes of backend "torch" and the paper's literal loop.

Both run on any device. Samples arrive as x [N, L] with groups of `group_size` contiguous rows;
arithmetic is float32 (float64 for float64 x), Gram matrices float64 (a float32 BLAS product of identical
rows need not give equal entries), B x B algebra float64 on the host.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fastrepulse.forces import force_matrix, rbf_bandwidth, step_sizes, ties
from fastrepulse.status import SOLVED


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 samples, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_torch(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Gram matrices [N / B, B, B] (float64, accumulated in float64) of the row groups of x [N, L]."""
    rows = x.view(-1, group_size, x.shape[1]).to(torch.float64)
    return torch.bmm(rows, rows.mT)


def apply_torch(
    x: torch.Tensor, mix: torch.Tensor, out: torch.Tensor, status: torch.Tensor | None = None
) -> torch.Tensor:
    """out = x + mix @ x per group, for x, out [N, L] (any row strides) and mix = P - I [N / B, B, B]; out may be x.

    The update is formed in float32 (float64 for float64 x) and added to x before the one rounding to x's dtype.
    Groups whose `status` [N / B] (`fastrepulse.status`, on x's device) is not SOLVED are written as x, bit for bit.
    """
    num_groups, group_size, _ = mix.shape
    grouped = x.view(num_groups, group_size, -1)
    rows = grouped.to(accumulation_dtype(x.dtype))
    update = torch.baddbmm(rows, mix.to(device=x.device, dtype=rows.dtype), rows)
    if status is None:
        out.view(num_groups, group_size, -1).copy_(update)
    else:
        solved = (status == SOLVED).view(num_groups, 1, 1)
        out.view(num_groups, group_size, -1).copy_(torch.where(solved, update.to(x.dtype), grouped))
    return out


def repel_literal(
    x: torch.Tensor,
    group_size: int,
    *,
    scale: float,
    iterations: int,
    objective: str,
    kernel: str,
    check_gram: Callable[[torch.Tensor], None],
) -> torch.Tensor:
    """The paper's loop: `iterations` explicit steps on the full tensor, two passes each.

    Each step computes the Gram matrix of the current samples (pass 1), the closed-form gradient's
    coefficients from it on the host, and applies ``c <- c + (scale / iterations) W c`` (pass 2).

    Returns the updated samples [N / B, B, L] in the accumulation dtype. `check_gram` sees the first
    Gram matrix (float64), before any arithmetic on the samples. Identical samples are kept identical and
    collinear groups (cosine) unmoved, their exact answers, which rounding would swamp (`fastrepulse.forces`).
    """
    samples = x.view(-1, group_size, x.shape[1]).to(accumulation_dtype(x.dtype), copy=True)
    first = torch.bmm(samples.double(), samples.double().mT).cpu()  # float64: identical rows give equal entries
    check_gram(first)
    first = first.numpy()
    bandwidth = rbf_bandwidth(first) if kernel == "rbf" else None
    tie = ties(first)
    step = step_sizes(first, scale, iterations, kernel)
    # identical rows averaged again after each step, whatever the BLAS does with equal rows (groups that move)
    retie = None if tie is None else torch.from_numpy(np.where(step > 0, tie, np.eye(tie.shape[-1]))).to(samples)
    for i_step in range(iterations):
        gram = first if i_step == 0 else torch.bmm(samples, samples.mT).to(device="cpu", dtype=torch.float64).numpy()
        force = step * force_matrix(gram, objective, kernel, bandwidth)
        if tie is not None:  # identical samples: the same force
            force = tie @ force @ tie
        samples = torch.baddbmm(samples, torch.from_numpy(force).to(samples), samples)
        if retie is not None:
            samples = torch.bmm(retie, samples)
    return samples
