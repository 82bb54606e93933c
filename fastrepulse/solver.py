"""All `iterations` ascent steps of every group, run on B x B matrices in float64.

After any number of steps the samples are C = P C0, so the Gram matrix follows as G = P G0 P^T
and a step ``C <- C + s W C`` is ``P <- (I + s W) P``, ``G <- (I + s W) G (I + s W)`` (W is
symmetric). The big tensor is never touched: the caller applies ``X + (P - I) X`` once. Identical
samples get the same force (``W <- A W A`` with A averaging over them), so they stay identical, and
collinear groups under the cosine kernel are left alone: their exact answers (`fastrepulse.forces`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from fastrepulse.forces import force_matrix, rbf_bandwidth, step_sizes, ties

_COMPILED: Callable[..., np.ndarray] | None | bool = False
"""`fastrepulse.compiled_solver.solve_compiled` once imported, None where numba does not import, False before
the first solve: numba (0.3 s to import) is imported at the first solve, never at ``import fastrepulse``."""


def compiled_loop() -> Callable[..., np.ndarray] | None:
    """The compiled solver, or None where numba is not installed or does not import (then NumPy runs)."""
    global _COMPILED
    if _COMPILED is False:
        try:
            from fastrepulse.compiled_solver import solve_compiled
        except ImportError:  # numba or SciPy missing, or built for another NumPy: the NumPy solver, same results
            solve_compiled = None
        _COMPILED = solve_compiled
    return _COMPILED


def solve(gram: torch.Tensor, *, scale: float, iterations: int, objective: str, kernel: str) -> torch.Tensor:
    """Mixing matrices P - I [G, B, B] of `iterations` steps of size scale / iterations, on the host.

    The loop runs compiled (`fastrepulse.compiled_solver`, numba; the first call in a fresh environment
    compiles it, once, into numba's on-disk cache) and in NumPy (`solve_numpy`, the reference) where numba
    does not import. The two agree to rounding (1e-12 of P - I).

    Args:
        gram: Gram matrices [G, B, B] of the groups' flattened samples, any float dtype and device
            (copied to the host in float64); cosine needs a positive diagonal.
        scale, iterations, objective, kernel: as in `fastrepulse.repel`.

    Returns:
        ``P - I``, float64 on the CPU: the update of the samples is ``(P - I) C0``.
    """
    compiled = compiled_loop()
    if compiled is None:
        return solve_numpy(gram, scale=scale, iterations=iterations, objective=objective, kernel=kernel)
    state = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    return torch.from_numpy(compiled(state, scale, iterations, objective, kernel))


def solve_numpy(gram: torch.Tensor, *, scale: float, iterations: int, objective: str, kernel: str) -> torch.Tensor:
    """`solve` in NumPy, batched over the groups with one Python step per iteration: the reference."""
    state = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    # a Gram matrix summed in float32 by a BLAS need not be symmetric, and eigh reads one triangle: start
    # from the symmetric part, as the device solver does
    state = 0.5 * (state + np.swapaxes(state, -1, -2))
    bandwidth = rbf_bandwidth(state) if kernel == "rbf" else None
    tie = ties(state)
    eye = np.eye(state.shape[-1])
    step = step_sizes(state, scale, iterations, kernel)
    mixing = np.broadcast_to(eye, state.shape)
    for _ in range(iterations):
        force = force_matrix(state, objective, kernel, bandwidth)
        if tie is not None:  # identical samples: the same force, to the bit
            force = tie @ force @ tie
        transform = eye + step * force
        mixing = transform @ mixing
        state = transform @ state @ transform
    return torch.from_numpy(mixing - eye)
