"""`repel`: the exact contextual-repulsion operator, in two passes over the samples."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch

from fastrepulse.forces import KERNELS, OBJECTIVES, Kernel, Objective, rbf_bandwidth
from fastrepulse.profiling import APPLY_RANGE, GRAM_RANGE, SOLVE_RANGE
from fastrepulse.reference import apply_torch, gram_torch, repel_literal
from fastrepulse.solver import solve

Backend = Literal["auto", "triton", "torch", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "torch", "reference")
Solver = Literal["host", "device"]
SOLVERS: tuple[str, ...] = ("host", "device")
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)


def repel(
    x: torch.Tensor,
    *,
    scale: float,
    iterations: int = 50,
    group_size: int | None = None,
    objective: Objective = "vendi",
    kernel: Kernel = "cosine",
    backend: Backend = "auto",
    solver: Solver = "host",
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Push the samples of each group apart: `iterations` gradient-ascent steps on a diversity objective.

    Each sample ``x[i]`` is flattened to a vector c_i; samples form contiguous groups of `group_size`.
    The result equals `iterations` explicit steps ``c_i <- c_i + (scale / iterations) grad_{c_i} H``
    inside each group (the paper's Eq. 2), computed exactly in two passes: a Gram matrix per group,
    all steps on B x B matrices in float64, then ``x + (P - I) x``. See `fastrepulse.forces` for H.

    Args:
        x: samples [B, ...] in bfloat16, float16, float32 or float64; any strides.
        scale: total step size (the paper's eta), >= 0. Cosine forces scale like 1/|c|, so useful
            values grow with the samples' norm (the paper uses 5e2 .. 8e9).
        iterations: number of ascent steps (the paper's M), >= 0.
        group_size: samples per group; must divide B. Default: one group of all B samples.
        objective: "vendi" (von Neumann entropy of K / B) or "energy" (-sum_{i != j} K_ij).
        kernel: "cosine" or "rbf" (median-rule bandwidth, fixed from the input).
        backend: "triton" (fused kernels; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1),
            "torch" (same algorithm, eager, any device), "reference" (the paper's literal loop,
            2 x iterations passes) or "auto" (triton for CUDA tensors when Triton imports, else torch).
        solver: where the B x B steps run for backends triton and torch: "host" (float64 NumPy) or
            "device" (one Triton program per group, float64, groups of at most 16; needs Triton like
            backend="triton"). Both compute the same steps; "device" avoids the round trip to the host.
        out: where to write the result, same shape, dtype and device as x; may be x itself.

    Returns:
        The repelled samples, shape, dtype and device of x (`out` when given). Not differentiable.

    Raises:
        ValueError: non-finite samples, a zero sample under the cosine kernel, a group size that does
            not divide B, a bad argument, steps so large that the iteration diverged, or a result beyond
            the range of x's dtype. x and out are untouched when this is raised. A call with nothing to
            compute (scale 0, iterations 0, groups of one sample, an empty x) copies x and checks nothing.
        TypeError: a non-floating dtype, or an `out` that does not match x.

    Example:
        >>> x = torch.randn(4, 16, 8)
        >>> y = repel(x, scale=50.0, iterations=20, backend="torch")
        >>> y.shape
        torch.Size([4, 16, 8])
    """
    group_size = _check_arguments(x, scale, iterations, group_size, objective, kernel, backend, solver, out)
    backend = _resolve_backend(backend, x)
    if solver == "device" and backend != "reference":
        _check_triton(x, "solver='device'", "solver='host'")
    num_samples = x.shape[0]
    with torch.no_grad():
        if scale == 0 or iterations == 0 or group_size == 1 or x.numel() == 0:
            return x.clone() if out is None else _write(out, x)
        rows = x.reshape(num_samples, -1)
        if rows.stride(-1) != 1:
            rows = rows.contiguous()
        check = _gram_checker(kernel)
        if backend == "reference":
            update = _finite_steps(
                lambda: repel_literal(
                    rows,
                    group_size,
                    scale=scale,
                    iterations=iterations,
                    objective=objective,
                    kernel=kernel,
                    check_gram=check,
                ),
                scale,
                iterations,
            ).view(x.shape)
            result = update.to(x.dtype)
            _check_representable(result, x.dtype)
            return result if out is None else _write(out, result)

        gram_fn, apply_fn = _passes(backend)
        with GRAM_RANGE:
            gram = gram_fn(rows, group_size)
            if backend == "triton" and x.dtype != torch.float64:
                gram = _resolve_near_collinear(rows, gram, group_size)
        with SOLVE_RANGE:
            if solver == "device":
                mix = _solve_on_device(gram, check, scale, iterations, objective, kernel)
            else:
                gram = gram.cpu()
                check(gram)
                mix = _finite_steps(
                    lambda: solve(gram, scale=scale, iterations=iterations, objective=objective, kernel=kernel),
                    scale,
                    iterations,
                )
        with APPLY_RANGE:
            fits = _fits(gram, mix, x.dtype)
            if out is None:
                out = torch.empty_like(x, memory_format=torch.contiguous_format)
            if fits and out.is_contiguous():
                apply_fn(rows, mix, out.view(num_samples, -1))
            else:  # staged: a strided out, or a result that may overflow x's dtype (checked before it is written)
                staged = apply_fn(rows, mix, torch.empty_like(rows))
                if not fits:
                    _check_representable(staged, x.dtype)
                out.copy_(staged.view(x.shape))
    return out


NEAR_COLLINEAR = 1e-6
"""Cosines within this of +-1 are beyond what a float32-accumulated Gram resolves (~1e-7): such groups are summed
again in float64, so that identical, collinear and nearly identical samples get their exact answers."""


def _resolve_near_collinear(rows: torch.Tensor, gram: torch.Tensor, group_size: int) -> torch.Tensor:
    """`gram` with the groups whose samples all lie within NEAR_COLLINEAR of one line summed again in float64
    (an extra pass over those groups only; one sync on a GPU)."""
    inv_norm = gram.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(torch.float64).tiny).rsqrt()
    cosines = (gram * inv_norm[..., :, None] * inv_norm[..., None, :]).abs()
    near = (cosines >= 1.0 - NEAR_COLLINEAR).flatten(1).all(-1)
    if not bool(near.any()):
        return gram
    groups = near.nonzero().flatten()
    grouped = rows.view(gram.shape[0], group_size, -1)[groups]
    resolved = gram.clone()
    resolved[groups] = gram_torch(grouped.reshape(-1, grouped.shape[-1]), group_size).to(gram.device)
    return resolved


def _fits(gram: torch.Tensor, mix: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every element of x + (P - I) x surely fits in `dtype`: |x_il| + sum_j |D_ij| |x_jl| is at most
    |x_i| + sum_j |D_ij| |x_j| (norms from the Gram diagonal), a B x B bound that needs no pass over x."""
    norms = gram.diagonal(dim1=-2, dim2=-1).to(mix).clamp_min(0).sqrt()
    bound = norms + (mix.abs() @ norms.unsqueeze(-1)).squeeze(-1)
    return bool((bound <= torch.finfo(dtype).max).all())


def _check_representable(result: torch.Tensor, dtype: torch.dtype) -> None:
    if not torch.isfinite(result).all():
        raise ValueError(
            f"the repelled samples exceed the range of {dtype} (largest {torch.finfo(dtype).max:g}): lower scale, "
            "or repel a copy in a wider dtype"
        )


def _finite_steps(run: Callable[[], torch.Tensor], scale: float, iterations: int) -> torch.Tensor:
    """run(), where a blown-up iteration (eigh failing on non-finite state, a non-finite result) is one clear error."""
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            result = run()
    except np.linalg.LinAlgError as error:
        raise ValueError(_divergence(scale, iterations)) from error
    if not torch.isfinite(result).all():
        raise ValueError(_divergence(scale, iterations))
    return result


def _solve_on_device(
    gram: torch.Tensor,
    check: Callable[[torch.Tensor], None],
    scale: float,
    iterations: int,
    objective: str,
    kernel: str,
) -> torch.Tensor:
    """The device solver's P - I; one sync reads its per-group status, and a failure is explained."""
    from fastrepulse.kernels.solve import MAX_GROUP, MAX_SWEEPS, NON_FINITE, NOT_CONVERGED, SOLVED, solve_on_device

    if gram.shape[-1] > MAX_GROUP:
        raise ValueError(
            f"solver='device' takes groups of at most {MAX_GROUP} samples, got {gram.shape[-1]}; use solver='host'"
        )
    bandwidth = None
    if kernel == "rbf":  # the median rule, once from the input; a B x B copy to the host
        bandwidth = torch.from_numpy(rbf_bandwidth(gram.cpu().numpy()).reshape(-1)).to(gram.device)
    mix, status = solve_on_device(
        gram, scale=scale, iterations=iterations, objective=objective, kernel=kernel, bandwidth=bandwidth
    )
    status = status.cpu()
    if bool((status == SOLVED).all()):
        return mix
    check(gram.cpu())  # names NaN/Inf or zero samples, if those are the cause
    if not bool((status == NON_FINITE).any()):
        groups = (status == NOT_CONVERGED).nonzero().flatten().tolist()
        raise ValueError(
            f"the device solver's eigendecomposition did not converge in {MAX_SWEEPS} Jacobi sweeps for group(s) "
            f"{groups}; use solver='host'"
        )
    raise ValueError(_divergence(scale, iterations))


def _divergence(scale: float, iterations: int) -> str:
    return (
        f"repulsion diverged with scale={scale} and iterations={iterations}: the steps overshoot; "
        "lower scale or raise iterations"
    )


def _passes(backend: str) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    if backend == "triton":
        from fastrepulse.kernels import apply_update, gram

        return gram, apply_update
    return gram_torch, apply_torch


def _gram_checker(kernel: str) -> Callable[[torch.Tensor], None]:
    """A check of the first Gram matrices [G, B, B] that names the bad samples before anything is written."""

    def check(gram: torch.Tensor) -> None:
        sq_norm = gram.diagonal(dim1=-2, dim2=-1).reshape(-1)
        bad = (~torch.isfinite(sq_norm)).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"x has NaN or Inf values (or squares that overflow float32) in sample(s) {bad}; "
                "repel needs finite samples"
            )
        if kernel == "cosine":
            zero = (sq_norm == 0).nonzero().flatten().tolist()
            if zero:
                raise ValueError(
                    f"sample(s) {zero} of x are all zeros, which have no direction under kernel='cosine'; "
                    "drop them or use kernel='rbf'"
                )

    return check


def _check_arguments(
    x: torch.Tensor,
    scale: float,
    iterations: int,
    group_size: int | None,
    objective: str,
    kernel: str,
    backend: str,
    solver: str,
    out: torch.Tensor | None,
) -> int:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be bfloat16, float16, float32 or float64, got {x.dtype}; convert it with x.float()")
    if x.dim() < 1:
        raise ValueError("x must have a leading sample dimension [B, ...], got a 0-d tensor")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0, got {scale!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"iterations must be an int >= 0, got {iterations!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    num_samples = x.shape[0]
    if group_size is None:
        group_size = max(num_samples, 1)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if num_samples % group_size:
        raise ValueError(
            f"group_size={group_size} does not divide the {num_samples} samples of x (shape {tuple(x.shape)}); "
            "pass a divisor of x.shape[0]"
        )
    if out is not None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor, got {type(out).__name__}")
        if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:
            raise TypeError(
                f"out must match x: x is {tuple(x.shape)} {x.dtype} on {x.device}, "
                f"out is {tuple(out.shape)} {out.dtype} on {out.device}"
            )
    return group_size


def _resolve_backend(backend: str, x: torch.Tensor) -> str:
    if backend == "auto":
        return "triton" if x.is_cuda and _triton_available() else "torch"
    if backend == "triton":
        _check_triton(x, "backend='triton'", "backend='torch'")
    return backend


def _check_triton(x: torch.Tensor, option: str, alternative: str) -> None:
    if not _triton_available():
        raise ValueError(f"{option} needs the triton package; install it or use {alternative}")
    if not x.is_cuda and not _interpreting():
        raise ValueError(
            f"{option} runs on CUDA tensors, x is on {x.device}; use {alternative} "
            "(or set TRITON_INTERPRET=1 before importing triton to run the kernels on the CPU for tests)"
        )


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _interpreting() -> bool:
    from triton import knobs

    return bool(knobs.runtime.interpret)


def _write(out: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    if source is not out:
        out.copy_(source)
    return out
