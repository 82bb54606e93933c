"""The device solver (kernels/solve.py) against the host solver and, inside repel, the float64 oracle.

On the CPU the kernel runs in Triton's interpreter, which is slow, so iterations stay small here; the
CUDA cases (run by bench/gpu_check.sh with `-k cuda`) use the full 50.
"""

import functools
import inspect
import sys

import numpy as np
import pytest
import torch
from oracle import assert_matches_oracle, literal_loop
from test_repel_parity import DEVICES, PAIRS, calibrated_scale, prompt_like
from triton.runtime.jit import _normalize_ty

from fastrepulse import repel
from fastrepulse.forces import force_matrix, rbf_bandwidth, ties
from fastrepulse.kernels import gram_partials
from fastrepulse.kernels.solve import MAX_GROUP, NON_FINITE, NOT_CONVERGED, SOLVED, _solve_kernel, solve_on_device
from fastrepulse.solver import solve

SOLVER_TOLERANCE = 1e-11
"""Relative error of P - I against the host: both float64, eigh by LAPACK vs by Jacobi sweeps. Measured over four
seeds: at most 1.0e-12 (vendi-rbf, whose update is small: exp rounded by libdevice and by NumPy), 4e-15 on one
prompt's samples; an eigenvalue floor rounded to float32 moves P - I there by 1e-10 .. 2e-9."""


def prompt_grams(groups: int, size: int) -> torch.Tensor:
    samples = torch.randn(groups, 1, 512, dtype=torch.float64) + 0.6 * torch.randn(groups, size, 512)
    return samples @ samples.mT


def host_and_device(gram: torch.Tensor, scale: float, iterations: int, objective: str, kernel: str):
    options = {"scale": scale, "iterations": iterations, "objective": objective, "kernel": kernel}
    mix, status = solve_on_device(gram, **options)  # rbf: the bandwidth computed in the kernel
    return solve(gram, **options), mix, status


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
        except (np.linalg.LinAlgError, ValueError):  # eigh on a non-finite state, or solve's check of the result
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


def relative_error(result: torch.Tensor, expected: torch.Tensor) -> float:
    return ((result - expected).norm() / expected.norm()).item()


def test_the_device_solver_adds_the_gram_partials_itself():
    x = prompt_like(8, (10, 100), torch.float32).reshape(8, -1)
    partials = gram_partials(x, 4)
    options = {"scale": 5.0, "iterations": 2, "objective": "energy", "kernel": "rbf"}
    assert partials.shape[:2] == (2, 8) and partials.dtype == torch.float32

    mix, status = solve_on_device(partials, **options)

    expected, expected_status = solve_on_device(partials.sum(1, dtype=torch.float64), **options)
    assert status.tolist() == expected_status.tolist() == [SOLVED, SOLVED]
    assert relative_error(mix, expected) <= 1e-13, f"P - I from partials off by {relative_error(mix, expected):.1e}"
    one_partial = solve_on_device(partials[:, :1], **options)[0]
    assert torch.equal(one_partial, solve_on_device(partials[:, 0], **options)[0])


def _samples(name: str) -> torch.Tensor:
    """Rows [B, 6] of one group: exact small integers, so that the squared distances (and their ties) are exact."""
    point = {
        "B2": [[0, 0], [1, 2]],
        "B3-isosceles": [[0, 0], [2, 0], [1, 3]],  # d = 4, 10, 10: the median is one of the tied pair
        "B4-identical": [[1, 2]] * 4,  # every d = 0: no length scale, h = inf
        "B4-three-identical": [[1, 2]] * 3 + [[4, 6]],  # d = 0, 0, 0, 25, 25, 25: h = (0 + 25) / 2 / log 4
        "B4-square": [[0, 0], [1, 0], [0, 1], [1, 1]],  # d = 1, 1, 1, 1, 2, 2
    }.get(name)
    if point is None:  # B5 and B16 at random: 10 and 120 pairs
        size = int(name[1:])
        return torch.randint(-4, 5, (size, 6)).to(torch.float64)
    rows = torch.tensor(point, dtype=torch.float64)
    return torch.cat([rows, torch.full((rows.shape[0], 4), 3.0, dtype=torch.float64)], dim=1)


BANDWIDTH_GROUPS = ["B2", "B3-isosceles", "B4-identical", "B4-three-identical", "B4-square", "B5", "B16"]


@pytest.mark.parametrize("name", BANDWIDTH_GROUPS)
def test_the_in_kernel_bandwidth_is_the_median_rule(name):
    """One energy step under rbf is P - I = step A W(G, h) A in closed form (`forces`), with h from
    `forces.rbf_bandwidth`: a wrong median (off by a rank, or not the mean of the middle two) is off by far more."""
    rows = _samples(name)
    gram = (rows @ rows.T)[None]
    step = 0.25

    mix, status = solve_on_device(gram, scale=step, iterations=1, objective="energy", kernel="rbf")

    state = gram.numpy()
    force = force_matrix(state, "energy", "rbf", rbf_bandwidth(state))
    tie = ties(state)
    expected = torch.from_numpy(step * (force if tie is None else tie @ force @ tie))
    assert status.tolist() == [SOLVED]
    if name == "B4-identical":
        assert np.isinf(rbf_bandwidth(state)).all() and mix.abs().max() == 0
        return
    error = relative_error(mix, expected)
    assert error <= SOLVER_TOLERANCE, f"{name}: P - I off by {error:.1e}"


def test_groups_of_one_launch_get_their_own_bandwidths():
    names = ("B4-identical", "B4-square", "B4-three-identical")
    gram = torch.stack([_samples(name) @ _samples(name).T for name in names])
    expected, mix, status = host_and_device(gram, 0.5, 2, "vendi", "rbf")
    assert status.tolist() == [SOLVED] * 3 and mix[0].abs().max() == 0
    assert relative_error(mix, expected) <= SOLVER_TOLERANCE


def test_the_step_arrives_in_float64():
    """scale / iterations = 1/3 is not a float32: a float32 step would put P - I off by ~1e-8 (a Python float
    argument is float32 to Triton unless annotated; the interpreter keeps it in float64 either way)."""
    assert _normalize_ty(inspect.signature(_solve_kernel.fn).parameters["step"].annotation) == "fp64"
    gram = prompt_grams(2, 3)
    expected, mix, status = host_and_device(gram, 1.0, 3, "energy", "cosine")
    assert status.tolist() == [SOLVED, SOLVED]
    assert relative_error(mix, expected) <= 1e-12


@pytest.fixture
def host_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Calls to host transfers, syncs and allocations made from fastrepulse's own frames (the interpreter's
    copies of the arguments are its own), as 'name from module'."""
    calls: list[str] = []

    def spy(name, original):
        def wrapper(*args, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("fastrepulse"):
                calls.append(f"{name} from {caller}")
            return original(*args, **kwargs)

        return wrapper

    for name in ("tensor", "as_tensor", "from_numpy", "empty", "empty_like", "zeros", "ones", "full"):
        monkeypatch.setattr(torch, name, spy(f"torch.{name}", getattr(torch, name)))
    for name in ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, spy(f"Tensor.{name}", getattr(torch.Tensor, name)))
    exec("torch.ones(1).item()", {"__name__": "fastrepulse.probe", "torch": torch})
    assert calls == ["torch.ones from fastrepulse.probe", "Tensor.item from fastrepulse.probe"], calls
    calls.clear()
    return calls


@pytest.mark.parametrize("kernel", ["cosine", "rbf"])
def test_the_device_solver_makes_no_host_transfer(host_calls, kernel):
    partials = gram_partials(prompt_like(6, (5, 40), torch.float32).reshape(6, -1), 3)
    host_calls.clear()

    solve_on_device(partials, scale=2.0, iterations=2, objective="energy", kernel=kernel)

    assert not [call for call in host_calls if not call.startswith(("torch.empty ", "torch.empty_like "))], host_calls


def test_the_device_solver_writes_into_given_workspaces_without_allocating(host_calls):
    gram = prompt_grams(2, 3)
    options = {"scale": 2.0, "iterations": 2, "objective": "energy", "kernel": "rbf"}
    out = torch.full((2, 3, 3), float("nan"), dtype=torch.float64)
    status = torch.full((2,), -1, dtype=torch.int32)
    host_calls.clear()

    mix, mix_status = solve_on_device(gram, out=out, status=status, **options)

    assert host_calls == []
    assert mix is out and mix_status is status
    expected, expected_status = solve_on_device(gram, **options)
    assert torch.equal(out, expected) and torch.equal(status, expected_status)


def test_workspaces_of_the_wrong_kind_are_refused():
    gram = prompt_grams(2, 3)
    options = {"scale": 2.0, "iterations": 1, "objective": "energy", "kernel": "cosine"}
    with pytest.raises(ValueError, match=r"out must be a contiguous torch.float64 tensor of shape \[2, 3, 3\]"):
        solve_on_device(gram, out=torch.empty(2, 3, 3), **options)
    with pytest.raises(ValueError, match=r"status must be a contiguous torch.int32 tensor of shape \[2\]"):
        solve_on_device(gram, status=torch.empty(2, dtype=torch.int64), **options)
    with pytest.raises(ValueError, match=r"\(strided\)"):
        solve_on_device(gram, out=torch.empty(3, 3, 2, dtype=torch.float64).permute(2, 0, 1), **options)
    with pytest.raises(ValueError, match=r"gram must be \[G, B, B\] or \[G, S, B, B\], got \(2, 3\)"):
        solve_on_device(gram[0, :2], **options)
