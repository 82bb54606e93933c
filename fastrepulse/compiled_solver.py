"""The host solver's loop compiled with numba: every group's `iterations` steps in one nopython call; and for CPU
samples the whole repulsion (Gram, steps, apply) without a torch call.

The same algorithm as the NumPy reference (`fastrepulse.solver.solve_numpy`, the math in
`fastrepulse.forces`), written out as scalar loops over B x B matrices: the set-up (the symmetric part
of G, the rbf bandwidth, the averaging over identical samples, the collinear groups held still under the
cosine kernel) and then, per group, ``W = force(G)``, ``W <- A W A`` where the group has ties,
``T = I + s W``, ``P <- T P``, ``G <- (T G) T``. Vendi's eigendecomposition: for groups of up to
JACOBI_MAX_GROUP samples cyclic Jacobi warm-started from the previous step's eigenvectors (K moves little per
step; two sweeps are the rule), swept to LAPACK's backward error, as the device solver does; each rotation
updates two contiguous rows (vectorised) and mirrors them into the columns. Above that size, or where Jacobi
does not converge, LAPACK's eigh (``dsyevd``, as NumPy's). B x B products below SMALL_PRODUCT are loops, from it
BLAS; row sums are added in NumPy's pairwise order. Nothing is allocated per step. Several groups of at least
PARALLEL_GROUP samples are spread over the process's cores (Python threads; the loop releases the GIL); each
group's result is one thread's, so it does not depend on the core count.

Results agree with the reference to rounding: 1e-12 of P - I in tests/test_compiled_solver.py (measured 2e-14
on separated samples). Where the problem itself is that sensitive (one prompt's samples 3e-3 apart, or 8 groups
of 16 over 100 steps), the reference moves by ~1e-11 under a 1e-16 change of its input, and Jacobi against LAPACK
stays within that.

Each group gets a `fastrepulse.status` code instead of an exception (a NaN input, a diverged step, a result
that may overflow), and a failed group's P - I is 0, so that a pipeline can leave it as it was.

`repel_rows_compiled` is the torch backend's path for float32/float64 CPU tensors (`Repulsion.run`): the Gram
matrices in float64, the steps, and ``x + (P - I) x`` formed in float64, three compiled calls where the torch
passes would be ~10 torch calls around the solve (per-call overhead, not arithmetic, at the testbed's sizes).

Importing this module imports numba but compiles nothing: each function compiles on its first call
(``cache=True``: once per machine and per version of this file, into numba's on-disk cache, the
``__pycache__`` next to this file or ``NUMBA_CACHE_DIR``; one specialisation of the solve serves every
objective, kernel and shape, the CPU path one per dtype and memory layout). `fastrepulse.solver` imports it
lazily at the first solve and falls back to NumPy where numba or SciPy does not import. The first repelled
block in a fresh process on the 2-core CI machine: 23 s with a cold cache (compiling, one core busy elsewhere),
0.6 s with a warm one, torch import included (importing numba and SciPy's LAPACK, loading the cache); every later
call costs only its run.

Speed (bench/test_solver_speed.py, 2026-12-01, 2 cores, nothing else running): one group of 4 under Vendi
66 us at M = 50 and 90 us at M = 100 (25x and 53x NumPy's; 55-66x under energy); 8 groups of 16 under Vendi at
M = 100 5.5 ms against 20.4 ms (3.7x; rbf 4.0x; 1.7x to 2.2x on one core), where both spend their time in 800
eigendecompositions of 16 x 16.
"""

from __future__ import annotations

import functools
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import scipy.linalg.cython_lapack  # noqa: F401  numba's np.linalg.eigh calls SciPy's LAPACK: without it, NumPy runs

from fastrepulse.forces import EIGENVALUE_FLOOR, RANK_TOLERANCE
from fastrepulse.status import BAD_SAMPLES, MAY_OVERFLOW, NON_FINITE, SOLVED

JACOBI_MAX_GROUP = 16
"""Groups up to this size get Vendi's eigendecomposition by warm-started Jacobi, faster than LAPACK there
(bench/test_solver_speed.py); larger ones LAPACK's eigh."""
SMALL_PRODUCT = 8
"""B x B products below this size are plain loops, from it on BLAS (4x faster than loops at B = 16)."""
JACOBI_SWEEPS = 30
PARALLEL_GROUP = 8
"""Several groups of at least this size are solved on several cores, a run of groups per thread; smaller ones take
less time than handing them to threads (bench/test_solver_speed.py)."""
_ROUND_ANGLE = 2.0**27
"""Beyond this |cot 2 phi| of a rotation, sqrt(theta^2 + 1) rounds to |theta|: t = 1 / (2 theta) and c = 1 exactly."""
"""Jacobi sweeps per step at most, as the device solver's; LAPACK's eigh takes over where they do not suffice."""

_VENDI, _ENERGY = 0, 1
_COSINE, _RBF = 0, 1
OBJECTIVE_CODES = {"vendi": _VENDI, "energy": _ENERGY}
KERNEL_CODES = {"cosine": _COSINE, "rbf": _RBF}


def solve_compiled(
    gram: np.ndarray, scale: float, iterations: int, objective: str, kernel: str, limit: float = math.inf
) -> tuple[np.ndarray, np.ndarray]:
    """``P - I`` [G, B, B] (float64) of `iterations` steps of size scale / iterations for float64 Gram
    matrices [G, B, B], and a `fastrepulse.status` code per group [G] (int32; a failed group's P - I is 0;
    MAY_OVERFLOW where the result's bound exceeds `limit`). The first call compiles (or loads the on-disk cache)."""
    state = np.ascontiguousarray(gram, dtype=np.float64)
    step, codes = float(scale) / iterations, (OBJECTIVE_CODES[objective], KERNEL_CODES[kernel])
    # the constants travel as arguments: numba's cache is keyed by this file, not by forces.py or status.py
    constants = (RANK_TOLERANCE, EIGENVALUE_FLOOR, SOLVED, NON_FINITE, BAD_SAMPLES, MAY_OVERFLOW)
    arguments = (step, int(iterations), *codes, float(limit), JACOBI_MAX_GROUP, constants)
    workers = min(state.shape[0], _cores()) if state.shape[1] >= PARALLEL_GROUP else 1
    if workers <= 1:
        return _solve(state, *arguments)
    # the loop releases the GIL: contiguous runs of groups on threads, each group's steps one thread's (the same
    # results as one thread, to the bit); Python threads, not numba's parallel layer, which would reset the
    # OpenMP thread count that torch reads
    bounds = np.linspace(0, state.shape[0], workers + 1).round().astype(int)
    runs = [_pool().submit(_solve, state[lo:hi], *arguments) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
    parts = [run.result() for run in runs]
    return np.concatenate([mix for mix, _ in parts]), np.concatenate([status for _, status in parts])


@functools.cache
def _cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_cores(), thread_name_prefix="fastrepulse-solve")


@numba.njit(cache=True, nogil=True)
def _squared_distances(gram, tolerance, out):
    """`forces.squared_distances` of one group into out [B, B]."""
    size = gram.shape[0]
    for i in range(size):
        for j in range(size):
            scale = gram[i, i] + gram[j, j]
            distance = scale - 2.0 * gram[i, j]
            out[i, j] = distance if distance > tolerance * scale else 0.0


@numba.njit(cache=True, nogil=True)
def _bandwidth(distances):
    """`forces.rbf_bandwidth` of one group: the median of d_ij (i < j) / log(B), inf where not > 0."""
    size = distances.shape[0]
    pairs = np.empty(size * (size - 1) // 2)
    k = 0
    for i in range(size):
        for j in range(i + 1, size):
            pairs[k] = distances[i, j]
            k += 1
    pairs.sort()
    count = pairs.shape[0]
    if count == 0:  # one sample: NumPy's median is nan, and nan / log(1) is not > 0
        return np.inf
    median = pairs[count // 2] if count % 2 else (pairs[count // 2 - 1] + pairs[count // 2]) / 2.0
    bandwidth = median / math.log(size)
    return bandwidth if bandwidth > 0 else np.inf


@numba.njit(cache=True, nogil=True)
def _ties(distances, tie):
    """`forces.ties` of one group into tie [B, B]: the averaging matrix over its sets of identical samples
    (connected components of d_ij == 0); returns whether any two samples are identical."""
    size = distances.shape[0]
    label = np.arange(size)
    found = False
    for i in range(size):
        for j in range(size):
            if i != j and distances[i, j] == 0:
                found = True
                a, b = label[i], label[j]
                if a != b:  # merge the two components: relabel b as a
                    low, high = min(a, b), max(a, b)
                    for k in range(size):
                        if label[k] == high:
                            label[k] = low
    for i in range(size):
        count = 0
        for k in range(size):
            if label[k] == label[i]:
                count += 1
        for j in range(size):
            tie[i, j] = 1.0 / count if label[j] == label[i] else 0.0
    return found


@numba.njit(cache=True, nogil=True)
def _collinear(gram, tolerance):
    """`forces.collinear` of one group: every |cosine| within the tolerance of 1."""
    size = gram.shape[0]
    inv_norm = np.empty(size)
    for i in range(size):
        inv_norm[i] = 1.0 / math.sqrt(gram[i, i])
    for i in range(size):
        for j in range(size):
            if not abs(gram[i, j] * inv_norm[i] * inv_norm[j]) >= 1.0 - tolerance:
                return False
    return True


@numba.njit(cache=True, nogil=True)
def _product(a, b, out):
    """out = a @ b (out distinct from a and b): BLAS from SMALL_PRODUCT rows on, below it plain loops, where a BLAS
    call costs more than its arithmetic."""
    size = a.shape[0]
    if size >= SMALL_PRODUCT:
        np.dot(a, b, out)
        return
    for i in range(size):
        for j in range(size):
            total = 0.0
            for k in range(size):
                total += a[i, k] * b[k, j]
            out[i, j] = total


@numba.njit(cache=True, nogil=True)
def _matmul(a, b, out):
    """out = a @ b in a fixed order (equal rows of a give bit-equal rows of out): for the averaging over ties."""
    size = a.shape[0]
    for i in range(size):
        for j in range(size):
            out[i, j] = 0.0
        for k in range(size):
            aik = a[i, k]
            for j in range(size):
                out[i, j] += aik * b[k, j]


@numba.njit(cache=True, nogil=True)
def _row_sum(row):
    """sum(row) added in NumPy's order (pairwise_sum: 8 running sums from 8 elements on), as ``.sum(-1)``."""
    n = row.shape[0]
    if n < 8:
        total = 0.0
        for i in range(n):
            total += row[i]
        return total
    if n > 128:
        half = n // 2
        half -= half % 8
        return _row_sum(row[:half]) + _row_sum(row[half:])
    r0, r1, r2, r3, r4, r5, r6, r7 = row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7]
    i = 8
    while i < n - n % 8:
        r0 += row[i]
        r1 += row[i + 1]
        r2 += row[i + 2]
        r3 += row[i + 3]
        r4 += row[i + 4]
        r5 += row[i + 5]
        r6 += row[i + 6]
        r7 += row[i + 7]
        i += 8
    total = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        total += row[i]
        i += 1
    return total


@numba.njit(cache=True, nogil=True)
def _jacobi(kernel_mat, basis, rotated, scratch, max_sweeps):
    """Eigendecomposition of a symmetric kernel_mat by cyclic Jacobi, warm-started from `basis` (the previous
    step's eigenvectors as its rows, updated in place): eigenvalues on the diagonal of `rotated`. False if the
    off-diagonal mass is not eps^2 of the total (LAPACK's backward error) after `max_sweeps` sweeps.

    A rotation updates rows p and q of `rotated` and of `basis`, contiguous and vectorised, and mirrors them
    into the columns (rotated stays exactly symmetric); the diagonal takes Rutishauser's update."""
    size = kernel_mat.shape[0]
    _product(basis, kernel_mat, scratch)
    _product(scratch, basis.T, rotated)
    for sweep in range(max_sweeps + 1):
        off = 0.0
        total = 0.0
        for i in range(size):
            for j in range(size):
                square = rotated[i, j] * rotated[i, j]
                total += square
                if i != j:
                    off += square
        if off <= 1e-32 * total:
            return True
        if sweep == max_sweeps:
            return False
        for p in range(size - 1):
            row_p, basis_p = rotated[p], basis[p]
            for q in range(p + 1, size):
                a_pq = row_p[q]
                if a_pq == 0.0:
                    continue
                row_q, basis_q = rotated[q], basis[q]
                a_pp, a_qq = row_p[p], row_q[q]
                theta = (a_qq - a_pp) / (2.0 * a_pq)
                if abs(theta) > _ROUND_ANGLE:  # theta^2 + 1 rounds to theta^2 and t^2 + 1 to 1: the same t and c
                    t, c = 0.5 / theta, 1.0
                else:
                    t = (1.0 if theta >= 0.0 else -1.0) / (abs(theta) + math.sqrt(theta * theta + 1.0))
                    c = 1.0 / math.sqrt(t * t + 1.0)
                s = t * c
                for k in range(size):
                    x, y = row_p[k], row_q[k]
                    row_p[k] = c * x - s * y
                    row_q[k] = s * x + c * y
                row_p[p], row_q[q] = a_pp - t * a_pq, a_qq + t * a_pq
                row_p[q], row_q[p] = 0.0, 0.0  # zero up to rounding: set it, as the device solver does
                for k in range(size):
                    rotated[k, p], rotated[k, q] = row_p[k], row_q[k]
                for k in range(size):
                    x, y = basis_p[k], basis_q[k]
                    basis_p[k] = c * x - s * y
                    basis_q[k] = s * x + c * y
    return False


@numba.njit(cache=True, nogil=True)
def _objective_gradient(kernel_mat, objective, floor, out, basis, rotated, scratch, weight, jacobi_max):
    """`forces.objective_gradient` of one group into out [B, B]; False (out untouched) for a non-finite K.

    Vendi's eigendecomposition: warm-started Jacobi (`basis`, eigenvectors as rows, kept between steps) for
    B <= jacobi_max, else, or where Jacobi does not converge, LAPACK's eigh. rotated, scratch [B, B] and weight
    [B]: workspace."""
    size = kernel_mat.shape[0]
    if not _finite(kernel_mat):  # a diverged state: eigh would raise on it
        return False
    if objective == _VENDI:
        if size <= jacobi_max and _jacobi(kernel_mat, basis, rotated, scratch, JACOBI_SWEEPS):
            for k in range(size):
                weight[k] = math.log(max(rotated[k, k], size * floor)) / -size
        else:
            eigenvalues, eigenvectors = np.linalg.eigh(kernel_mat)
            basis[:, :] = eigenvectors.T
            for k in range(size):
                weight[k] = math.log(max(eigenvalues[k], size * floor)) / -size
        for k in range(size):
            for j in range(size):
                scratch[k, j] = basis[k, j] * weight[k]
        _product(basis.T, scratch, out)
    else:
        for i in range(size):
            for j in range(size):
                out[i, j] = 0.0 if i == j else -1.0
    return True


@numba.njit(cache=True, nogil=True)
def _force(
    state, objective, kernel, bandwidth, tolerance, floor, distances, kernel_mat, dh_dk, force, eigen, rows, jacobi_max
):
    """`forces.force_matrix` of one group into force [B, B]; False where the state has diverged.

    distances, kernel_mat, dh_dk [B, B] and rows [3, B]: workspace; eigen: Vendi's eigenvectors and workspace
    (`_objective_gradient`)."""
    size = state.shape[0]
    if kernel == _COSINE:
        products, inv_sq_norm, inv_norm = rows[0], rows[1], rows[2]
        for i in range(size):
            inv_sq_norm[i] = 1.0 / state[i, i]
            inv_norm[i] = math.sqrt(inv_sq_norm[i])
        for i in range(size):
            for j in range(size):
                kernel_mat[i, j] = state[i, j] * (inv_norm[i] * inv_norm[j])
        if not _objective_gradient(kernel_mat, objective, floor, dh_dk, *eigen, jacobi_max):
            return False
        for i in range(size):
            for j in range(size):
                force[i, j] = dh_dk[i, j] * (inv_norm[i] * inv_norm[j])
                products[j] = dh_dk[i, j] * kernel_mat[i, j]
            force[i, i] -= _row_sum(products) * inv_sq_norm[i]
            for j in range(size):
                force[i, j] *= 2.0
    else:
        _squared_distances(state, tolerance, distances)
        for i in range(size):
            for j in range(size):
                kernel_mat[i, j] = math.exp(-distances[i, j] / bandwidth)
        if not _objective_gradient(kernel_mat, objective, floor, dh_dk, *eigen, jacobi_max):
            return False
        for i in range(size):
            for j in range(size):
                force[i, j] = dh_dk[i, j] * kernel_mat[i, j] / bandwidth
            force[i, i] -= _row_sum(force[i])
            for j in range(size):
                force[i, j] *= 4.0
    return True


@numba.njit(cache=True, nogil=True)
def _usable(gram, kernel):
    """Whether a group's Gram matrix is finite, and under cosine has no zero sample."""
    size = gram.shape[0]
    for i in range(size):
        if kernel == _COSINE and not gram[i, i] > 0.0:
            return False
        for j in range(size):
            if not math.isfinite(gram[i, j]):
                return False
    return True


@numba.njit(cache=True, nogil=True)
def _finite(matrix):
    size = matrix.shape[0]
    for i in range(size):
        for j in range(size):
            if not math.isfinite(matrix[i, j]):
                return False
    return True


@numba.njit(cache=True, nogil=True)
def _result_bound(gram, mixing):
    """max_i |x_i| + sum_j |D_ij| |x_j| (norms from the Gram diagonal, D = P - I): no element of x + D x is larger."""
    size = gram.shape[0]
    largest = 0.0
    for i in range(size):
        bound = math.sqrt(max(gram[i, i], 0.0))
        for j in range(size):
            delta = mixing[i, j] - (1.0 if i == j else 0.0)
            bound += abs(delta) * math.sqrt(max(gram[j, j], 0.0))
        largest = max(largest, bound)
    return largest


@numba.njit(cache=True, nogil=True)
def _solve_group(gram, step, iterations, objective, kernel, limit, jacobi_max, constants, result):
    """One group's steps: P - I into result [B, B] (left 0 where the group fails); returns its status code."""
    tolerance, floor, solved, non_finite, bad_samples, may_overflow = constants
    size = gram.shape[0]
    workspace = np.empty((11, size, size))  # B x B matrices, each its own: state, mixing, ..., eigen_scratch
    state, mixing, transform, tie = workspace[0], workspace[1], workspace[2], workspace[3]
    distances, kernel_mat, dh_dk, force = workspace[4], workspace[5], workspace[6], workspace[7]
    scratch, rotated, eigen_scratch = workspace[8], workspace[9], workspace[10]
    basis, weight, rows = np.eye(size), np.empty(size), np.empty((3, size))
    # a Gram matrix summed in float32 need not be symmetric, and eigh reads one triangle: its symmetric part
    for i in range(size):
        for j in range(size):
            state[i, j] = 0.5 * (gram[i, j] + gram[j, i])
            mixing[i, j] = 1.0 if i == j else 0.0
    if not _usable(state, kernel):
        return bad_samples
    _squared_distances(state, tolerance, distances)
    bandwidth = _bandwidth(distances) if kernel == _RBF else 0.0
    tied = _ties(distances, tie)
    group_step = 0.0 if kernel == _COSINE and _collinear(state, tolerance) else step
    eigen = (basis, rotated, eigen_scratch, weight)
    for _ in range(iterations):
        if not _force(
            state, objective, kernel, bandwidth, tolerance, floor, distances, kernel_mat, dh_dk, force, eigen, rows,
            jacobi_max,
        ):  # fmt: skip
            return non_finite
        if tied:  # identical samples: the same force, to the bit
            _matmul(tie, force, scratch)
            _matmul(scratch, tie, force)
        for i in range(size):
            for j in range(size):
                transform[i, j] = (1.0 if i == j else 0.0) + group_step * force[i, j]
        _product(transform, mixing, scratch)
        mixing, scratch = scratch, mixing
        _product(transform, state, scratch)
        _product(scratch, transform, state)
    if not _finite(mixing):
        return non_finite
    for i in range(size):
        for j in range(size):
            result[i, j] = mixing[i, j] - (1.0 if i == j else 0.0)
    return may_overflow if _result_bound(gram, mixing) > limit else solved


@numba.njit(cache=True, nogil=True)
def _solve(gram, step, iterations, objective, kernel, limit, jacobi_max, constants):
    """Every group's steps, one after another: P - I [G, B, B] and the status codes [G]."""
    groups, size = gram.shape[0], gram.shape[1]
    result = np.zeros((groups, size, size))
    status = np.empty(groups, dtype=np.int32)
    for g in range(groups):
        status[g] = _solve_group(gram[g], step, iterations, objective, kernel, limit, jacobi_max, constants, result[g])
    return result, status


def repel_rows_compiled(
    rows: np.ndarray, out: np.ndarray, group_size: int, scale: float, iterations: int, objective: str, kernel: str,
    limit: float, strict: bool,
) -> np.ndarray:  # fmt: skip
    """A whole repulsion of CPU samples in three compiled steps: the Gram matrices (float64), `solve_compiled`'s
    steps (on several cores where it spreads them) and ``out = x + (P - I) x`` (formed in float64, rounded once to
    x's dtype), for rows, out [N, L] (float32 or float64, unit stride along L; out may be rows). Returns the status
    codes [N / B].

    Groups that fail are not written; a MAY_OVERFLOW group (bound above `limit`) is staged in x's dtype and written,
    as SOLVED, where it stays finite. `strict`: nothing is written unless every group is SOLVED (the caller then
    explains the failure)."""
    mix, status = solve_compiled(_gram_rows(rows, group_size), scale, iterations, objective, kernel, limit)
    if not (strict and (status != SOLVED).any()):
        _apply_rows(rows, out, mix, status, SOLVED, MAY_OVERFLOW)
    return status


APPLY_COLUMNS = 512
"""Columns of a group staged at a time in `_apply_group` (B x 512 float64, in cache), so that out may be x."""


@numba.njit(cache=True, nogil=True)
def _gram_rows(rows, group_size):
    """The Gram matrices [N / B, B, B] of the row groups of rows [N, L], in float64."""
    count, length = rows.shape
    staged = np.empty((group_size, length))
    gram = np.empty((count // group_size, group_size, group_size))
    for g in range(gram.shape[0]):
        for i in range(group_size):
            for k in range(length):
                staged[i, k] = rows[g * group_size + i, k]
        np.dot(staged, staged.T, gram[g])
    return gram


@numba.njit(cache=True, nogil=True)
def _apply_group(rows, first, mix, columns, update, dest, dest_first):
    """dest[dest_first + i] = x_i + sum_j mix[i, j] x_j for the group's rows x_i = rows[first + i], in float64."""
    size, length = mix.shape[0], rows.shape[1]
    for start in range(0, length, APPLY_COLUMNS):
        width = min(APPLY_COLUMNS, length - start)
        for i in range(size):
            for k in range(width):
                columns[i, k] = rows[first + i, start + k]
        for i in range(size):
            for k in range(width):
                update[k] = columns[i, k]
            for j in range(size):
                weight = mix[i, j]
                for k in range(width):
                    update[k] += weight * columns[j, k]
            for k in range(width):
                dest[dest_first + i, start + k] = update[k]


@numba.njit(cache=True, nogil=True)
def _apply_rows(rows, out, mix, status, solved, may_overflow):
    """out = x + (P - I) x for the SOLVED groups, and for the MAY_OVERFLOW ones that stay finite in x's dtype
    (staged, then marked SOLVED in status); the other groups' rows are not written."""
    groups, group_size = mix.shape[0], mix.shape[1]
    columns = np.empty((group_size, APPLY_COLUMNS))
    update = np.empty(APPLY_COLUMNS)
    for g in range(groups):
        if status[g] == solved:
            _apply_group(rows, g * group_size, mix[g], columns, update, out, g * group_size)
        elif status[g] == may_overflow:
            result = np.empty((group_size, rows.shape[1]), dtype=out.dtype)
            _apply_group(rows, g * group_size, mix[g], columns, update, result, 0)
            if np.isfinite(result).all():
                out[g * group_size : (g + 1) * group_size] = result
                status[g] = solved
