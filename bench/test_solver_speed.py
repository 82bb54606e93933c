"""Host float64 solver speed: all `iterations` steps of repel in Gram space, per call.

pytest bench/test_solver_speed.py --benchmark-enable --benchmark-columns=median,iqr,min,rounds
"""

import pytest
import torch

from fastrepulse.solver import solve

# (groups, B): one Flux group of 4; SD3.5 with true CFG and 4 prompts of 4 images is 8 groups of 4;
# 8 groups of 16 is the largest setting the paper ablates.
SETTINGS = [(1, 4), (8, 4), (8, 16), (1, 64)]
PAIRS = [("vendi", "cosine"), ("vendi", "rbf"), ("energy", "cosine")]


def prompt_grams(groups: int, size: int) -> torch.Tensor:
    samples = torch.randn(groups, 1, 4096, dtype=torch.float64) + 0.6 * torch.randn(groups, size, 4096)
    return samples @ samples.mT


@pytest.mark.parametrize("iterations", [50, 100])
@pytest.mark.parametrize("objective,kernel", PAIRS, ids=[f"{o}-{k}" for o, k in PAIRS])
@pytest.mark.parametrize("setting", SETTINGS, ids=[f"G{g}xB{b}" for g, b in SETTINGS])
def test_solve(benchmark, setting, objective, kernel, iterations):
    gram = prompt_grams(*setting)
    mix = benchmark(solve, gram, scale=50.0, iterations=iterations, objective=objective, kernel=kernel)
    assert torch.isfinite(mix).all() and mix.abs().max() > 0
