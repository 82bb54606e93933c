"""All `iterations` ascent steps of every group, run on B x B matrices in float64.

After any number of steps the samples are C = P C0, so the Gram matrix follows as G = P G0 P^T
and a step ``C <- C + s W C`` is ``P <- (I + s W) P``, ``G <- (I + s W) G (I + s W)`` (W is
symmetric). The big tensor is never touched: the caller applies ``X + (P - I) X`` once. Identical
samples get the same force (``W <- A W A`` with A averaging over them), so they stay identical, and
collinear groups under the cosine kernel are left alone: their exact answers (`fastrepulse.forces`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

import numpy as np
import torch

from fastrepulse.forces import force_matrix, rbf_bandwidth, step_sizes, ties
from fastrepulse.status import BAD_SAMPLES, MAY_OVERFLOW, NON_FINITE, SOLVED

_COMPILED: ModuleType | None | bool = False
"""`fastrepulse.compiled_solver` once imported, None where numba does not import, False before the first solve:
numba (0.3 s to import) is imported at the first solve, never at ``import fastrepulse``."""


def _compiled() -> ModuleType | None:
    global _COMPILED
    if _COMPILED is False:
        try:
            from fastrepulse import compiled_solver
        except ImportError:  # numba or SciPy missing, or built for another NumPy: the NumPy solver, same results
            compiled_solver = None
        _COMPILED = compiled_solver
    return _COMPILED


def compiled_loop() -> Callable[..., tuple[np.ndarray, np.ndarray]] | None:
    """The compiled solver, or None where numba is not installed or does not import (then NumPy runs)."""
    module = _compiled()
    return None if module is None else module.solve_compiled


def compiled_passes() -> Callable[..., np.ndarray] | None:
    """`fastrepulse.compiled_solver.repel_rows_compiled` (Gram, solve and apply of CPU samples in one compiled
    call), or None where numba does not import."""
    module = _compiled()
    return None if module is None else module.repel_rows_compiled


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

    Raises:
        ValueError: some group's Gram matrix is not finite (or has a zero sample under cosine), or its steps
            diverged; the message names the groups.
    """
    state = gram.detach().to(device="cpu", dtype=torch.float64).numpy()
    mix, status = solve_groups(state, scale=scale, iterations=iterations, objective=objective, kernel=kernel)
    failed = np.flatnonzero(status != SOLVED).tolist()
    if failed:
        raise ValueError(
            f"the steps of group(s) {failed} did not stay finite (status {status[failed].tolist()}, "
            "see fastrepulse.status): pass finite Gram matrices, and lower scale or raise iterations"
        )
    return torch.from_numpy(mix)


def solve_groups(
    gram: np.ndarray, *, scale: float, iterations: int, objective: str, kernel: str, limit: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """`solve` without raising: P - I [G, B, B] and a `fastrepulse.status` code per group [G] (int32).

    A group whose Gram matrix is unusable (BAD_SAMPLES) or whose steps diverge (NON_FINITE) gets P - I = 0, so
    applying it leaves the group as it was; MAY_OVERFLOW marks groups where x + (P - I) x may exceed `limit`.
    """
    compiled = compiled_loop()
    if compiled is not None:
        return compiled(gram, scale, iterations, objective, kernel, limit)
    return _statuses(gram, scale, iterations, objective, kernel, limit)


def _statuses(
    gram: np.ndarray, scale: float, iterations: int, objective: str, kernel: str, limit: float
) -> tuple[np.ndarray, np.ndarray]:
    """`solve_groups` by the NumPy reference: the usable groups solved together, a group alone if the batch fails."""
    state = np.asarray(gram, dtype=np.float64)
    diagonal = np.diagonal(state, axis1=-2, axis2=-1)
    usable = np.isfinite(state).all(axis=(-2, -1)) & ((diagonal > 0).all(-1) if kernel == "cosine" else True)
    status = np.where(usable, SOLVED, BAD_SAMPLES).astype(np.int32)
    mix = np.zeros_like(state)
    options = {"scale": scale, "iterations": iterations, "objective": objective, "kernel": kernel}
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            mix[usable] = solve_numpy(torch.from_numpy(state[usable]), **options).numpy()
    except np.linalg.LinAlgError:  # eigh on a diverged state: find which groups diverged
        for g in np.flatnonzero(usable):
            try:
                with np.errstate(over="ignore", invalid="ignore"):
                    mix[g] = solve_numpy(torch.from_numpy(state[g : g + 1]), **options).numpy()[0]
            except np.linalg.LinAlgError:
                mix[g] = np.nan
    diverged = usable & ~np.isfinite(mix).all(axis=(-2, -1))
    status[diverged] = NON_FINITE
    mix[status != SOLVED] = 0.0
    status[(status == SOLVED) & (result_bound(state, mix) > limit)] = MAY_OVERFLOW
    return mix, status


def result_bound(gram: np.ndarray, mix: np.ndarray) -> np.ndarray:
    """A bound [G] on every element of each group's x + (P - I) x: max_i |x_i| + sum_j |P - I|_ij |x_j| (norms from
    the Gram diagonal), with no pass over x."""
    norms = np.sqrt(np.maximum(np.diagonal(gram, axis1=-2, axis2=-1), 0.0))
    with np.errstate(invalid="ignore"):
        return (norms + (np.abs(mix) @ norms[..., None])[..., 0]).max(-1, initial=0.0)


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
