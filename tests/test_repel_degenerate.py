"""Identical, collinear and one-element samples: their exact answers on every backend and solver.

The exact gradient is 0 for identical samples (every kernel) and for samples on one line through 0 under the
cosine kernel (a tangent force within a 1-D span); the steps move identical samples alike. In floating point
the floored eigenvalues would grow rounding into an answer (or a "diverged" error): these are the cases the
iteration must get exactly right (`fastrepulse.forces`).
"""

import pytest
import torch
from oracle import assert_matches_oracle, group_vendi, literal_loop
from test_repel_parity import PAIRS, calibrated_scale, prompt_like

from fastrepulse import repel
from fastrepulse.repulsion import Repulsion

PATHS = [("torch", "host"), ("torch", "device"), ("triton", "host"), ("triton", "device"), ("reference", "host")]
PATH_IDS = [f"{backend}-{solver}" for backend, solver in PATHS]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
ITERATIONS = 5  # exactness does not depend on the count; the device solver runs in Triton's interpreter here


def _repel(x: torch.Tensor, path: tuple[str, str], **options) -> torch.Tensor:
    backend, solver = path
    return repel(x, backend=backend, solver=solver, iterations=ITERATIONS, **options)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("objective,kernel", PAIRS, ids=[f"{o}-{k}" for o, k in PAIRS])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_identical_samples_come_back_unchanged(path, objective, kernel, dtype):
    """Before: "repulsion diverged ... lower scale" (rbf, device solver) or a change of 10x the samples."""
    x = torch.randn(2, 1, 3, 16).expand(2, 4, 3, 16).reshape(8, 3, 16).to(dtype)  # two groups of identical samples
    original = x.clone()
    result = _repel(x, path, scale=50.0, group_size=4, objective=objective, kernel=kernel, out=x)
    assert result is x and torch.equal(x, original)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize(
    "x",
    [
        torch.tensor([[1.0], [2.0], [-3.0], [4.0]]) * torch.randn(1, 16),  # collinear rows
        torch.tensor([[1.0], [2.0], [-3.0], [4.0]], dtype=torch.float64) * torch.randn(1, 16, dtype=torch.float64),
        torch.tensor([1.0, 2.0, -3.0, 4.0]),  # one element each: before, [17, 2, -7, 4]
    ],
    ids=["collinear-fp32", "collinear-fp64", "one-element"],
)
def test_collinear_samples_do_not_move_under_the_cosine_kernel(path, x):
    """(The triton Gram of float32 rows resolves cosines to ~1e-7: such groups are summed again in float64.)"""
    assert torch.equal(_repel(x, path, scale=50.0), x)


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
def test_collinear_and_one_element_samples_under_rbf_match_the_oracle(path):
    """Distinct points on a line: the rbf kernel is full rank there and the update is the oracle's."""
    for x in (torch.tensor([[1.0], [2.0], [-3.0], [4.0]]) * torch.randn(1, 16), torch.tensor([1.0, 2.0, -3.0, 4.0])):
        x = x.double()
        scale = calibrated_scale(x, 4, "vendi", "rbf")
        expected = literal_loop(x, scale=scale, iterations=ITERATIONS, group_size=4, objective="vendi", kernel="rbf")
        result = _repel(x, path, scale=scale, kernel="rbf")
        assert_matches_oracle(result, x, expected, 4, f"{path} rbf, shape {tuple(x.shape)}")


@pytest.mark.parametrize("path", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("kernel", ["cosine", "rbf"])
def test_duplicated_samples_stay_identical_while_the_group_spreads(path, kernel):
    """Two copies of one sample among others: the exact steps move the copies alike (the floated force would
    split them by rounding, which the floored eigenvalues grow by a factor per step)."""
    x = prompt_like(4, (4, 8), torch.float32)
    x[1] = x[0]
    result = _repel(x, path, scale=calibrated_scale(x[1:], 3, "vendi", kernel), kernel=kernel)
    assert torch.equal(result[0], result[1]) and torch.isfinite(result).all()
    # one copy and the others: their Vendi score rises (rbf: with the bandwidth of the input)
    after = group_vendi(result[1:], 3, kernel, bandwidth_from=x[1:]).item()
    assert after > group_vendi(x[1:], 3, kernel).item() * 1.01


def test_only_nearly_collinear_groups_are_summed_again_in_float64(monkeypatch: pytest.MonkeyPatch):
    """The triton Gram of float32 rows cannot resolve them; every other group keeps its single pass."""
    import fastrepulse.repulsion as repulsion

    summed: list[int] = []
    real = repulsion.gram_torch

    def recording(rows: torch.Tensor, group_size: int) -> torch.Tensor:
        summed.append(rows.shape[0] // group_size)
        return real(rows, group_size)

    monkeypatch.setattr(repulsion, "gram_torch", recording)
    spread = prompt_like(8, (3, 16), torch.float32)
    repel(spread, scale=10.0, group_size=4, backend="triton")
    assert summed == []
    near = spread.clone()
    near[4:] = near[4] + 1e-5 * torch.randn(4, 3, 16)  # the second group: within 1e-5 of one sample
    repel(near, scale=10.0, group_size=4, backend="triton")
    assert summed == [1]


# The smallest spread at which each backend resolves the update to 1e-3 (docs/operator.md, "How close one prompt's
# samples may be"; bench/spread_accuracy.py measures the whole table), and 30x below it it does not (except for
# reference in float32, whose rounded steps are erratic there: 1e-4 .. 0.3 from sample to sample).
STATED_SPREADS = [
    ("torch", "host", True, torch.float64, 1e-5),
    ("torch", "host", True, torch.float32, 3e-4),
    ("reference", "host", True, torch.float64, 1e-5),
    ("reference", "host", True, torch.float32, 1e-2),  # 3e-3 is at the edge (9.9e-4 measured)
    ("triton", "host", True, torch.float64, 1e-5),
    ("triton", "host", True, torch.float32, 3e-4),
    ("triton", "device", False, torch.float32, 3e-3),
]


def _update_error(spread: float, dtype: torch.dtype, backend: str, solver: str, strict: bool) -> float:
    """Relative error of the update of 4 samples `c + spread * n_i`, moved by a quarter of their spread."""
    shared = torch.randn(1, 1024, dtype=torch.float64)
    x = (shared + spread * torch.randn(4, 1024, dtype=torch.float64)).to(dtype)
    exact_x = x.to(torch.float64)
    options = {"group_size": 4, "objective": "vendi", "kernel": "cosine"}
    one_step = literal_loop(x, scale=1.0, iterations=1, **options)
    scale = float(0.25 * spread * exact_x.norm() / (one_step - exact_x).norm())
    expected = literal_loop(x, scale=scale, iterations=10, **options)
    result = x.clone()
    Repulsion(scale, 10, "vendi", "cosine", backend, solver).run([result], [result], 4, strict=strict)
    return float((result.to(torch.float64) - expected).norm() / (expected - exact_x).norm())


@pytest.mark.parametrize(
    ("backend", "solver", "strict", "dtype", "spread"),
    STATED_SPREADS,
    ids=[f"{b}-{s}{'' if strict else '-pipeline'}-{str(d)[6:]}" for b, s, strict, d, _ in STATED_SPREADS],
)
def test_the_update_is_resolved_at_the_smallest_stated_spread(backend, solver, strict, dtype, spread):
    assert _update_error(spread, dtype, backend, solver, strict) <= 1e-3
    if (backend, dtype) != ("reference", torch.float32):
        assert _update_error(spread / 30, dtype, backend, solver, strict) > 1e-3
