"""repel against the independent float64 autograd oracle: every backend, dtype, objective and kernel.

The CUDA cases are skipped without a GPU; bench/gpu_check.sh runs them (`-k cuda`) on a lent one.
"""

import pytest
import torch
from oracle import assert_matches_oracle, literal_loop

from fastrepulse import repel

# (B, groups, feature shape): every B in {2, 3, 4, 5, 8, 16}, 1-3 groups, odd feature shapes.
CASES = [(2, 3, (7, 33)), (3, 1, (333, 24)), (4, 2, (1, 1000)), (5, 3, (7, 33)), (8, 1, (1, 1000)), (16, 2, (333, 24))]
DTYPES = {"fp64": torch.float64, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PAIRS = [("vendi", "cosine"), ("vendi", "rbf"), ("energy", "cosine"), ("energy", "rbf")]
ITERATIONS = 50
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))]
TARGET_UPDATE = 0.25
"""Size of the whole update relative to |x|: well above 16-bit rounding of the result (~0.2%)."""


def prompt_like(num_samples: int, feature_shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Correlated samples, as for one prompt: a shared component plus per-sample variation."""
    shared = torch.randn(1, *feature_shape, dtype=torch.float64)
    return (shared + 0.6 * torch.randn(num_samples, *feature_shape, dtype=torch.float64)).to(dtype)


def calibrated_scale(x: torch.Tensor, group_size: int, objective: str, kernel: str) -> float:
    """A scale that moves the samples by about TARGET_UPDATE of their norm, from the oracle's first gradient."""
    one_step = literal_loop(x, scale=1.0, iterations=1, group_size=group_size, objective=objective, kernel=kernel)
    grad_norm = (one_step - x.to(torch.float64)).norm()
    return float(TARGET_UPDATE * x.to(torch.float64).norm() / grad_norm)


def case_id(case):
    size, groups, shape = case
    return f"B{size}-G{groups}-L{'x'.join(map(str, shape))}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", ["torch", "triton", "reference"])
@pytest.mark.parametrize("objective,kernel", PAIRS, ids=[f"{o}-{k}" for o, k in PAIRS])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_literal_autograd_loop(case, dtype, objective, kernel, backend, device):
    size, groups, shape = case
    x = prompt_like(size * groups, shape, dtype)
    scale = calibrated_scale(x, size, objective, kernel)
    expected = literal_loop(x, scale=scale, iterations=ITERATIONS, group_size=size, objective=objective, kernel=kernel)
    x_device = x.to(device)
    out = torch.full_like(x_device, float("nan"))

    result = repel(
        x_device,
        scale=scale,
        iterations=ITERATIONS,
        group_size=size,
        objective=objective,
        kernel=kernel,
        backend=backend,
        out=out,
    )

    assert result is out
    label = f"{device} {backend} {case_id(case)} {dtype} {objective}-{kernel}"
    assert_matches_oracle(result.cpu(), x, expected, size, label)
