"""Host float64 solver speed: all `iterations` steps of repel in Gram space, per call, compiled (numba,
`fastrepulse.compiled_solver`, what `fastrepulse.solve` runs) and NumPy (`solve_numpy`, the reference) side by
side: each benchmark group holds one setting's two solvers.

pytest bench/test_solver_speed.py --benchmark-enable --benchmark-columns=median,iqr,min,rounds

The compiled solver's one-time cost is not in these figures (a warm-up call runs first): see
`fastrepulse.compiled_solver` for the first call with a cold and with a warm on-disk cache.
"""

import pytest
import torch

from fastrepulse.solver import compiled_loop, solve, solve_numpy

# (groups, B): one Flux group of 4; SD3.5 with true CFG and 4 prompts of 4 images is 8 groups of 4;
# 8 groups of 16 is the largest setting the paper ablates.
SETTINGS = [(1, 4), (8, 4), (8, 16), (1, 64)]
PAIRS = [("vendi", "cosine"), ("vendi", "rbf"), ("energy", "cosine")]
SOLVERS = {"compiled": solve, "numpy": solve_numpy}


def prompt_grams(groups: int, size: int) -> torch.Tensor:
    samples = torch.randn(groups, 1, 4096, dtype=torch.float64) + 0.6 * torch.randn(groups, size, 4096)
    return samples @ samples.mT


@pytest.mark.parametrize("solver", SOLVERS, ids=SOLVERS)
@pytest.mark.parametrize("iterations", [50, 100])
@pytest.mark.parametrize("objective,kernel", PAIRS, ids=[f"{o}-{k}" for o, k in PAIRS])
@pytest.mark.parametrize("setting", SETTINGS, ids=[f"G{g}xB{b}" for g, b in SETTINGS])
def test_solve(benchmark, setting, objective, kernel, iterations, solver):
    if solver == "compiled" and compiled_loop() is None:
        pytest.skip("numba does not import: fastrepulse.solve runs the NumPy solver")
    run = SOLVERS[solver]
    gram = prompt_grams(*setting)
    options = {"scale": 50.0, "iterations": iterations, "objective": objective, "kernel": kernel}
    expected = solve_numpy(gram, **options) if solver == "compiled" else None
    run(gram, **options)  # compiles, or loads numba's on-disk cache: not what is timed
    benchmark.group = f"G{setting[0]}xB{setting[1]}-{objective}-{kernel}-M{iterations}"
    mix = benchmark(run, gram, **options)
    assert torch.isfinite(mix).all() and mix.abs().max() > 0
    if expected is not None:  # a gross-mismatch guard; tests/test_compiled_solver.py checks 1e-12 where the math
        # is well conditioned (here vendi-rbf at 8 x 16, 100 steps, moves by 2e-12 under a 1-ulp change of its input)
        assert (mix - expected).abs().max() <= 1e-10 * expected.abs().max()
