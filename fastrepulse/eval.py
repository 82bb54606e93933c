"""Diversity and fidelity metrics for generated sets: Vendi score, mean pairwise distance, fidelity, KID, FID.

All arithmetic runs in float64 on the features' device, whatever their dtype; features are rows, [N, D]
(N samples of D features) or, where stated, a batch of sets [G, N, D].

- `vendi`: ``exp`` of the order-q Renyi entropy of the eigenvalues of ``rho = K / N`` (Friedman & Dieng
  2023), from a similarity K with unit diagonal on average. The paper's protocol scores each group of
  images on its own and averages: pass the groups as [G, N, D] and take the mean of the [G] scores.
- `mean_pairwise_distance`: mean Euclidean distance over the N (N - 1) / 2 pairs.
- `fidelity`: the share of classified labels equal to the requested ones.
- `kid`: Kernel Inception Distance (Binkowski et al. 2018), the unbiased MMD^2 with a cubic polynomial
  kernel, averaged over random subsets.
- `fid`: Frechet distance between the Gaussians fitted to two feature sets (Heusel et al. 2017).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

VendiKernel = Literal["cosine", "linear"]
VENDI_KERNELS: tuple[str, ...] = ("cosine", "linear")


def vendi(features: torch.Tensor, q: float = 1.0, kernel: VendiKernel = "cosine") -> torch.Tensor:
    """Vendi score of order q of one set [N, D], or of each set of a batch [G, N, D].

    With lam the eigenvalues of ``rho = K / N`` (trace 1; negatives from rounding set to 0, and any
    below ``N * eps * max(lam)`` too, so that exact duplicates count once for every q):

        q = 1:        exp(-sum_k lam_k log lam_k)       (0 log 0 = 0)
        q = inf:      1 / max_k lam_k
        other q > 0:  (sum_k lam_k^q)^(1 / (1 - q))       (q = 2: N^2 / ||K||_F^2)

    The score lies in [1, N]: 1 when all samples are alike, N when they are mutually orthogonal.

    Args:
        features: [N, D] or [G, N, D], real dtype, finite; N >= 1.
        q: order of the entropy, > 0 (``math.inf`` allowed). Default 1, the paper's Vendi score.
        kernel: "cosine" (default): ``K_ij = <x_i, x_j> / (|x_i| |x_j|)``; no row may be all zeros.
            "linear": ``K = X X^T / mean_i |x_i|^2``, one scale for the whole set, so that the mean of
            ``K_ii`` is 1 and rho a density matrix as the score requires; unlike cosine it weighs each
            sample by its squared norm (``lam`` are the normalised squared singular values of X).

    Returns:
        float64 scores: a 0-d tensor for [N, D], [G] for [G, N, D]; on the features' device.

    Example:
        >>> vendi(torch.eye(3))  # three orthogonal samples
        tensor(3.0000, dtype=torch.float64)
        >>> vendi(torch.ones(4, 2), q=2.0)  # four copies of one sample
        tensor(1.0000, dtype=torch.float64)
    """
    x = _check_features(features, "features", batched=True, min_samples=1)
    q = _check_order(q)
    if kernel not in VENDI_KERNELS:
        raise ValueError(f"kernel must be one of {VENDI_KERNELS}, got {kernel!r}")
    batch = x if x.dim() == 3 else x.unsqueeze(0)
    size = batch.shape[1]

    gram = batch @ batch.transpose(-1, -2)
    sq_norm = torch.diagonal(gram, dim1=-2, dim2=-1)
    if kernel == "cosine":
        zero = _sample_indices(sq_norm == 0, batched=x.dim() == 3)
        if zero:
            raise ValueError(
                f"sample(s) {zero} of features are all zeros, which have no direction under kernel='cosine'; "
                "drop them or use kernel='linear'"
            )
        inv_norm = sq_norm.rsqrt()
        similarity = gram * inv_norm[:, :, None] * inv_norm[:, None, :]
    else:
        mean_sq_norm = sq_norm.mean(-1)
        if (mean_sq_norm == 0).any():
            groups = torch.nonzero(mean_sq_norm == 0).flatten().tolist()
            where = f"group(s) {groups} of features are" if x.dim() == 3 else "features are"
            raise ValueError(f"{where} all zeros, which the linear kernel cannot normalise")
        similarity = gram / mean_sq_norm[:, None, None]

    lam = torch.linalg.eigvalsh(similarity / size)
    lam_max = lam[:, -1:].clamp_min(torch.finfo(torch.float64).tiny)
    lam = torch.where(lam > size * torch.finfo(torch.float64).eps * lam_max, lam, torch.zeros_like(lam))
    if q == 1.0:
        score = torch.exp(-torch.xlogy(lam, lam).sum(-1))
    elif math.isinf(q):
        score = 1.0 / lam_max[:, 0]
    else:
        # (sum lam^q)^(1/(1-q)) factored through max(lam), so large q neither underflows nor overflows
        ratio_sum = ((lam / lam_max) ** q).sum(-1)
        score = torch.exp((q * torch.log(lam_max[:, 0]) + torch.log(ratio_sum)) / (1.0 - q))
    return score if x.dim() == 3 else score[0]


def mean_pairwise_distance(features: torch.Tensor) -> torch.Tensor:
    """Mean Euclidean distance ``2 / (N (N - 1)) sum_{i < j} |x_i - x_j|`` of a set [N, D] or each set of [G, N, D].

    Args:
        features: [N, D] or [G, N, D], real dtype, finite; N >= 2.

    Returns:
        float64: a 0-d tensor for [N, D], [G] for [G, N, D]; on the features' device.

    Example:
        >>> mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]]))
        tensor(5., dtype=torch.float64)
    """
    x = _check_features(features, "features", batched=True, min_samples=2)
    batch = x if x.dim() == 3 else x.unsqueeze(0)
    size = batch.shape[1]
    # the direct difference, not the |a|^2 + |b|^2 - 2 a.b shortcut that loses digits for close samples
    distances = torch.cdist(batch, batch, compute_mode="donot_use_mm_for_euclid_dist")
    upper = torch.triu_indices(size, size, offset=1, device=x.device)
    mean = distances[:, upper[0], upper[1]].mean(-1)
    return mean if x.dim() == 3 else mean[0]


def fidelity(labels: torch.Tensor, requested: torch.Tensor | int) -> float:
    """Share of samples whose classified label equals the requested one: ``mean_i [labels_i == requested_i]``.

    Args:
        labels: predicted labels [N] (integer dtype), N >= 1.
        requested: one label for every sample (int), or one per sample (integer tensor [N]).

    Returns:
        The share in [0, 1].

    Example:
        >>> fidelity(torch.tensor([3, 3, 5, 3]), 3)
        0.75
    """
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.numel() == 0:
        got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"labels must be a non-empty 1-D tensor [N], got {got}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    if isinstance(requested, torch.Tensor):
        if requested.shape != labels.shape:
            raise ValueError(
                f"requested must be an int or a tensor shaped like labels {tuple(labels.shape)}, "
                f"got shape {tuple(requested.shape)}"
            )
        if requested.dtype.is_floating_point or requested.dtype.is_complex or requested.dtype == torch.bool:
            raise TypeError(f"requested must have an integer dtype, got {requested.dtype}")
        requested = requested.to(labels.device)
    elif isinstance(requested, bool) or not isinstance(requested, int):
        raise TypeError(f"requested must be an int or an integer tensor, got {type(requested).__name__}")
    return (labels == requested).double().mean().item()


def kid(
    features_a: torch.Tensor,
    features_b: torch.Tensor,
    degree: int = 3,
    gamma: float | None = None,
    coef: float = 1.0,
    subsets: int = 100,
    subset_size: int = 1000,
    generator: torch.Generator | None = None,
) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD^2 between two feature sets, mean and std over random subsets.

    With ``k(x, y) = (gamma <x, y> + coef)^degree``, each subset of m rows of a and n rows of b gives

        MMD^2 = sum_{i != j} k(a_i, a_j) / (m (m - 1)) + sum_{i != j} k(b_i, b_j) / (n (n - 1))
                - 2 sum_{i, j} k(a_i, b_j) / (m n)

    Subsets: each takes ``min(subset_size, N_a)`` rows of a and ``min(subset_size, N_b)`` of b, drawn
    without replacement, independently for the two sets. A set no larger than `subset_size` is used
    whole in every subset; if both are, every subset would be the same, so the estimate is computed
    once on all samples and the std is 0. The std is the population std (ddof 0) over the subsets,
    as in Binkowski et al.'s code. The estimate is unbiased, so it can be slightly negative.

    Args:
        features_a: [N_a, D], real dtype, finite; N_a >= 2.
        features_b: [N_b, D], same D; N_b >= 2.
        degree: kernel degree, a positive int. Default 3.
        gamma: kernel scale, > 0. Default 1 / D.
        coef: kernel offset, finite. Default 1.
        subsets: number of random subsets, >= 1. Default 100.
        subset_size: rows per subset and set, >= 2. Default 1000.
        generator: source of the subset draws (a CPU generator). Default: a fresh one seeded with 0,
            so the result is reproducible and leaves the global random state alone.

    Returns:
        (mean, std) of MMD^2 over the subsets.

    Example:
        >>> a = torch.randn(200, 16)
        >>> mean, std = kid(a, a + 1.0, subsets=10, subset_size=100)
        >>> mean > 0.1
        True
    """
    a, b = _check_pair(features_a, features_b)
    if isinstance(degree, bool) or not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be a positive int, got {degree!r}")
    if gamma is None:
        gamma = 1.0 / a.shape[1]
    if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a finite number > 0 or None, got {gamma!r}")
    if isinstance(coef, bool) or not isinstance(coef, (int, float)) or not math.isfinite(coef):
        raise ValueError(f"coef must be a finite number, got {coef!r}")
    if isinstance(subsets, bool) or not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"subsets must be a positive int, got {subsets!r}")
    if isinstance(subset_size, bool) or not isinstance(subset_size, int) or subset_size < 2:
        raise ValueError(f"subset_size must be an int >= 2, got {subset_size!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)

    def kernel(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (gamma * (x @ y.T) + coef) ** degree

    def mmd2(x: torch.Tensor, y: torch.Tensor) -> float:
        m, n = x.shape[0], y.shape[0]
        k_xx, k_yy = kernel(x, x), kernel(y, y)
        within_x = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
        within_y = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
        return (within_x + within_y - 2.0 * kernel(x, y).mean()).item()

    size_a, size_b = min(subset_size, a.shape[0]), min(subset_size, b.shape[0])
    if size_a == a.shape[0] and size_b == b.shape[0]:
        return mmd2(a, b), 0.0

    def draw(x: torch.Tensor, size: int) -> torch.Tensor:
        if size == x.shape[0]:
            return x
        return x[torch.randperm(x.shape[0], generator=generator)[:size].to(x.device)]

    scores = torch.tensor([mmd2(draw(a, size_a), draw(b, size_b)) for _ in range(subsets)], dtype=torch.float64)
    return scores.mean().item(), scores.std(correction=0).item()


def fid(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to two feature sets [N_a, D] and [N_b, D].

        FID = |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a^{1/2} S_b S_a^{1/2})^{1/2})

    with the sample means mu and covariances S (divisor N - 1). Both square roots are the symmetric
    PSD ones, from ``torch.linalg.eigh`` with negative eigenvalues (rounding) set to 0, so singular
    covariances (N <= D) are fine. A result below 0 by rounding is returned as 0.

    Args:
        features_a: [N_a, D], real dtype, finite; N_a >= 2.
        features_b: [N_b, D], same D; N_b >= 2.

    Returns:
        The distance, >= 0.

    Example:
        >>> a = torch.randn(500, 4)
        >>> fid(a, a) < 1e-9
        True
    """
    a, b = _check_pair(features_a, features_b)
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = _covariance(a, mean_a), _covariance(b, mean_b)
    eig_a, vec_a = torch.linalg.eigh(cov_a)
    sqrt_a = (vec_a * eig_a.clamp_min(0).sqrt()) @ vec_a.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + cov_a.trace() + cov_b.trace() - 2.0 * trace_sqrt
    return max(distance.item(), 0.0)


def _covariance(x: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    centred = x - mean
    return centred.T @ centred / (x.shape[0] - 1)


def _check_order(q: float) -> float:
    if isinstance(q, bool) or not isinstance(q, (int, float)) or math.isnan(q) or q <= 0:
        raise ValueError(f"q must be a number > 0 (math.inf allowed), got {q!r}")
    return float(q)


def _check_pair(features_a: torch.Tensor, features_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two feature sets [N_a, D] and [N_b, D] of at least two samples each, checked, in float64."""
    a = _check_features(features_a, "features_a", batched=False, min_samples=2)
    b = _check_features(features_b, "features_b", batched=False, min_samples=2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"features_a and features_b must have the same feature count D, got {a.shape[1]} and {b.shape[1]}"
        )
    return a, b


def _check_features(features: torch.Tensor, name: str, *, batched: bool, min_samples: int) -> torch.Tensor:
    """The features as float64, after checking type, shape [N, D] (or [G, N, D] if batched) and finiteness."""
    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if features.dtype.is_complex or features.dtype == torch.bool:
        raise TypeError(f"{name} must have a real dtype, got {features.dtype}")
    dims = (2, 3) if batched else (2,)
    layout = "[N, D] or [G, N, D]" if batched else "[N, D]"
    if features.dim() not in dims:
        raise ValueError(f"{name} must have shape {layout}, got {tuple(features.shape)}")
    if features.shape[-2] < min_samples or features.shape[-1] < 1:
        raise ValueError(
            f"{name} must have shape {layout} with N >= {min_samples} and D >= 1, got {tuple(features.shape)}"
        )
    x = features.detach().to(torch.float64)
    bad = _sample_indices(~torch.isfinite(x).all(-1), batched=x.dim() == 3)
    if bad:
        raise ValueError(f"{name} has NaN or Inf values in sample(s) {bad}; the metrics need finite features")
    return x


def _sample_indices(mask: torch.Tensor, *, batched: bool) -> list:
    """Where a per-sample mask [N] or [G, N] is set: sample indices, or (group, sample) pairs if batched."""
    where = torch.nonzero(mask).tolist()
    return [tuple(index) for index in where] if batched else [index[-1] for index in where]
