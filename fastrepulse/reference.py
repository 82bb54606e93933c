"""Eager PyTorch references: the Gram-space passes of backend "torch" and the paper's literal loop.

Both run on any device. Samples arrive as x [N, L] with groups of `group_size` contiguous rows;
arithmetic is float32 (float64 for float64 x), B x B algebra float64 on the host.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fastrepulse.forces import kernel_matrix, objective_gradient, rbf_bandwidth


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
    """The paper's loop: `iterations` explicit steps on the full tensor, each a Gram pass and an update pass.

    Each step applies the closed-form gradient per sample (the paper's Eq. 3 for cosine):
    cosine ``grad_i = (2 / |c_i|) (sum_j F_ij u_j - u_i sum_j F_ij K_ij)`` with ``u_i = c_i / |c_i|``;
    rbf ``grad_i = (4 / h) sum_j F_ij K_ij (c_j - c_i)``; F = dH/dK from `objective_gradient`.

    Returns the updated samples [N / B, B, L] in the accumulation dtype. `check_gram` sees the first
    Gram matrix, before any arithmetic on the samples.
    """
    samples = x.view(-1, group_size, x.shape[1]).to(accumulation_dtype(x.dtype), copy=True)
    step = scale / iterations
    bandwidth = None

    def on_device(matrix: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(matrix).to(device=samples.device, dtype=samples.dtype)

    for i_step in range(iterations):
        gram = torch.bmm(samples, samples.mT).to(device="cpu", dtype=torch.float64)
        if i_step == 0:
            check_gram(gram)
        gram = gram.numpy()
        if i_step == 0 and kernel == "rbf":
            bandwidth = rbf_bandwidth(gram)
        kernel_mat = kernel_matrix(gram, kernel, bandwidth)
        dh_dk = objective_gradient(kernel_mat, objective)
        pull = (dh_dk * kernel_mat).sum(-1, keepdims=True)
        if kernel == "cosine":
            norm = np.sqrt(np.diagonal(gram, axis1=-2, axis2=-1))[..., None]
            along = torch.bmm(on_device(dh_dk / np.swapaxes(norm, -1, -2)), samples)
            along -= samples * on_device(pull / norm)
            grad = along * on_device(2.0 / norm)
        else:
            grad = torch.bmm(on_device(dh_dk * kernel_mat / bandwidth), samples)
            grad -= samples * on_device(pull / bandwidth)
            grad *= 4.0
        samples.add_(grad.mul_(step))
    return samples
