"""The B x B solver on the device: all `iterations` ascent steps of a group in one Triton program.

The same algorithm as `fastrepulse.solver.solve` (see `fastrepulse.forces` for the math), in float64,
with no round trip to the host: one program per group keeps G, P and the eigenvectors in registers.
It takes the Gram kernel's partial sums as they are (adding them is one launch fewer) and computes the
rbf bandwidth itself, so nothing crosses to the host between the two passes over the tensor.
The von Neumann entropy needs eigh(K) in every step; a cyclic Jacobi eigensolver does it, warm-started
from the previous step's eigenvectors (K moves little per step, so one or two sweeps usually suffice).
A per-group status says whether every number stayed finite and every eigendecomposition converged, so
the caller can raise without guessing.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from fastrepulse.forces import EIGENVALUE_FLOOR, RANK_TOLERANCE
from fastrepulse.status import NON_FINITE, NOT_CONVERGED, SOLVED

MAX_SWEEPS = 30
"""Jacobi sweeps per eigendecomposition at most; from a warm start one or two are the rule."""

MAX_GROUP = 16
"""Largest group the device solver takes: its [B, B, B] products live in registers (larger: the host)."""


MAX_REGISTERS = 128
"""Register cap per thread: left to itself, ptxas spills some solver configurations at 64-96 registers."""


def solver_warps(block: int) -> int:
    """Warps per program: one up to 4 x 4 (no cross-warp reductions), four for 8 x 8 x 8 products and sixteen for
    16 x 16 x 16 ones, so that their temporaries fit the register cap (with fewer, ptxas spills)."""
    return {16: 16, 8: 4}.get(block, 1)


@triton.jit
def _matmul(a, b):
    """[BLOCK, BLOCK] @ [BLOCK, BLOCK] by broadcasting: exact fp64 products, no tensor-core path needed."""
    return tl.sum(a[:, :, None] * b[None, :, :], axis=1)


@triton.jit
def _rotate(a, v, p, q, o_row, o_col):
    """One Jacobi rotation J(p, q) zeroing a[p, q]: a <- J^T a J, v <- v J."""
    a_pp = tl.sum(tl.sum(tl.where((o_row == p) & (o_col == p), a, 0.0), axis=1), axis=0)
    a_qq = tl.sum(tl.sum(tl.where((o_row == q) & (o_col == q), a, 0.0), axis=1), axis=0)
    a_pq = tl.sum(tl.sum(tl.where((o_row == p) & (o_col == q), a, 0.0), axis=1), axis=0)
    theta = (a_qq - a_pp) / (2.0 * tl.where(a_pq == 0.0, 1.0, a_pq))
    sign = tl.where(theta >= 0.0, 1.0, -1.0)
    t = tl.where(a_pq == 0.0, 0.0, sign / (tl.abs(theta) + tl.sqrt(theta * theta + 1.0)))
    c = 1.0 / tl.sqrt(t * t + 1.0)
    s = t * c
    # columns p, q of a and v: [BLOCK] each, indexed by row
    a_p = tl.sum(tl.where(o_col == p, a, 0.0), axis=1)[:, None]
    a_q = tl.sum(tl.where(o_col == q, a, 0.0), axis=1)[:, None]
    a = tl.where(o_col == p, c * a_p - s * a_q, tl.where(o_col == q, s * a_p + c * a_q, a))
    v_p = tl.sum(tl.where(o_col == p, v, 0.0), axis=1)[:, None]
    v_q = tl.sum(tl.where(o_col == q, v, 0.0), axis=1)[:, None]
    v = tl.where(o_col == p, c * v_p - s * v_q, tl.where(o_col == q, s * v_p + c * v_q, v))
    # rows p, q of a (already rotated on the right): [BLOCK] each, indexed by column
    a_p = tl.sum(tl.where(o_row == p, a, 0.0), axis=0)[None, :]
    a_q = tl.sum(tl.where(o_row == q, a, 0.0), axis=0)[None, :]
    a = tl.where(o_row == p, c * a_p - s * a_q, tl.where(o_row == q, s * a_p + c * a_q, a))
    # the rotation zeroes a[p, q] and a[q, p] up to rounding: set them (Rutishauser), or their rounding
    # (and any rounding asymmetry of a) would hold the off-diagonal mass above a tight threshold
    return tl.where(((o_row == p) & (o_col == q)) | ((o_row == q) & (o_col == p)), 0.0, a), v


@triton.jit
def _solve_kernel(
    gram_ptr,
    mix_ptr,
    status_ptr,
    step: tl.float64,
    iterations,
    num_partials,
    B: tl.constexpr,
    BLOCK: tl.constexpr,
    VENDI: tl.constexpr,
    COSINE: tl.constexpr,
    FLOOR: tl.constexpr,
    RANK_TOLERANCE: tl.constexpr,
    LOG_B: tl.constexpr,
    SWEEPS: tl.constexpr,
    TIE_ROUNDS: tl.constexpr,
    SOLVED_STATUS: tl.constexpr,
    NON_FINITE_STATUS: tl.constexpr,
    NOT_CONVERGED_STATUS: tl.constexpr,
):
    """mix[g] = P - I after `iterations` steps T = I + step A W(G) A, P <- T P, G <- T G T (A averages over identical
    samples; step 0 for collinear groups under cosine, as `fastrepulse.solver.solve`), from G = sum_s gram[g, s];
    status[g] a status code."""
    i_g = tl.program_id(0)
    o_row = tl.arange(0, BLOCK)[:, None]
    o_col = tl.arange(0, BLOCK)[None, :]
    m_in = (o_row < B) & (o_col < B)
    m_diag = (o_row == o_col) & m_in
    eye = tl.where(o_row == o_col, 1.0, 0.0).to(tl.float64)
    o_mat = i_g * B * B + o_row * B + o_col
    p_gram = gram_ptr + i_g * num_partials * B * B + o_row * B + o_col
    # [BLOCK, BLOCK]: the Gram's partial sums added in float64, in order (the same bits on every run)
    b_gram = tl.load(p_gram, mask=m_in, other=0.0).to(tl.float64)
    for i_s in range(1, num_partials):
        # [BLOCK, BLOCK]
        b_gram += tl.load(p_gram + i_s * B * B, mask=m_in, other=0.0).to(tl.float64)
    # a Gram matrix summed in float32 by a BLAS need not be symmetric; Jacobi assumes it is (the host reads
    # one triangle), so both solvers start from the symmetric part
    b_gram = 0.5 * (b_gram + tl.trans(b_gram))
    # B * FLOOR as a float64 constant: a bare Python float would be rounded to float32 (by 4e-9 at B = 4)
    floor = tl.full([1, BLOCK], B * FLOOR, tl.float64)
    tolerance = tl.full([1, 1], RANK_TOLERANCE, tl.float64)
    # a float64 scalar argument (annotated); the interpreter passes a Python float, which tl.where would
    # round to float32: made a float64 tensor either way
    step = tl.full([], step, tl.float64)
    sq_norm_row = tl.sum(tl.where(m_diag, b_gram, 0.0), axis=1)[:, None]
    sq_norm_col = tl.sum(tl.where(m_diag, b_gram, 0.0), axis=0)[None, :]
    b_distance = _distances(b_gram, sq_norm_row, sq_norm_col, tolerance)
    if not COSINE:  # the median rule, once from the input
        bandwidth = _median_bandwidth(b_distance, o_row, o_col, B, BLOCK, LOG_B)
    # identical samples (squared distance at rounding level) get the same force: W <- A W A, A averaging them
    b_tie = tl.where((b_distance == 0.0) & m_in, 1.0, 0.0)
    b_tie = b_tie.to(tl.float64)
    for _ in range(TIE_ROUNDS):  # transitive closure: paths of length up to B
        b_tie = tl.where(_matmul(b_tie, b_tie) > 0.0, 1.0, 0.0).to(tl.float64)
    tied = tl.sum(tl.sum(tl.where(o_row != o_col, b_tie, 0.0), axis=1), axis=0) > 0.0
    b_tie = b_tie / tl.where(o_row < B, tl.sum(b_tie, axis=1)[:, None], 1.0)
    if COSINE:  # samples on one line through 0: every tangent force is 0
        # sqrt of each norm, not of their product, which underflows for tiny samples (|c|^2 < 1e-154)
        cosine = tl.abs(b_gram) / (
            tl.sqrt(tl.where(m_in, sq_norm_row, 1.0)) * tl.sqrt(tl.where(m_in, sq_norm_col, 1.0))
        )
        off_line = tl.sum(tl.sum(tl.where(m_in & (cosine < 1.0 - tolerance), 1, 0), axis=1), axis=0)
        step = tl.where(off_line > 0, step, 0.0)
    b_mixing = eye
    b_vectors = eye
    unconverged = tl.full([], 0, tl.int32)
    for _ in range(iterations):
        sq_norm_row = tl.sum(tl.where(m_diag, b_gram, 0.0), axis=1)[:, None]  # G_ii, indexed by row
        sq_norm_col = tl.sum(tl.where(m_diag, b_gram, 0.0), axis=0)[None, :]
        if COSINE:
            inv_sq_norm = tl.where(o_row < B, 1.0 / tl.where(o_row < B, sq_norm_row, 1.0), 0.0)
            inv_sq_norm_col = tl.where(o_col < B, 1.0 / tl.where(o_col < B, sq_norm_col, 1.0), 0.0)
            scaling = tl.sqrt(inv_sq_norm) * tl.sqrt(inv_sq_norm_col)
            b_kernel = b_gram * scaling
        else:
            distance = _distances(b_gram, sq_norm_row, sq_norm_col, tolerance)
            b_kernel = tl.where(m_in, tl.exp(-distance / bandwidth), 0.0)
        if VENDI:
            b_rotated = _matmul(_matmul(tl.trans(b_vectors), b_kernel), b_vectors)
            off = tl.sum(tl.sum(tl.where(o_row != o_col, b_rotated * b_rotated, 0.0), axis=1), axis=0)
            total = tl.sum(tl.sum(b_rotated * b_rotated, axis=1), axis=0)
            sweeps = 0
            # until the off-diagonal mass is eps^2 of the total, the backward error of LAPACK's eigh
            while (off > 1e-32 * total) & (sweeps < SWEEPS):
                for p in range(B - 1):
                    for q in range(p + 1, B):
                        b_rotated, b_vectors = _rotate(b_rotated, b_vectors, p, q, o_row, o_col)
                off = tl.sum(tl.sum(tl.where(o_row != o_col, b_rotated * b_rotated, 0.0), axis=1), axis=0)
                sweeps += 1
            unconverged = tl.maximum(unconverged, (off > 1e-32 * total).to(tl.int32))
            eigenvalues = tl.sum(tl.where(m_diag, b_rotated, 0.0), axis=0)[None, :]  # indexed by column
            log_eig = tl.where(o_col < B, tl.log(tl.maximum(eigenvalues, floor)) / -B, 0.0)
            b_objective = _matmul(b_vectors * log_eig, tl.trans(b_vectors))
        else:
            b_objective = tl.where(m_in, eye - 1.0, 0.0)
        if COSINE:
            b_force = b_objective * scaling
            b_force -= tl.where(m_diag, tl.sum(b_objective * b_kernel, axis=1)[:, None] * inv_sq_norm, 0.0)
            b_force *= 2.0
        else:
            b_force = b_objective * b_kernel / bandwidth
            b_force -= tl.where(m_diag, tl.sum(b_force, axis=1)[:, None], 0.0)
            b_force *= 4.0
        b_force = tl.where(m_in, b_force, 0.0)
        if tied:  # only where two samples are identical: two more [B, B, B] products per step
            b_force = _matmul(_matmul(b_tie, b_force), b_tie)
        b_transform = eye + step * b_force
        b_mixing = _matmul(b_transform, b_mixing)
        b_gram = _matmul(_matmul(b_transform, b_gram), b_transform)
        # G is symmetric, its computed update not quite; the steps amplify that skew part in the near-null
        # directions of K, and Jacobi, which cannot remove a skew part, would then not converge
        b_gram = 0.5 * (b_gram + tl.trans(b_gram))
    b_mix = b_mixing - eye
    m_bad = m_in & ~((b_mix == b_mix) & (tl.abs(b_mix) < float("inf")))  # NaN or Inf
    bad = tl.sum(tl.sum(tl.where(m_bad, 1, 0), axis=1), axis=0)
    tl.store(mix_ptr + o_mat, b_mix, mask=m_in)
    status = tl.where(bad > 0, NON_FINITE_STATUS, tl.where(unconverged > 0, NOT_CONVERGED_STATUS, SOLVED_STATUS))
    tl.store(status_ptr + i_g, status.to(tl.int32))


@triton.jit
def _distances(gram, sq_norm_row, sq_norm_col, tolerance):
    """d_ij = G_ii + G_jj - 2 G_ij, 0 at rounding level (as `fastrepulse.forces.squared_distances`)."""
    scale = sq_norm_row + sq_norm_col
    distance = scale - 2.0 * gram
    return tl.where(distance > tolerance * scale, distance, 0.0)


@triton.jit
def _median_bandwidth(distance, o_row, o_col, B: tl.constexpr, BLOCK: tl.constexpr, LOG_B: tl.constexpr):
    """h = median{d_ij : i < j} / log(B), inf where not > 0 (`fastrepulse.forces.rbf_bandwidth`; the median of an
    even count is the mean of the middle two). Ranks by counting, for each pair, the pairs before it: smaller,
    or equal and earlier (distinct ranks under ties); B - 1 rounds of [BLOCK, BLOCK, BLOCK] comparisons."""
    PAIRS: tl.constexpr = B * (B - 1) // 2
    m_pair = (o_row < o_col) & (o_col < B)
    o_pair = o_row * BLOCK + o_col
    o_l = tl.arange(0, BLOCK)
    rank = tl.zeros([BLOCK, BLOCK], dtype=tl.int32)
    for k in range(B - 1):  # the pairs (k, l), l > k, against every pair (i, j)
        d_k = tl.sum(tl.where(o_row == k, distance, 0.0), axis=0)  # [BLOCK], indexed by l
        earlier = (k * BLOCK + o_l)[None, None, :] < o_pair[:, :, None]
        # [BLOCK, BLOCK, BLOCK]
        before = (d_k[None, None, :] < distance[:, :, None]) | ((d_k[None, None, :] == distance[:, :, None]) & earlier)
        m_k = ((o_l > k) & (o_l < B))[None, None, :]
        rank += tl.sum(tl.where(m_k & before, 1, 0), axis=2)
    low = tl.sum(tl.sum(tl.where(m_pair & (rank == (PAIRS - 1) // 2), distance, 0.0), axis=1), axis=0)
    if PAIRS % 2 == 1:
        median = low
    else:
        high = tl.sum(tl.sum(tl.where(m_pair & (rank == PAIRS // 2), distance, 0.0), axis=1), axis=0)
        median = (low + high) * 0.5
    bandwidth = median / tl.full([], LOG_B, tl.float64)  # log(B) as a float64 constant, not rounded to float32
    return tl.where(bandwidth > 0.0, bandwidth, float("inf"))


def solve_on_device(
    gram: torch.Tensor,
    *,
    scale: float,
    iterations: int,
    objective: str,
    kernel: str,
    max_sweeps: int = MAX_SWEEPS,
    out: torch.Tensor | None = None,
    status: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixing matrices P - I [G, B, B] (float64, on gram's device) and a per-group status [G] (int32):
    SOLVED, NON_FINITE or NOT_CONVERGED (some eigendecomposition still off after `max_sweeps` sweeps).

    Same contract as `fastrepulse.solver.solve`, rbf bandwidth included (computed in the kernel). `gram` is
    either the Gram matrices [G, B, B] or their partial sums [G, S, B, B] (`kernels.gram_partials`), any
    float dtype, which the kernel adds in float64 in a fixed order. No host sync and no host-to-device copy;
    with `out` (float64 [G, B, B]) and `status` (int32 [G]) given, contiguous and on gram's device, nothing
    is allocated either (a CUDA-graph-capturable call, for a contiguous gram).

    >>> gram = torch.eye(3, dtype=torch.float64)[None]
    >>> mix, status = solve_on_device(gram, scale=1.0, iterations=2, objective="vendi", kernel="cosine")
    >>> status.tolist()
    [0]
    """
    if gram.dim() == 3:
        gram = gram[:, None]
    if gram.dim() != 4 or gram.shape[-1] != gram.shape[-2]:
        raise ValueError(f"gram must be [G, B, B] or [G, S, B, B], got {tuple(gram.shape)}")
    if not gram.is_floating_point():
        raise TypeError(f"gram must be a float tensor, got {gram.dtype}")
    num_groups, num_partials, size, _ = gram.shape
    if size > MAX_GROUP:
        raise ValueError(f"the device solver takes groups of at most {MAX_GROUP} samples, got {size}")
    out = _workspace("out", out, (num_groups, size, size), torch.float64, gram.device)
    status = _workspace("status", status, (num_groups,), torch.int32, gram.device)
    _solve_kernel[(num_groups,)](
        gram_ptr=gram.contiguous(),
        mix_ptr=out,
        status_ptr=status,
        step=scale / iterations,
        iterations=iterations,
        num_partials=num_partials,
        **solver_constants(size, objective, kernel, max_sweeps),
        num_warps=solver_warps(triton.next_power_of_2(size)),
        maxnreg=MAX_REGISTERS,
    )
    return out, status


def _workspace(
    name: str, given: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """`given`, checked to be a contiguous `dtype` tensor of `shape` on `device`, or a new one."""
    if given is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if given.shape != shape or given.dtype != dtype or given.device != device or not given.is_contiguous():
        raise ValueError(
            f"{name} must be a contiguous {dtype} tensor of shape {list(shape)} on {device}, got "
            f"{given.dtype} {list(given.shape)} on {given.device}" + ("" if given.is_contiguous() else " (strided)")
        )
    return given


def solver_constants(size: int, objective: str, kernel: str, max_sweeps: int = MAX_SWEEPS) -> dict[str, object]:
    """The compile-time arguments of `_solve_kernel` for one group size and objective/kernel pair."""
    return {
        "B": size,
        "BLOCK": triton.next_power_of_2(size),
        "VENDI": objective == "vendi",
        "COSINE": kernel == "cosine",
        "FLOOR": EIGENVALUE_FLOOR,
        "RANK_TOLERANCE": RANK_TOLERANCE,
        "LOG_B": math.log(size),
        "SWEEPS": max_sweeps,
        "TIE_ROUNDS": max(size - 1, 1).bit_length(),
        "SOLVED_STATUS": SOLVED,
        "NON_FINITE_STATUS": NON_FINITE,
        "NOT_CONVERGED_STATUS": NOT_CONVERGED,
    }
