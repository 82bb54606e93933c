"""fastrepulse.eval against closed forms: sets whose eigenvalues, distances or moments are known exactly.

No metric is compared to itself: every expected value comes from a construction with known answer
(orthogonal or identical samples, exact empirical moments) or from the definition written out in loops.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from fastrepulse.eval import fid, fidelity, kid, mean_pairwise_distance, vendi

ORDERS = [0.5, 1.0, 2.0, 3.5, math.inf]
ORDER_IDS = ["q0.5", "q1", "q2", "q3.5", "qinf"]


def assert_close(actual: float | torch.Tensor, expected: float, tol: float, label: str) -> None:
    """|actual - expected| <= tol * max(1, |expected|), with both values in the message."""
    actual = float(actual)
    error = abs(actual - expected)
    assert error <= tol * max(1.0, abs(expected)), f"{label}: got {actual!r}, expected {expected!r} (error {error:.3e})"


def score_from_eigenvalues(lam: list[float], q: float) -> float:
    """The Vendi score from known eigenvalues of rho, by its definition."""
    lam = [value for value in lam if value > 0]
    if q == 1.0:
        return math.exp(-sum(value * math.log(value) for value in lam))
    if math.isinf(q):
        return 1.0 / max(lam)
    return sum(value**q for value in lam) ** (1.0 / (1.0 - q))


def orthonormal_rows(count: int, dim: int) -> torch.Tensor:
    """[count, dim] with orthonormal rows, count <= dim, in a random orientation."""
    return torch.linalg.qr(torch.randn(dim, count, dtype=torch.float64)).Q.T


def recoloured(count: int, mean: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """count samples [count, D] whose empirical mean and covariance (divisor count - 1) are exactly the given ones."""
    z = torch.randn(count, mean.shape[0], dtype=torch.float64)
    z = z - z.mean(0)
    # whiten with the Cholesky factor of the sample covariance, then colour with that of the target
    chol_sample = torch.linalg.cholesky(z.T @ z / (count - 1))
    white = torch.linalg.solve_triangular(chol_sample, z.T, upper=False).T
    return white @ torch.linalg.cholesky(covariance).T + mean


# ---------------------------------------------------------------------------------------------- vendi


@pytest.mark.parametrize("q", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("count", [1, 2, 5, 16], ids=lambda n: f"N{n}")
def test_vendi_of_identical_samples_is_one(count, q):
    x = torch.randn(1, 7).repeat(count, 1)
    assert_close(vendi(x, q=q), 1.0, 1e-10, f"N={count} copies, q={q}")
    assert_close(vendi(x, q=q, kernel="linear"), 1.0, 1e-10, f"N={count} copies, linear, q={q}")


@pytest.mark.parametrize("q", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("count, dim", [(2, 2), (4, 9), (8, 8), (13, 40)], ids=lambda v: str(v))
def test_vendi_of_orthogonal_samples_is_their_count(count, dim, q):
    rows = orthonormal_rows(count, dim)
    scaled = rows * torch.rand(count, 1, dtype=torch.float64).add(0.1) * 50.0  # cosine ignores each sample's norm
    assert_close(vendi(scaled, q=q), count, 1e-10, f"{count} orthogonal rows, cosine, q={q}")
    assert_close(vendi(rows, q=q, kernel="linear"), count, 1e-10, f"{count} orthonormal rows, linear, q={q}")


@pytest.mark.parametrize("q", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("cosine", [-1.0, -0.6, 0.0, 0.3, 0.9, 0.999])
def test_vendi_of_two_samples_at_a_known_angle(cosine, q):
    # K = [[1, c], [c, 1]], so rho = K / 2 has eigenvalues (1 + c) / 2 and (1 - c) / 2
    basis = orthonormal_rows(2, 5)
    x = torch.stack([3.0 * basis[0], 0.2 * (cosine * basis[0] + math.sqrt(1.0 - cosine**2) * basis[1])])
    lam = [(1.0 + cosine) / 2.0, (1.0 - cosine) / 2.0]
    assert_close(vendi(x, q=q), score_from_eigenvalues(lam, q), 1e-10, f"c={cosine}, q={q}")
    if q == 2.0:
        assert_close(vendi(x, q=q), 2.0 / (1.0 + cosine**2), 1e-10, f"c={cosine}, q=2 closed form")


@pytest.mark.parametrize("q", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("clusters, size", [(1, 4), (2, 3), (3, 4), (5, 2)], ids=lambda v: str(v))
def test_vendi_of_equal_orthogonal_clusters_is_their_count(clusters, size, q):
    # rho is block diagonal with k blocks of 1 1^T / N: eigenvalues 1/k (k times), so every order gives k
    directions = orthonormal_rows(clusters, 6)
    x = directions.repeat_interleave(size, dim=0) * torch.rand(clusters * size, 1, dtype=torch.float64).add(0.5)
    x = x[torch.randperm(clusters * size)]
    assert_close(vendi(x, q=q), clusters, 1e-10, f"{clusters} clusters of {size}, q={q}")


@pytest.mark.parametrize("q", ORDERS, ids=ORDER_IDS)
def test_vendi_linear_weighs_samples_by_squared_norm(q):
    # orthogonal rows of norms r_i: rho = diag(r_i^2) / sum r^2
    norms = [0.5, 1.0, 2.0, 3.0]
    x = orthonormal_rows(4, 6) * torch.tensor(norms, dtype=torch.float64)[:, None]
    total = sum(r**2 for r in norms)
    expected = score_from_eigenvalues([r**2 / total for r in norms], q)
    assert_close(vendi(x, q=q, kernel="linear"), expected, 1e-10, f"linear, norms {norms}, q={q}")
    assert_close(vendi(17.0 * x, q=q, kernel="linear"), expected, 1e-10, f"linear, rescaled set, q={q}")


@pytest.mark.parametrize("count, dim", [(7, 4), (5, 12)], ids=["N7-D4", "N5-D12"])
def test_vendi_order_two_is_count_squared_over_frobenius_norm(count, dim):
    x = torch.randn(count, dim, dtype=torch.float64)
    unit = x / x.norm(dim=1, keepdim=True)
    similarity = unit @ unit.T
    expected = count**2 / similarity.square().sum().item()
    assert_close(vendi(x, q=2.0), expected, 1e-10, f"N={count}, D={dim}")


@pytest.mark.parametrize("kernel", ["cosine", "linear"])
def test_vendi_is_invariant_to_sample_order_and_cosine_to_sample_scale(kernel):
    x = torch.randn(9, 5, dtype=torch.float64)
    for q in ORDERS:
        base = vendi(x, q=q, kernel=kernel).item()
        assert_close(vendi(x[torch.randperm(9)], q=q, kernel=kernel), base, 1e-10, f"permuted, q={q}")
        if kernel == "cosine":
            scaled = x * torch.rand(9, 1, dtype=torch.float64).mul(100.0).add(1e-3)
            assert_close(vendi(scaled, q=q, kernel=kernel), base, 1e-10, f"rows rescaled, q={q}")


def test_vendi_is_in_range_decreases_with_order_and_is_continuous_at_one():
    x = torch.randn(10, 6, dtype=torch.float64)
    scores = [vendi(x, q=q).item() for q in [0.25, 0.5, 1.0, 2.0, 3.5, 10.0, 200.0, math.inf]]
    assert all(1.0 <= s <= 10.0 for s in scores), scores
    assert all(a >= b - 1e-12 for a, b in zip(scores, scores[1:], strict=False)), scores
    at_one = vendi(x, q=1.0).item()
    assert_close(vendi(x, q=1.0 + 1e-7), at_one, 1e-5, "q -> 1 from above")
    assert_close(vendi(x, q=1.0 - 1e-7), at_one, 1e-5, "q -> 1 from below")


@pytest.mark.parametrize("q", ORDERS, ids=ORDER_IDS)
@pytest.mark.parametrize("kernel", ["cosine", "linear"])
def test_vendi_of_a_batch_is_one_score_per_group(kernel, q):
    # groups of 4 unit rows with known answers, batched: 4 copies, 2 orthogonal pairs, 4 orthogonal, 2 at cosine c
    basis, cosine = orthonormal_rows(4, 6), 0.3
    tilted = cosine * basis[0] + math.sqrt(1.0 - cosine**2) * basis[1]
    groups = [basis[[0, 0, 0, 0]], basis[[0, 1, 1, 0]], basis, torch.stack([basis[0], basis[0], tilted, tilted])]
    expected = [1.0, 2.0, 4.0, score_from_eigenvalues([(1.0 + cosine) / 2.0, (1.0 - cosine) / 2.0], q)]
    batched = vendi(torch.stack(groups), q=q, kernel=kernel)
    assert batched.shape == (4,)
    for group, score in enumerate(expected):
        assert_close(batched[group], score, 1e-10, f"group {group}, {kernel}, q={q}")


def test_vendi_returns_float64_and_accepts_float32_and_integer_features():
    x = torch.randn(6, 8, dtype=torch.float64)
    score = vendi(x)
    assert score.dtype == torch.float64 and score.shape == ()
    assert_close(vendi(x.float()), score.item(), 1e-5, "float32 features")
    assert_close(vendi(torch.eye(4, dtype=torch.int64)), 4.0, 1e-12, "int64 identity")


# ------------------------------------------------------------------------------------ mean pairwise distance


@pytest.mark.parametrize("count, dim", [(2, 3), (5, 1), (9, 7)], ids=["N2-D3", "N5-D1", "N9-D7"])
def test_mean_pairwise_distance_matches_a_double_loop(count, dim):
    x = torch.randn(count, dim, dtype=torch.float64) * 3.0
    rows = x.tolist()
    pairs = [math.dist(rows[i], rows[j]) for i in range(count) for j in range(i + 1, count)]
    assert_close(mean_pairwise_distance(x), sum(pairs) / len(pairs), 1e-12, f"N={count}, D={dim}")


def test_mean_pairwise_distance_of_a_batch_and_of_close_samples():
    x = torch.randn(3, 4, 5, dtype=torch.float64)
    batched = mean_pairwise_distance(x)
    assert batched.shape == (3,)
    for group in range(3):
        rows = x[group].tolist()
        pairs = [math.dist(rows[i], rows[j]) for i in range(4) for j in range(i + 1, 4)]
        assert_close(batched[group], sum(pairs) / 6, 1e-12, f"group {group}")
    # 3-4-5 triangles far from the origin: exact only without the |a|^2 + |b|^2 - 2 a.b shortcut
    far = torch.tensor([[1e6, 1e6], [1e6 + 3e-4, 1e6 + 4e-4]], dtype=torch.float64)
    assert_close(mean_pairwise_distance(far), 5e-4, 1e-6, "close samples far from the origin")


# ------------------------------------------------------------------------------------------------ fidelity


def test_fidelity_counts_the_requested_labels():
    labels = torch.tensor([7, 1, 7, 7, 2, 7, 0, 7])
    assert fidelity(labels, 7) == 5 / 8
    assert fidelity(labels, 3) == 0.0
    assert fidelity(torch.tensor([4]), 4) == 1.0
    requested = torch.tensor([7, 1, 0, 7, 2, 1, 0, 3])
    assert fidelity(labels, requested) == 5 / 8


def test_fidelity_refuses_bad_labels():
    with pytest.raises(ValueError, match=r"labels must be a non-empty 1-D tensor \[N\], got \(2, 2\)"):
        fidelity(torch.zeros(2, 2, dtype=torch.int64), 0)
    with pytest.raises(ValueError, match=r"labels must be a non-empty 1-D tensor"):
        fidelity(torch.zeros(0, dtype=torch.int64), 0)
    with pytest.raises(TypeError, match=r"labels must have an integer dtype, got torch.float32"):
        fidelity(torch.zeros(3), 0)
    with pytest.raises(ValueError, match=r"requested must be an int or a tensor shaped like labels \(3,\)"):
        fidelity(torch.zeros(3, dtype=torch.int64), torch.zeros(4, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"requested must be an int or an integer tensor, got float"):
        fidelity(torch.zeros(3, dtype=torch.int64), 1.0)


# ----------------------------------------------------------------------------------------------------- kid


def kid_by_loops(a: torch.Tensor, b: torch.Tensor, degree: int, gamma: float, coef: float) -> float:
    """The unbiased MMD^2 from its definition, one kernel evaluation at a time."""
    rows_a, rows_b = a.tolist(), b.tolist()

    def k(x, y):
        return (gamma * sum(u * v for u, v in zip(x, y, strict=True)) + coef) ** degree

    m, n = len(rows_a), len(rows_b)
    within_a = sum(k(rows_a[i], rows_a[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    within_b = sum(k(rows_b[i], rows_b[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    across = sum(k(x, y) for x in rows_a for y in rows_b) / (m * n)
    return within_a + within_b - 2.0 * across


@pytest.mark.parametrize(
    "degree, gamma, coef", [(3, None, 1.0), (2, 0.7, 0.5), (1, 1.3, 0.0)], ids=["default", "deg2", "linear"]
)
def test_kid_on_small_sets_is_the_unbiased_mmd_of_all_samples(degree, gamma, coef):
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64) + 0.5
    mean, std = kid(a, b, degree=degree, gamma=gamma, coef=coef)
    expected = kid_by_loops(a, b, degree, 1.0 / 3 if gamma is None else gamma, coef)
    assert_close(mean, expected, 1e-12, f"degree={degree}, gamma={gamma}, coef={coef}")
    assert std == 0.0
    assert_close(kid(b, a, degree=degree, gamma=gamma, coef=coef)[0], expected, 1e-12, "swapped sets")


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shift():
    # at this size the estimate's spread under one distribution is about 0.01 (200 seeds), the shift's value about 1.1
    source = torch.Generator().manual_seed(0)
    a, b = (torch.randn(400, 8, dtype=torch.float64, generator=source) for _ in range(2))
    same, _ = kid(a, b)
    shifted, _ = kid(a, b + 0.5)
    assert shifted > 0.5, shifted
    assert abs(same) < 0.1 * shifted, (same, shifted)


def test_kid_over_subsets_is_reproducible_and_leaves_the_global_generator_alone():
    a, b = torch.randn(60, 4, dtype=torch.float64), torch.randn(50, 4, dtype=torch.float64) + 0.3
    state = torch.get_rng_state()
    first = kid(a, b, subsets=5, subset_size=20)
    assert torch.equal(torch.get_rng_state(), state)
    assert kid(a, b, subsets=5, subset_size=20) == first
    seeded = kid(a, b, subsets=5, subset_size=20, generator=torch.Generator().manual_seed(3))
    assert seeded == kid(a, b, subsets=5, subset_size=20, generator=torch.Generator().manual_seed(3))
    assert seeded != first  # the generator draws the subsets (the default one is seeded with 0)
    assert first[1] > 0.0 and seeded[1] > 0.0


def test_kid_over_subsets_of_constant_sets_is_the_closed_form():
    # every subset of copies of u and v gives k(u, u) + k(v, v) - 2 k(u, v), with no spread
    u, v = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64), torch.tensor([0.5, 0.0, 3.0], dtype=torch.float64)

    def k(x, y):
        return (x.dot(y).item() / 3.0 + 1.0) ** 3

    mean, std = kid(u.repeat(30, 1), v.repeat(12, 1), subsets=4, subset_size=10)
    assert_close(mean, k(u, u) + k(v, v) - 2.0 * k(u, v), 1e-12, "constant sets")
    assert std <= 1e-12


# ----------------------------------------------------------------------------------------------------- fid


def test_fid_of_a_set_with_itself_is_zero():
    a = torch.randn(300, 6, dtype=torch.float64) * 3.0 + 1.0
    scale = 2.0 * torch.cov(a.T).trace().item()
    assert fid(a, a) <= 1e-6 * scale
    singular = torch.randn(3, 10, dtype=torch.float64)  # N <= D: singular covariances
    assert fid(singular, singular) <= 1e-6 * torch.cov(singular.T).trace().item()


@pytest.mark.parametrize("dim", [1, 3, 8])
def test_fid_of_diagonal_gaussians_is_the_closed_form(dim):
    mean_a, mean_b = torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64) * 2.0
    var_a, var_b = torch.rand(dim, dtype=torch.float64) + 0.1, torch.rand(dim, dtype=torch.float64) * 4.0 + 0.1
    a = recoloured(200, mean_a, torch.diag(var_a))
    b = recoloured(150, mean_b, torch.diag(var_b))
    expected = (mean_a - mean_b).square().sum().item() + (var_a.sqrt() - var_b.sqrt()).square().sum().item()
    assert_close(fid(a, b), expected, 1e-8, f"diagonal, D={dim}")


def test_fid_of_full_covariances_is_the_closed_form():
    # tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}) = sum_k sqrt(eig_k(S_a S_b)): the product's eigenvalues, no square roots
    dim = 5
    factor_a, factor_b = torch.randn(dim, dim, dtype=torch.float64), torch.randn(dim, dim, dtype=torch.float64)
    cov_a = factor_a @ factor_a.T + 0.1 * torch.eye(dim, dtype=torch.float64)
    cov_b = factor_b @ factor_b.T + 0.1 * torch.eye(dim, dtype=torch.float64)
    mean_a, mean_b = torch.randn(dim, dtype=torch.float64), torch.randn(dim, dtype=torch.float64)
    a, b = recoloured(100, mean_a, cov_a), recoloured(80, mean_b, cov_b)
    product_eigenvalues = torch.linalg.eigvals(cov_a @ cov_b)
    assert product_eigenvalues.imag.abs().max() < 1e-8
    trace_sqrt = product_eigenvalues.real.sqrt().sum().item()
    expected = (mean_a - mean_b).square().sum().item() + (cov_a.trace() + cov_b.trace()).item() - 2.0 * trace_sqrt
    assert_close(fid(a, b), expected, 1e-8, "full covariances")
    assert_close(fid(b, a), expected, 1e-8, "full covariances, swapped")


# -------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("q", [0, 0.0, -1.0, math.nan, True], ids=["int0", "0.0", "-1", "nan", "bool"])
def test_vendi_refuses_bad_orders(q):
    with pytest.raises(ValueError, match=r"q must be a number > 0"):
        vendi(torch.randn(3, 2), q=q)


def test_vendi_refuses_unknown_kernels():
    with pytest.raises(ValueError, match=r"kernel must be one of \('cosine', 'linear'\), got 'rbf'"):
        vendi(torch.randn(3, 2), kernel="rbf")


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_features_are_named(bad):
    x = torch.randn(5, 3)
    x[3, 1] = bad
    with pytest.raises(ValueError, match=r"features has NaN or Inf values in sample\(s\) \[3\]"):
        vendi(x)
    with pytest.raises(ValueError, match=r"features has NaN or Inf values in sample\(s\) \[3\]"):
        mean_pairwise_distance(x)
    with pytest.raises(ValueError, match=r"features_b has NaN or Inf values in sample\(s\) \[3\]"):
        kid(torch.randn(5, 3), x)
    with pytest.raises(ValueError, match=r"features_a has NaN or Inf values in sample\(s\) \[3\]"):
        fid(x, torch.randn(5, 3))
    batch = torch.randn(2, 4, 3)
    batch[1, 2, 0] = bad
    with pytest.raises(ValueError, match=r"sample\(s\) \[\(1, 2\)\]"):
        vendi(batch)


def test_zero_samples_under_cosine_are_named():
    x = torch.randn(4, 3)
    x[2] = 0.0
    with pytest.raises(ValueError, match=r"sample\(s\) \[2\] of features are all zeros.*kernel='linear'"):
        vendi(x)
    assert 1.0 <= vendi(x, kernel="linear").item() <= 4.0
    batch = torch.randn(3, 4, 3)
    batch[1, 0] = 0.0
    with pytest.raises(ValueError, match=r"sample\(s\) \[\(1, 0\)\] of features are all zeros"):
        vendi(batch)
    with pytest.raises(ValueError, match=r"features are all zeros, which the linear kernel cannot normalise"):
        vendi(torch.zeros(3, 2), kernel="linear")
    with pytest.raises(ValueError, match=r"group\(s\) \[1\] of features are all zeros"):
        vendi(torch.stack([torch.ones(3, 2), torch.zeros(3, 2)]), kernel="linear")


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4, 5), (0, 3), (4, 0)], ids=["1d", "4d", "no-samples", "no-features"])
def test_bad_feature_shapes_are_refused(shape):
    with pytest.raises(
        ValueError, match=r"features must have shape \[N, D\] or \[G, N, D\].*got " + re.escape(str(shape))
    ):
        vendi(torch.ones(shape))
    with pytest.raises(ValueError, match=r"features_a must have shape \[N, D\]"):
        fid(torch.ones(shape), torch.ones(3, 2))


def test_too_few_samples_or_mismatched_features_are_refused():
    with pytest.raises(ValueError, match=r"features must have shape .* with N >= 2 and D >= 1, got \(1, 3\)"):
        mean_pairwise_distance(torch.ones(1, 3))
    with pytest.raises(ValueError, match=r"features_b must have shape \[N, D\] with N >= 2"):
        fid(torch.randn(4, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"features_a must have shape \[N, D\], got \(2, 4, 3\)"):
        kid(torch.randn(2, 4, 3), torch.randn(4, 3))
    with pytest.raises(ValueError, match=r"same feature count D, got 3 and 4"):
        kid(torch.randn(4, 3), torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"same feature count D, got 3 and 4"):
        fid(torch.randn(4, 3), torch.randn(4, 4))
    with pytest.raises(TypeError, match=r"features must have a real dtype, got torch.complex64"):
        vendi(torch.ones(3, 2, dtype=torch.complex64))
    with pytest.raises(TypeError, match=r"features must be a torch.Tensor, got list"):
        vendi([[1.0, 0.0], [0.0, 1.0]])


@pytest.mark.parametrize(
    "option, message",
    [
        ({"degree": 0}, r"degree must be a positive int, got 0"),
        ({"gamma": -1.0}, r"gamma must be a finite number > 0 or None, got -1.0"),
        ({"coef": math.inf}, r"coef must be a finite number, got inf"),
        ({"subsets": 0}, r"subsets must be a positive int, got 0"),
        ({"subset_size": 1}, r"subset_size must be an int >= 2, got 1"),
    ],
    ids=["degree", "gamma", "coef", "subsets", "subset_size"],
)
def test_kid_refuses_bad_options(option, message):
    with pytest.raises(ValueError, match=message):
        kid(torch.randn(4, 3), torch.randn(4, 3), **option)
