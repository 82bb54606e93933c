"""The device solver (kernels/solve.py) against the host solver and, inside repel, the float64 oracle.

On the CPU the kernel runs in Triton's interpreter, which is slow, so iterations stay small here; the
CUDA cases (run by bench/gpu_check.sh with `-k cuda`) use the full 50.
"""

import functools

import numpy as np
import pytest
import torch
from oracle import assert_matches_oracle, literal_loop
from test_repel_parity import DEVICES, PAIRS, calibrated_scale, prompt_like

from fastrepulse import repel
from fastrepulse.forces import rbf_bandwidth
from fastrepulse.kernels.solve import MAX_GROUP, NON_FINITE, NOT_CONVERGED, SOLVED, solve_on_device
from fastrepulse.solver import solve

SOLVER_TOLERANCE = 1e-11
"""Relative error of P - I against the host: both float64, eigh by LAPACK vs by Jacobi sweeps. Measured over four
seeds: at most 1.0e-12 (vendi-rbf, whose update is small: exp rounded by libdevice and by NumPy), 4e-15 on one
prompt's samples; an eigenvalue floor rounded to float32 moves P - I there by 1e-10 .. 2e-9."""


def prompt_grams(groups: int, size: int) -> torch.Tensor:
    samples = torch.randn(groups, 1, 512, dtype=torch.float64) + 0.6 * torch.randn(groups, size, 512)
    return samples @ samples.mT


def host_and_device(gram: torch.Tensor, scale: float, iterations: int, objective: str, kernel: str):
    bandwidth = torch.from_numpy(rbf_bandwidth(gram.numpy()).reshape(-1)) if kernel == "rbf" else None
    expected = solve(gram, scale=scale, iterations=iterations, objective=objective, kernel=kernel)
    mix, status = solve_on_device(
        gram, scale=scale, iterations=iterations, objective=objective, kernel=kernel, bandwidth=bandwidth
    )
    return expected, mix, status


# (B, groups, iterations, objective, kernel): every pair at B 2-8; at B = 16 (the interpreter needs ~12 s
# for one Jacobi eigendecomposition from a cold start) the entropy with each kernel.
SOLVER_CASES = [
    (size, groups, iterations, *pair)
    for size, groups, iterations in [(2, 3, 4), (3, 1, 4), (5, 2, 3), (8, 1, 2)]
    for pair in PAIRS
]
SOLVER_CASES += [(16, 1, 1, "vendi", "cosine")]


@pytest.mark.parametrize(("size", "groups", "iterations", "objective", "kernel"), SOLVER_CASES)
def test_device_solver_matches_the_host_solver(size, groups, iterations, objective, kernel):
    gram = prompt_grams(groups, size)
    scale = 0.5 if kernel == "rbf" else 5.0
    expected, mix, status = host_and_device(gram, scale, iterations, objective, kernel)
    assert status.tolist() == [SOLVED] * groups
    error = ((mix - expected).norm() / expected.norm()).item()
    assert error <= SOLVER_TOLERANCE, f"B{size} G{groups} M{iterations} {objective}-{kernel}: P - I off by {error:.1e}"


def one_prompt_grams(groups: int, size: int, spread: float, dtype: torch.dtype) -> torch.Tensor:
    """Gram matrices [G, B, B] of one prompt's samples in an early block: a shared row plus `spread` of
    noise per sample (0: identical samples), |x|^2 of 1e8 to 1e12 as in random-weight models, rounded to
    `dtype`. Summed elementwise in float64, not by a BLAS: exactly symmetric, and exactly constant for
    identical rows, on every CPU (a float32 BLAS product is neither on some).
    """
    sq_norm = 10.0 ** (8.0 + 4.0 * torch.rand(groups, 1, 1, dtype=torch.float64))
    shared = torch.randn(groups, 1, 3072, dtype=torch.float64)
    rows = ((shared + spread * torch.randn(groups, size, 3072)) * (sq_norm / 3072).sqrt()).to(dtype).double()
    return (rows[:, :, None, :] * rows[:, None, :, :]).sum(-1)


# (B, iterations, spread, dtype, scale / |x|^2): identical samples (K = 1 1^T), and samples closer than
# RANK_TOLERANCE resolves (cosine 1 - 1e-14 .. 1 - 1e-24), which count as identical: the exact update is 0.
IDENTICAL_CASES = [
    (4, 1, 0.0, torch.bfloat16, 2.0),
    (9, 1, 0.0, torch.bfloat16, 2.0),
    (4, 3, 0.0, torch.bfloat16, 0.5),
    (4, 1, 1e-7, torch.float64, 2.0),
    (3, 2, 1e-12, torch.float64, 0.5),
]
# Samples apart by 1e-6 of their norm: resolved, with K's small eigenvalues under the floor. (Just above it, at
# 3e-6, or after a second step, P - I depends on their rounding: LAPACK's and Jacobi's answers differ by 1e-6.)
NEAR_CASES = [(4, 1, 1e-6, torch.float64, 2.0), (8, 1, 1e-6, torch.float64, 2.0), (3, 1, 1e-6, torch.float64, 0.5)]


def _degenerate_id(case) -> str:
    size, iterations, spread, dtype, _ = case
    return f"B{size}-M{iterations}-spread{spread:g}-{str(dtype)[6:]}"


@pytest.mark.parametrize(
    ("size", "iterations", "spread", "dtype", "relative_scale"),
    IDENTICAL_CASES,
    ids=[_degenerate_id(case) for case in IDENTICAL_CASES],
)
def test_identical_samples_are_left_as_they_are_by_both_solvers(size, iterations, spread, dtype, relative_scale):
    gram = one_prompt_grams(2, size, spread, dtype)
    scale = relative_scale * gram[:, 0, 0].min().item()
    host, device, status = host_and_device(gram, scale, iterations, "vendi", "cosine")
    assert status.tolist() == [SOLVED, SOLVED]
    for name, mix in (("host", host), ("device", device)):
        assert mix.abs().max() == 0, f"{name}: B{size} spread {spread:g}: |P - I| = {mix.abs().max():.1e}"


@pytest.mark.parametrize(
    ("size", "iterations", "spread", "dtype", "relative_scale"), NEAR_CASES, ids=[_degenerate_id(c) for c in NEAR_CASES]
)
def test_device_solver_matches_the_host_solver_on_one_prompts_samples(size, iterations, spread, dtype, relative_scale):
    gram = one_prompt_grams(2, size, spread, dtype)
    scale = relative_scale * gram[:, 0, 0].min().item()
    expected, mix, status = host_and_device(gram, scale, iterations, "vendi", "cosine")
    assert status.tolist() == [SOLVED, SOLVED]
    error = ((mix - expected).norm() / expected.norm()).item()
    assert error <= SOLVER_TOLERANCE, f"B{size} M{iterations} spread {spread:g}: P - I off by {error:.1e}"


def test_both_solvers_start_from_the_symmetric_part_of_the_gram():
    """A float32 BLAS Gram need not be symmetric (|G - G^T| up to 2.6e5 on entries near 1e10 on some CPUs)."""
    gram = prompt_grams(2, 5)
    skew = 3e-5 * gram.abs() * torch.randn_like(gram)
    scale = 2.0 * gram[:, 0, 0].min().item()
    expected, _, _ = host_and_device(gram, scale, 1, "vendi", "cosine")
    host, device, status = host_and_device(gram + skew - skew.mT, scale, 1, "vendi", "cosine")
    assert status.tolist() == [SOLVED, SOLVED]
    for name, mix in (("host", host), ("device", device)):
        error = ((mix - expected).norm() / expected.norm()).item()
        assert error <= SOLVER_TOLERANCE, f"{name} solver on a skewed Gram: P - I off by {error:.1e}"


def test_a_diverged_group_of_one_prompts_samples_is_flagged():
    gram = one_prompt_grams(1, 4, 1e-3, torch.bfloat16)
    options = {"scale": 1e200 * gram[0, 0, 0].item(), "iterations": 3, "objective": "vendi", "kernel": "cosine"}
    with np.errstate(all="ignore"):
        try:
            host_finite = bool(torch.isfinite(solve(gram, **options)).all())
        except np.linalg.LinAlgError:  # eigh on a non-finite state
            host_finite = False
    assert not host_finite
    assert solve_on_device(gram, **options)[1].tolist() == [NON_FINITE]


def test_a_jacobi_out_of_sweeps_is_its_own_status_and_repel_says_so(monkeypatch: pytest.MonkeyPatch):
    """One sweep from a cold start leaves a random 4 x 4 kernel far from diagonal: not converged, not success."""
    gram = prompt_grams(2, 4)
    options = {"scale": 5.0, "iterations": 1, "objective": "vendi", "kernel": "cosine"}
    assert solve_on_device(gram, max_sweeps=1, **options)[1].tolist() == [NOT_CONVERGED, NOT_CONVERGED]
    assert solve_on_device(gram, **options)[1].tolist() == [SOLVED, SOLVED]
    energy = {**options, "objective": "energy"}  # no eigendecomposition, nothing to converge
    assert solve_on_device(gram, max_sweeps=1, **energy)[1].tolist() == [SOLVED, SOLVED]

    import fastrepulse.kernels.solve as device_solver

    monkeypatch.setattr(device_solver, "MAX_SWEEPS", 1)
    monkeypatch.setattr(device_solver, "solve_on_device", functools.partial(solve_on_device, max_sweeps=1))
    x = prompt_like(4, (7, 33), torch.float32)
    original = x.clone()
    with pytest.raises(ValueError, match=r"did not converge in 1 Jacobi sweeps for group\(s\) \[0\]"):
        repel(x, scale=1.0, iterations=1, backend="triton", solver="device", out=x)
    assert torch.equal(x, original)


def test_a_non_finite_group_is_flagged_alone():
    gram = prompt_grams(3, 4)
    gram[1, 2, 2] = float("nan")
    options = {"scale": 5.0, "iterations": 3, "objective": "vendi", "kernel": "cosine"}
    mix, status = solve_on_device(gram, **options)
    healthy, healthy_status = solve_on_device(gram[[0, 2]], **options)
    assert status.tolist() == [SOLVED, NON_FINITE, SOLVED] and healthy_status.tolist() == [SOLVED, SOLVED]
    assert torch.equal(mix[[0, 2]], healthy)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("objective,kernel", PAIRS, ids=[f"{o}-{k}" for o, k in PAIRS])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(("size", "groups", "shape"), [(2, 2, (7, 33)), (4, 1, (1, 1000)), (5, 2, (7, 33))])
def test_repel_with_the_device_solver_matches_the_oracle(size, groups, shape, dtype, objective, kernel, device):
    iterations = 50 if device == "cuda" else 3
    x = prompt_like(size * groups, shape, dtype)
    scale = calibrated_scale(x, size, objective, kernel)
    expected = literal_loop(x, scale=scale, iterations=iterations, group_size=size, objective=objective, kernel=kernel)
    options = {"objective": objective, "kernel": kernel, "backend": "triton", "solver": "device"}
    result = repel(x.to(device), scale=scale, iterations=iterations, group_size=size, **options)
    label = f"{device} device-solver B{size} G{groups} {dtype} {objective}-{kernel}"
    assert_matches_oracle(result.cpu(), x, expected, size, label)


def test_device_solver_names_bad_samples_and_divergence():
    x = prompt_like(8, (7, 33), torch.float32)
    x[5, 3, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf .* sample\(s\) \[5\]"):
        repel(x, scale=1.0, iterations=2, group_size=4, backend="triton", solver="device")
    x[5, 3, 3] = 0.0
    original = x.clone()
    with pytest.raises(ValueError, match=r"diverged.*lower scale or raise iterations"):
        repel(x, scale=1e300, iterations=5, group_size=4, backend="triton", solver="device", out=x)
    assert torch.equal(x, original)
    with pytest.raises(ValueError, match=f"solver='device' takes groups of at most {MAX_GROUP} samples"):
        repel(torch.randn(2 * MAX_GROUP, 8), scale=1.0, backend="triton", solver="device")
    with pytest.raises(ValueError, match="solver must be one of"):
        repel(x, scale=1.0, solver="gpu")
