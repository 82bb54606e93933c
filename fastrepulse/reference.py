"""Eager PyTorch references: the Gram-space passes of backend "torch" and the paper's literal loop.

Both run on any device. Samples arrive as x [N, L] with groups of `group_size` contiguous rows;
arithmetic is float32 (float64 for float64 x), B x B algebra float64 on the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastrepulse.forces import force_matrix, rbf_bandwidth


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 samples, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def gram_torch(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Gram matrices [N / B, B, B] (float64) of the row groups of x [N, L]."""
    rows = x.view(-1, group_size, x.shape[1]).to(accumulation_dtype(x.dtype))
    return torch.bmm(rows, rows.mT).to(torch.float64)


def apply_torch(x: torch.Tensor, mix: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out = x + mix @ x per group, for x, out [N, L] and mix = P - I [N / B, B, B]; out may be x."""
    num_groups, group_size, _ = mix.shape
    rows = x.view(num_groups, group_size, -1).to(accumulation_dtype(x.dtype))
    update = torch.baddbmm(rows, mix.to(device=x.device, dtype=rows.dtype), rows)
    out.view(num_groups, group_size, -1).copy_(update)
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
    Gram matrix, before any arithmetic on the samples.
    """
    samples = x.view(-1, group_size, x.shape[1]).to(accumulation_dtype(x.dtype), copy=True)
    step = scale / iterations
    bandwidth = None
    for i_step in range(iterations):
        gram = torch.bmm(samples, samples.mT).to(device="cpu", dtype=torch.float64)
        if i_step == 0:
            check_gram(gram)
            bandwidth = rbf_bandwidth(gram.numpy()) if kernel == "rbf" else None
        force = step * force_matrix(gram.numpy(), objective, kernel, bandwidth)
        samples = torch.baddbmm(samples, torch.from_numpy(force).to(samples), samples)
    return samples
