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


def test_divergence_raises_like_numpy():
    """A blown-up state makes eigh fail in both (np.linalg.LinAlgError, which `repel` turns into one error)."""
    gram = fresh_grams(2, 4)
    gram[1, 0, 1] = gram[1, 1, 0] = float("nan")
    options = {"scale": 5.0, "iterations": 4, "objective": "vendi", "kernel": "cosine"}
    with pytest.raises(np.linalg.LinAlgError):
        solver.solve_numpy(gram, **options)
    with pytest.raises(np.linalg.LinAlgError):
        solver.solve(gram, **options)


def test_falls_back_to_numpy_without_numba(monkeypatch):
    monkeypatch.setattr(solver, "_COMPILED", None)
    gram = fresh_grams(2, 4)
    options = {"scale": 20.0, "iterations": 10, "objective": "vendi", "kernel": "cosine"}
    assert torch.equal(solver.solve(gram, **options), solver.solve_numpy(gram, **options))


def test_import_does_not_load_numba():
    """Compilation is lazy: `import fastrepulse` neither compiles nor imports numba (the first solve does)."""
    code = "import sys, fastrepulse; assert 'numba' not in sys.modules, 'numba imported at import fastrepulse'"
    subprocess.run([sys.executable, "-c", code], check=True)
