"""The B x B algebra of repulsion: kernel matrices, objective gradients and the force in Gram space.

Every objective here is a function H(K) of a kernel matrix K that is itself a function of the Gram
matrix G = C C^T of a group's flattened samples C [B, L]. The chain rule then gives

    grad_C H = W C,    W = 2 sym(dH/dG)                                     [B, B]

so the force on every sample is a combination of the group's own rows. `gram_force` returns W;
`solver.solve` and the eager references both build on it.

The kernels, exactly:

- ``"cosine"``: ``K_ij = G_ij / (n_i n_j)`` with ``n_i = sqrt(G_ii)``.
- ``"rbf"``: ``K_ij = exp(-d_ij / h)`` with ``d_ij = G_ii + G_jj - 2 G_ij`` (squared distance) and the
  bandwidth ``h = median{d_ij : i < j} / log(B)``, the SVGD median rule (the median of an even count is
  the mean of the two middle values). ``h`` is computed once per call from the input and held fixed
  during the iterations, so they are gradient ascent on one fixed function; it is floored at the
  smallest normal float64 so identical samples give ``K = 1`` rather than NaN.

The objectives:

- ``"vendi"``: the von Neumann entropy ``H = -sum_k lam_k log lam_k`` of ``rho = K / B`` (the log of
  the Vendi score). Eigenvalues are floored at ``EIGENVALUE_FLOOR`` inside the log, which bounds the
  force when samples are linearly dependent (duplicates, or B > L).
- ``"energy"``: ``H = -sum_{i != j} K_ij``, the Particle-Guidance pairwise energy.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Objective = Literal["vendi", "energy"]
Kernel = Literal["cosine", "rbf"]
OBJECTIVES: tuple[str, ...] = ("vendi", "energy")
KERNELS: tuple[str, ...] = ("cosine", "rbf")

EIGENVALUE_FLOOR = 1e-12
"""Eigenvalues of rho below this count as this inside log(rho); float64 eigh is exact to ~1e-16."""


def rbf_bandwidth(gram: torch.Tensor) -> torch.Tensor:
    """Median-rule bandwidth ``h = median_{i<j} d_ij / log(B)`` of each group, shape [..., 1, 1]."""
    size = gram.shape[-1]
    sq_dist = _squared_distances(gram)
    upper = torch.triu_indices(size, size, offset=1, device=gram.device)
    pairs = sq_dist[..., upper[0], upper[1]]
    bandwidth = pairs.quantile(0.5, dim=-1) / math.log(size)
    return bandwidth.clamp_min(torch.finfo(gram.dtype).tiny)[..., None, None]


def kernel_matrix(gram: torch.Tensor, kernel: str, bandwidth: torch.Tensor | None = None) -> torch.Tensor:
    """Kernel matrix K [..., B, B] of a batch of Gram matrices [..., B, B]."""
    if kernel == "cosine":
        inv_norm = gram.diagonal(dim1=-2, dim2=-1).rsqrt()
        return gram * inv_norm[..., :, None] * inv_norm[..., None, :]
    return torch.exp(-_squared_distances(gram) / bandwidth)


def objective_gradient(kernel_mat: torch.Tensor, objective: str) -> torch.Tensor:
    """F = dH/dK [..., B, B], without its multiple of the identity.

    Every kernel here has a constant diagonal, so an identity term in F exerts no force; dropping it
    saves work (for Vendi, dH/dK = -(log rho + I) / B).
    """
    size = kernel_mat.shape[-1]
    if objective == "vendi":
        eigenvalues, eigenvectors = torch.linalg.eigh(kernel_mat / size)
        log_eig = eigenvalues.clamp_min(EIGENVALUE_FLOOR).log_()
        return (eigenvectors * log_eig[..., None, :]) @ eigenvectors.mT / -size
    eye = torch.eye(size, dtype=kernel_mat.dtype, device=kernel_mat.device)
    return (eye - 1.0).expand_as(kernel_mat)


def gram_force(
    gram: torch.Tensor,
    kernel_mat: torch.Tensor,
    objective_grad: torch.Tensor,
    kernel: str,
    bandwidth: torch.Tensor | None = None,
) -> torch.Tensor:
    """W [..., B, B] with grad_C H = W C, from dH/dK pulled back through the kernel to the Gram matrix.

    cosine: W = 2 (F / (n n^T) - diag(rowsum(F * K) / n^2))
    rbf:    W = 4 (E - diag(rowsum(E))),  E = F * K / h
    """
    if kernel == "cosine":
        inv_norm = gram.diagonal(dim1=-2, dim2=-1).rsqrt()
        force = objective_grad * inv_norm[..., :, None] * inv_norm[..., None, :]
        force.diagonal(dim1=-2, dim2=-1).sub_((objective_grad * kernel_mat).sum(-1) * inv_norm.square())
        return force.mul_(2.0)
    force = objective_grad * kernel_mat / bandwidth
    force.diagonal(dim1=-2, dim2=-1).sub_(force.sum(-1))
    return force.mul_(4.0)


def force_matrix(gram: torch.Tensor, objective: str, kernel: str, bandwidth: torch.Tensor | None) -> torch.Tensor:
    """W [..., B, B] of the current Gram matrices: one gradient of H, in Gram space."""
    kernel_mat = kernel_matrix(gram, kernel, bandwidth)
    return gram_force(gram, kernel_mat, objective_gradient(kernel_mat, objective), kernel, bandwidth)


def vendi_score(gram: torch.Tensor, kernel: str = "cosine", bandwidth: torch.Tensor | None = None) -> torch.Tensor:
    """Vendi score exp(H) of each group [...] (between 1 and B) from its Gram matrix [..., B, B]."""
    if kernel == "rbf" and bandwidth is None:
        bandwidth = rbf_bandwidth(gram)
    kernel_mat = kernel_matrix(gram, kernel, bandwidth)
    eigenvalues = torch.linalg.eigvalsh(kernel_mat / kernel_mat.shape[-1]).clamp_min(EIGENVALUE_FLOOR)
    return torch.exp(-(eigenvalues * eigenvalues.log()).sum(-1))


def _squared_distances(gram: torch.Tensor) -> torch.Tensor:
    sq_norm = gram.diagonal(dim1=-2, dim2=-1)
    return (sq_norm[..., :, None] + sq_norm[..., None, :] - 2.0 * gram).clamp_min(0.0)
