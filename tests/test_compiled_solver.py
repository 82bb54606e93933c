"""The compiled host solver (`fastrepulse.compiled_solver`, numba) against the NumPy reference (`solver.solve_numpy`).

Fresh inputs for every objective/kernel pair, B from 2 to 64 and 1 to 8 groups: P - I agrees to 1e-12 of its
largest element. Identical and collinear groups get the reference's exact zero update, and a batch where only
some groups have ties matches the reference too (the compiled loop averages over ties only where there are some).
"""

import subprocess
import sys

import numpy as np
import pytest
import torch

from fastrepulse import solver
from fastrepulse.forces import KERNELS, OBJECTIVES
from fastrepulse.status import BAD_SAMPLES, MAY_OVERFLOW, NON_FINITE, SOLVED

pytest.importorskip("numba")

PAIRS = [(objective, kernel) for objective in OBJECTIVES for kernel in KERNELS]
PAIR_IDS = [f"{objective}-{kernel}" for objective, kernel in PAIRS]
SIZES = (2, 3, 4, 8, 16, 33, 64)
TOLERANCE = 1e-12


def fresh_grams(groups: int, size: int, length: int = 96) -> torch.Tensor:
    """Gram matrices of prompt-like groups: a shared component plus per-sample noise, float64."""
    samples = torch.randn(groups, 1, length, dtype=torch.float64) + 0.6 * torch.randn(
        groups, size, length, dtype=torch.float64
    )
    return samples @ samples.mT


def _both(gram: torch.Tensor, **options) -> tuple[torch.Tensor, torch.Tensor]:
    compiled = solver.compiled_loop()
    assert compiled is not None, "numba imports, so the compiled loop must"
    got = solver.solve(gram, **options)
    expected = solver.solve_numpy(gram, **options)
    assert got.dtype == torch.float64 and got.shape == expected.shape
    return got, expected


def _assert_agrees(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert torch.isfinite(expected).all()
    scale = expected.abs().max().item()
    error = (got - expected).abs().max().item()
    assert error <= TOLERANCE * scale, f"max |compiled - numpy| = {error:.3g}, {error / scale:.3g} of max |P - I|"


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("objective,kernel", PAIRS, ids=PAIR_IDS)
def test_matches_numpy(objective, kernel, size):
    """Each (pair, B) gets a different group count, so together they cover 1 to 8 groups at every B."""
    groups = 1 + (SIZES.index(size) * len(PAIRS) + PAIRS.index((objective, kernel))) % 8
    gram = fresh_grams(groups, size)
    got, expected = _both(gram, scale=20.0, iterations=12, objective=objective, kernel=kernel)
    assert expected.abs().max() > 0
    _assert_agrees(got, expected)


@pytest.mark.parametrize("groups", range(1, 9))
def test_matches_numpy_every_group_count(groups):
    gram = fresh_grams(groups, 4)
    for objective, kernel in PAIRS:
        _assert_agrees(*_both(gram, scale=50.0, iterations=50, objective=objective, kernel=kernel))


def test_float32_asymmetric_input():
    """A float32 Gram summed by a BLAS need not be symmetric: both start from its symmetric part."""
    gram = fresh_grams(3, 8).float()
    gram = gram + 1e-3 * torch.randn_like(gram)
    for objective, kernel in PAIRS:
        _assert_agrees(*_both(gram, scale=10.0, iterations=20, objective=objective, kernel=kernel))


@pytest.mark.parametrize("objective,kernel", PAIRS, ids=PAIR_IDS)
def test_identical_and_collinear_groups_do_not_move(objective, kernel):
    line = torch.randn(16, dtype=torch.float64)
    identical = line.expand(4, 16)
    collinear = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)[:, None] * line
    groups = [identical] + ([collinear] if kernel == "cosine" else [])
    gram = torch.stack([g @ g.T for g in groups])
    got, expected = _both(gram, scale=50.0, iterations=30, objective=objective, kernel=kernel)
    assert torch.equal(expected, torch.zeros_like(expected))
    assert torch.equal(got, expected)


@pytest.mark.parametrize("objective,kernel", PAIRS, ids=PAIR_IDS)
def test_mixed_batch_with_ties_in_some_groups(objective, kernel):
    """Groups 0 and 2 have identical samples (one pair, one triple), 1 and 3 none: the reference averages
    every group's force (its tie matrix is I where there are none), the compiled loop only those with ties."""
    samples = torch.randn(4, 6, 32, dtype=torch.float64)
    samples[0, 3] = samples[0, 1]
    samples[2, 4] = samples[2, 0]
    samples[2, 5] = samples[2, 0]
    gram = samples @ samples.mT
    got, expected = _both(gram, scale=20.0, iterations=25, objective=objective, kernel=kernel)
    _assert_agrees(got, expected)
    update = got @ samples  # identical samples move alike
    for g, (i, j) in [(0, (1, 3)), (2, (0, 4)), (2, (0, 5))]:
        assert torch.allclose(update[g, i], update[g, j], rtol=0, atol=1e-12 * update[g].abs().max().item())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the reference's median of no pairs
def test_one_sample_groups():
    gram = fresh_grams(3, 1)
    for objective, kernel in PAIRS:
        got, expected = _both(gram, scale=5.0, iterations=4, objective=objective, kernel=kernel)
        assert torch.equal(got, expected)


def test_a_failed_group_is_reported_and_left_alone():
    """Per-group status instead of an exception: a NaN group is BAD_SAMPLES, a diverging one NON_FINITE, both with
    P - I = 0; the other groups are solved as if alone. `solve` raises, naming the groups. The NumPy fallback
    reports the same."""
    gram = fresh_grams(3, 4)
    gram[1, 0, 1] = gram[1, 1, 0] = float("nan")
    options = {"scale": 20.0, "iterations": 10, "objective": "vendi", "kernel": "cosine"}
    for solve_groups in (solver.solve_groups, lambda g, **o: solver._statuses(g, **o, limit=np.inf)):
        mix, status = solve_groups(gram.numpy(), **options)
        assert status.tolist() == [SOLVED, BAD_SAMPLES, SOLVED]
        assert (mix[1] == 0).all()
        alone = solver.solve_numpy(gram[[0, 2]], **options).numpy()
        np.testing.assert_allclose(mix[[0, 2]], alone, rtol=0, atol=TOLERANCE * np.abs(alone).max())
    with pytest.raises(ValueError, match=r"group\(s\) \[1\]"):
        solver.solve(gram, **options)
    diverging = {**options, "scale": 1e300, "iterations": 5}
    for solve_groups in (solver.solve_groups, lambda g, **o: solver._statuses(g, **o, limit=np.inf)):
        mix, status = solve_groups(fresh_grams(2, 4).numpy(), **diverging)
        assert status.tolist() == [NON_FINITE, NON_FINITE] and (mix == 0).all()


def test_overflow_bound_marks_groups():
    """MAY_OVERFLOW where |x_i| + sum_j |D_ij| |x_j| exceeds the limit (fp16's 65504 here), P - I kept."""
    gram = fresh_grams(2, 4) * torch.tensor([1.0, 1e9], dtype=torch.float64)[:, None, None]
    options = {"scale": 20.0, "iterations": 10, "objective": "vendi", "kernel": "cosine", "limit": 65504.0}
    for solve_groups in (solver.solve_groups, lambda g, **o: solver._statuses(g, **o)):
        mix, status = solve_groups(gram.numpy(), **options)
        assert status.tolist() == [SOLVED, MAY_OVERFLOW] and np.abs(mix[1]).max() > 0


@pytest.mark.parametrize("objective,kernel", PAIRS, ids=PAIR_IDS)
def test_groups_on_several_cores_match_one_thread_bit_for_bit(objective, kernel, monkeypatch):
    """Several groups of PARALLEL_GROUP or more are spread over threads: each group's P - I and status are those of
    the one-thread loop, to the bit (a bad group included), so a seed's images do not depend on the cores; and
    torch's thread count is left as it was."""
    compiled_solver = pytest.importorskip("fastrepulse.compiled_solver")
    gram = fresh_grams(5, compiled_solver.PARALLEL_GROUP).numpy()
    gram[3, 0, 0] = np.nan
    options = {"scale": 5.0, "iterations": 10, "objective": objective, "kernel": kernel}
    threads = torch.get_num_threads()
    monkeypatch.setattr(compiled_solver, "_cores", lambda: 3)
    spread = compiled_solver.solve_compiled(gram, **options)
    assert torch.get_num_threads() == threads
    monkeypatch.setattr(compiled_solver, "_cores", lambda: 1)
    one_thread = compiled_solver.solve_compiled(gram, **options)
    assert one_thread[1].tolist() == [SOLVED, SOLVED, SOLVED, BAD_SAMPLES, SOLVED]
    np.testing.assert_array_equal(spread[1], one_thread[1])
    np.testing.assert_array_equal(spread[0], one_thread[0])
    assert np.abs(one_thread[0]).max() > 0 and (one_thread[0][3] == 0).all()


@pytest.mark.parametrize("size", [2, 3, 4, 8, 16])
def test_jacobi_and_lapack_eigendecompositions_agree(size):
    """Groups up to JACOBI_MAX_GROUP use warm-started Jacobi: the same Vendi gradient as LAPACK's eigh to
    rounding, on a kernel matrix with a near-degenerate pair of eigenvalues too; with no sweeps left (0) Jacobi
    reports failure, which hands the step to LAPACK."""
    compiled_solver = pytest.importorskip("fastrepulse.compiled_solver")
    gram = fresh_grams(1, size)[0].numpy()
    norms = np.sqrt(np.diag(gram))
    kernel_mat = gram / np.outer(norms, norms)
    for matrix in (kernel_mat, np.eye(size) + 1e-9 * kernel_mat):
        outs = []
        for jacobi_max in (size, 0):
            out, vectors = np.empty((size, size)), np.eye(size)
            scratch = (np.empty((size, size)), np.empty((size, size)), np.empty(size))
            assert compiled_solver._objective_gradient(matrix, 0, 1e-12, out, vectors, *scratch, jacobi_max)
            outs.append(out)
        # both are backward stable: eigenvalues exact to ~eps |K|, so log-eigenvalues to ~eps |K| absolute
        np.testing.assert_allclose(outs[0], outs[1], rtol=0, atol=10 * np.finfo(np.float64).eps * size)
    vectors = np.eye(size)
    assert not compiled_solver._jacobi(kernel_mat, vectors, np.empty((size, size)), np.empty((size, size)), 0)


def test_falls_back_to_numpy_without_numba(monkeypatch):
    monkeypatch.setattr(solver, "_COMPILED", None)
    gram = fresh_grams(2, 4)
    options = {"scale": 20.0, "iterations": 10, "objective": "vendi", "kernel": "cosine"}
    assert torch.equal(solver.solve(gram, **options), solver.solve_numpy(gram, **options))


def test_import_does_not_load_numba():
    """Compilation is lazy: `import fastrepulse` neither compiles nor imports numba (the first solve does)."""
    code = "import sys, fastrepulse; assert 'numba' not in sys.modules, 'numba imported at import fastrepulse'"
    subprocess.run([sys.executable, "-c", code], check=True)
