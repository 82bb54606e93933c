"""The B x B algebra of repulsion, in float64 NumPy on the host: kernels, objective gradients, forces.

Every objective here is a function H(K) of a kernel matrix K that is itself a function of the Gram
matrix G = C C^T of a group's flattened samples C [B, L]. The chain rule then gives

    grad_C H = W C,    W = 2 sym(dH/dG)                                     [B, B]

so the force on every sample is a combination of the group's own rows. `force_matrix` returns W;
`solver.solve` and the paper-style reference loop both build on it. NumPy rather than torch: for
B x B matrices the cost is per-call overhead, and NumPy's is a third of torch's (100 steps for one
group of 4: 3.5 ms here, 9 ms in the first, torch version; bench/test_solver_speed.py).

The kernels, exactly:

- ``"cosine"``: ``K_ij = G_ij / (n_i n_j)`` with ``n_i = sqrt(G_ii)``.
- ``"rbf"``: ``K_ij = exp(-d_ij / h)`` with ``d_ij = G_ii + G_jj - 2 G_ij`` (squared distance) and the
  bandwidth ``h = median{d_ij : i < j} / log(B)``, the SVGD median rule (the median of an even count is
  the mean of the two middle values). ``h`` is computed once per call from the input and held fixed
  during the iterations, so they are gradient ascent on one fixed function. Where that median is 0 (at
  least half the pairs coincide) there is no length scale: ``h`` is infinite and there is no force.

The objectives:

- ``"vendi"``: the von Neumann entropy ``H = -sum_k lam_k log lam_k`` of ``rho = K / B`` (the log of
  the Vendi score). Eigenvalues are floored at ``EIGENVALUE_FLOOR`` inside the log, which bounds the
  force when samples are linearly dependent (duplicates, or B > L).
- ``"energy"``: ``H = -sum_{i != j} K_ij``, the Particle-Guidance pairwise energy.

Identical and collinear samples have exact answers that rounding would otherwise swamp: with eigenvalues of K
floored, the steps amplify rounding in the directions the samples do not span by a factor each step. Squared
distances below ``RANK_TOLERANCE`` of ``G_ii + G_jj`` (and cosines within it of +-1) are rounding and count as
exact, i.e. samples closer than about 3e-7 of their norm are identical here. Then:

- identical samples stay identical (`ties`): the exact steps move them alike;
- a group whose samples all lie on one line through 0 (`collinear`) does not move under the cosine kernel:
  a force tangent to that line within the samples' span is 0 (so for any one-element samples);
- under rbf, identical samples (and any group whose median distance is 0) feel no force (h is infinite).
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Objective = Literal["vendi", "energy"]
Kernel = Literal["cosine", "rbf"]
OBJECTIVES: tuple[str, ...] = ("vendi", "energy")
KERNELS: tuple[str, ...] = ("cosine", "rbf")

EIGENVALUE_FLOOR = 1e-12
"""Eigenvalues of rho below this count as this inside log(rho); float64 eigh is exact to ~1e-16."""

RANK_TOLERANCE = 1e-13
"""Squared distances below this fraction of G_ii + G_jj, and cosines within it of +-1, are rounding of a float64
Gram matrix (~1e-16 relative) and count as 0 and +-1."""


def ties(gram: np.ndarray) -> np.ndarray | None:
    """Averaging matrices [..., B, B] over each group's sets of identical samples (squared distance 0 in
    `squared_distances`), or None where no two samples of any group are identical."""
    size = gram.shape[-1]
    same = squared_distances(gram) == 0
    if not (same & ~np.eye(size, dtype=bool)).any():
        return None
    for _ in range(max(size - 1, 1).bit_length()):  # transitive closure: paths of length up to B
        same = (same.astype(np.float64) @ same.astype(np.float64)) > 0
    return same / same.sum(-1, keepdims=True)


def collinear(gram: np.ndarray) -> np.ndarray:
    """Whether each group's samples lie on one line through 0 (every cosine +-1 to rounding) [...]."""
    inv_norm = 1.0 / np.sqrt(np.diagonal(gram, axis1=-2, axis2=-1))
    cosines = np.abs(gram * inv_norm[..., :, None] * inv_norm[..., None, :])
    return (cosines >= 1.0 - RANK_TOLERANCE).all(axis=(-2, -1))


def step_sizes(gram: np.ndarray, scale: float, iterations: int, kernel: str) -> np.ndarray:
    """Each group's step size [..., 1, 1]: scale / iterations, 0 for collinear groups under the cosine kernel."""
    steps = np.full(gram.shape[:-2] + (1, 1), scale / iterations)
    if kernel == "cosine":
        steps[collinear(gram)] = 0.0
    return steps


def rbf_bandwidth(gram: np.ndarray) -> np.ndarray:
    """Median-rule bandwidth ``h = median_{i<j} d_ij / log(B)`` of each group, shape [..., 1, 1]; inf where 0."""
    size = gram.shape[-1]
    upper = np.triu_indices(size, k=1)
    pairs = squared_distances(gram)[..., upper[0], upper[1]]
    bandwidth = np.median(pairs, axis=-1) / math.log(size)
    return np.where(bandwidth > 0, bandwidth, np.inf)[..., None, None]


def objective_gradient(kernel_mat: np.ndarray, objective: str) -> np.ndarray:
    """F = dH/dK [..., B, B], without its multiple of the identity.

    Every kernel here has a constant diagonal, so an identity term in F exerts no force; dropping it
    saves work (for Vendi, dH/dK = -(log rho + I) / B, and log(K / B) = log K - log(B) I).
    """
    size = kernel_mat.shape[-1]
    if objective == "vendi":
        eigenvalues, eigenvectors = np.linalg.eigh(kernel_mat)
        log_eig = np.log(np.maximum(eigenvalues, size * EIGENVALUE_FLOOR))
        return (eigenvectors * (log_eig / -size)[..., None, :]) @ np.swapaxes(eigenvectors, -1, -2)
    return np.broadcast_to(np.eye(size) - 1.0, kernel_mat.shape)


def force_matrix(gram: np.ndarray, objective: str, kernel: str, bandwidth: np.ndarray | None) -> np.ndarray:
    """W [..., B, B] with grad_C H = W C for the current Gram matrices [..., B, B]: dH/dK pulled back
    through the kernel to the Gram matrix.

    cosine: K = G / (n n^T),  W = 2 (F / (n n^T) - diag(rowsum(F * K) / n^2))
    rbf:    K = exp(-d / h),  W = 4 (E - diag(rowsum(E))),  E = F * K / h
    """
    diagonal = np.arange(gram.shape[-1])
    if kernel == "cosine":
        inv_sq_norm = 1.0 / np.diagonal(gram, axis1=-2, axis2=-1)
        inv_norm = np.sqrt(inv_sq_norm)
        scaling = inv_norm[..., :, None] * inv_norm[..., None, :]
        kernel_mat = gram * scaling
        dh_dk = objective_gradient(kernel_mat, objective)
        force = dh_dk * scaling
        force[..., diagonal, diagonal] -= (dh_dk * kernel_mat).sum(-1) * inv_sq_norm
        return force * 2.0
    kernel_mat = np.exp(-squared_distances(gram) / bandwidth)
    force = objective_gradient(kernel_mat, objective) * kernel_mat / bandwidth
    force[..., diagonal, diagonal] -= force.sum(-1)
    return force * 4.0


def squared_distances(gram: np.ndarray) -> np.ndarray:
    """d_ij = G_ii + G_jj - 2 G_ij [..., B, B]; 0 at rounding level (RANK_TOLERANCE of G_ii + G_jj) or below."""
    sq_norm = np.diagonal(gram, axis1=-2, axis2=-1)
    scale = sq_norm[..., :, None] + sq_norm[..., None, :]
    distances = scale - 2.0 * gram
    return np.where(distances > RANK_TOLERANCE * scale, distances, 0.0)
