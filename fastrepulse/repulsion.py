"""`repel`: the exact contextual-repulsion operator, in two passes over the samples."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from fastrepulse.forces import KERNELS, OBJECTIVES, Kernel, Objective
from fastrepulse.profiling import APPLY_RANGE, GRAM_RANGE, SOLVE_RANGE
from fastrepulse.reference import accumulation_dtype, apply_torch, gram_torch, repel_literal
from fastrepulse.solver import compiled_passes, result_bound, solve_groups
from fastrepulse.status import BAD_SAMPLES, MAY_OVERFLOW, NON_FINITE, NOT_CONVERGED, SOLVED
from fastrepulse.workspace import Workspaces

Backend = Literal["auto", "triton", "torch", "reference"]
BACKENDS: tuple[str, ...] = ("auto", "triton", "torch", "reference")
Solver = Literal["host", "device"]
SOLVERS: tuple[str, ...] = ("host", "device")
FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
_LARGEST = {dtype: torch.finfo(dtype).max for dtype in FLOAT_DTYPES}


def repel(
    x: torch.Tensor | Sequence[torch.Tensor],
    *,
    scale: float,
    iterations: int = 50,
    group_size: int | None = None,
    objective: Objective = "vendi",
    kernel: Kernel = "cosine",
    backend: Backend = "auto",
    solver: Solver = "host",
    out: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> torch.Tensor | list[torch.Tensor]:
    """Push the samples of each group apart: `iterations` gradient-ascent steps on a diversity objective.

    Each sample ``x[i]`` is flattened to a vector c_i; samples form contiguous groups of `group_size`.
    The result equals `iterations` explicit steps ``c_i <- c_i + (scale / iterations) grad_{c_i} H``
    inside each group (the paper's Eq. 2), computed exactly in two passes: a Gram matrix per group,
    all steps on B x B matrices in float64, then ``x + (P - I) x``. See `fastrepulse.forces` for H.

    Args:
        x: samples [B, ...] in bfloat16, float16, float32 or float64; any strides. Or a list of parts of the
            same samples ([B, ...] each, one dtype and device): sample i is then the concatenation of every
            part's ``[i]`` (e.g. the text and the image tokens of a joint sequence), one P is computed from the
            sum of the parts' Gram matrices and applied to each part, with no concatenated copy.
        scale: total step size (the paper's eta), >= 0. Cosine forces scale like 1/|c|, so useful
            values grow with the samples' norm (the paper uses 5e2 .. 8e9).
        iterations: number of ascent steps (the paper's M), >= 0.
        group_size: samples per group; must divide B. Default: one group of all B samples.
        objective: "vendi" (von Neumann entropy of K / B) or "energy" (-sum_{i != j} K_ij).
        kernel: "cosine" or "rbf" (median-rule bandwidth, fixed from the input).
        backend: "triton" (fused kernels; CUDA tensors, or CPU tensors under TRITON_INTERPRET=1),
            "torch" (same algorithm, eager, any device), "reference" (the paper's literal loop,
            2 x iterations passes) or "auto" (triton for CUDA tensors when Triton imports, else torch).
        solver: where the B x B steps run for backends triton and torch: "host" (float64, numba-compiled) or
            "device" (one Triton program per group, float64, groups of at most 16; needs Triton like
            backend="triton"). Both compute the same steps; "device" avoids the round trip to the host.
        out: where to write the result, same shape, dtype and device as x (a list like x for a list); may be x
            itself. A strided view (a slice of a bigger tensor) is written in place where its last dimension has
            unit stride.

    Returns:
        The repelled samples, shape, dtype and device of x (`out` when given; a list for a list). Not
        differentiable.

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
    single = isinstance(x, torch.Tensor)
    parts = [x] if single else list(x)
    outs = None if out is None else [out] if isinstance(out, torch.Tensor) and single else list(out)
    group_size = _check_arguments(parts, scale, iterations, group_size, objective, kernel, backend, solver, outs)
    repulsion = Repulsion(scale, iterations, objective, kernel, backend, solver)
    resolved = repulsion.backend_for(parts[0])
    with torch.no_grad():
        if scale == 0 or iterations == 0 or group_size == 1 or sum(part.numel() for part in parts) == 0:
            results = [part.clone() for part in parts] if outs is None else list(map(_write, outs, parts))
        elif resolved == "reference":
            results = _repel_literal(parts, outs, group_size, repulsion)
        else:
            if outs is None:
                outs = [torch.empty_like(part, memory_format=torch.contiguous_format) for part in parts]
            repulsion.run(parts, outs, group_size, strict=True)
            results = outs
    return results[0] if single else results


@dataclass(frozen=True)
class Repulsion:
    """The options of `repel`, checked once: what a pipeline's hooks run for every block (`run`).

    `run` is `repel` on already-checked tensors. With ``strict=False`` (inside a pipeline) a group that cannot be
    repelled (its steps diverge, its samples are not finite, its result would overflow) is left as it was and
    reported in the returned status instead of raising, and the device solver's path never waits for the GPU; with
    `workspaces` that path also allocates nothing once it has met a shape (`fastrepulse.workspace`).
    """

    scale: float
    iterations: int
    objective: str
    kernel: str
    backend: str
    solver: str
    workspaces: Workspaces | None = field(default=None, compare=False)

    def backend_for(self, x: torch.Tensor) -> str:
        """The backend that runs for samples like x ("auto" resolved; "triton", and "device" solver, checked)."""
        backend = _resolve_backend(self.backend, x)
        if self.solver == "device" and backend != "reference":
            _check_triton(x, "solver='device'", "solver='host'")
        return backend

    def run(
        self, parts: list[torch.Tensor], outs: list[torch.Tensor], group_size: int, *, strict: bool
    ) -> np.ndarray | torch.Tensor:
        """Repel the samples made of `parts` into `outs` (each may be its part); returns the `fastrepulse.status`
        code of each group [G]: a NumPy array, or with the device solver and not `strict` an int32 tensor on the
        device (not read here: no sync). Raises if `strict` and some group fails, before anything is written."""
        backend = self.backend_for(parts[0])
        dtype = parts[0].dtype
        rows = [_rows(part) for part in parts]
        if backend == "torch" and self.solver == "host":
            status = self._run_compiled(rows, outs, group_size, strict)
            if status is not None and not (strict and status.any()):
                return status  # strict and failed: nothing was written, the path below explains the failure
        gram_fn, apply_fn = _passes(backend)
        with GRAM_RANGE:
            if backend == "triton" and self.solver == "device" and not strict:
                gram = self._gram_partials(rows, group_size)
            else:
                gram = gram_fn(rows[0], group_size)
                for more in rows[1:]:
                    gram = gram + gram_fn(more, group_size)
                if backend == "triton" and dtype != torch.float64:
                    gram = _resolve_near_collinear(rows, gram, group_size)
        with SOLVE_RANGE:
            if self.solver == "device":
                mix, status = self._solve_on_device(gram, dtype, strict)
            else:
                mix, status = self._solve_on_host(gram, dtype, strict)
        with APPLY_RANGE:
            skip = status
            if isinstance(status, np.ndarray):  # from the host (or a strict device solve): settled here
                if status.any():  # SOLVED is 0
                    mix, status = self._settle(rows, mix, status, group_size, apply_fn, strict)
                skip = torch.from_numpy(status).to(parts[0].device) if status.any() else None
            for part_rows, out in zip(rows, outs, strict=True):
                out_rows = _rows_view(out)
                if out_rows is not None:
                    apply_fn(part_rows, mix, out_rows, skip)
                else:  # an out whose rows are not [B, L] views: written through a staged copy
                    out.copy_(apply_fn(part_rows, mix, torch.empty_like(part_rows), skip).view(out.shape))
        return status

    def _run_compiled(
        self, rows: list[torch.Tensor], outs: list[torch.Tensor], group_size: int, strict: bool
    ) -> np.ndarray | None:
        """Both passes and the solve of one CPU part (float32 or float64) compiled, without a torch call
        (`fastrepulse.compiled_solver.repel_rows_compiled`): the status codes, or None where it does not apply (numba
        missing, another device or dtype, several parts). An out whose rows are not a view is written through a
        staged copy, as the torch passes do."""
        x = rows[0]
        repel_rows = compiled_passes() if len(rows) == 1 else None
        if repel_rows is None or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return None
        out_rows = _rows_view(outs[0])
        target = x.clone() if out_rows is None else out_rows
        options = {"scale": self.scale, "iterations": self.iterations, "objective": self.objective}
        options.update(kernel=self.kernel, limit=_LARGEST[x.dtype], strict=strict)
        with SOLVE_RANGE:
            status = repel_rows(x.detach().numpy(), target.detach().numpy(), group_size, **options)
        if out_rows is None and not (strict and status.any()):
            outs[0].copy_(target.view(outs[0].shape))
        return status

    def _solve_on_host(self, gram: torch.Tensor, dtype: torch.dtype, strict: bool) -> tuple[torch.Tensor, np.ndarray]:
        if gram.device.type != "cpu" or gram.dtype != torch.float64:
            gram = gram.to(device="cpu", dtype=torch.float64)
        options = {"scale": self.scale, "iterations": self.iterations, "objective": self.objective}
        mix, status = solve_groups(gram.numpy(), **options, kernel=self.kernel, limit=_LARGEST[dtype])
        if strict and status.any():
            if (status == BAD_SAMPLES).any():
                _gram_checker(self.kernel)(gram)  # names the NaN/Inf or zero samples
            if (status == NON_FINITE).any():
                raise ValueError(_divergence(self.scale, self.iterations))
        return torch.from_numpy(mix), status

    def _gram_partials(self, rows: list[torch.Tensor], group_size: int) -> torch.Tensor:
        """The Gram kernel's per-program partial sums of every part, side by side in one buffer [G, S, B, B]: the
        solve kernel adds them up itself (one launch fewer than `gram`)."""
        from fastrepulse.kernels import gram_partials, pick_tiling

        first = rows[0]
        tilings = [pick_tiling(group_size, part_rows.shape[1], first.dtype, first.device) for part_rows in rows]
        shape = (first.shape[0] // group_size, sum(tiling.splits for tiling in tilings), group_size, group_size)
        dtype = accumulation_dtype(first.dtype)
        if self.workspaces is None:
            partials = torch.empty(shape, dtype=dtype, device=first.device)
        else:
            partials = self.workspaces.buffer("gram partials", shape, dtype, first.device)
        start = 0
        for part_rows, tiling in zip(rows, tilings, strict=True):
            gram_partials(part_rows, group_size, tiling, out=partials[:, start : start + tiling.splits])
            start += tiling.splits
        return partials

    def _solve_on_device(
        self, gram: torch.Tensor, dtype: torch.dtype, strict: bool
    ) -> tuple[torch.Tensor, torch.Tensor | np.ndarray]:
        """The device solver's P - I and status. Not strict: the status stays on the device. Strict: one sync reads
        it, a failure is explained, and groups whose result may overflow `dtype` are marked MAY_OVERFLOW."""
        from fastrepulse.kernels.solve import MAX_GROUP, MAX_SWEEPS, solve_on_device

        if gram.shape[-1] > MAX_GROUP:
            raise ValueError(
                f"solver='device' takes groups of at most {MAX_GROUP} samples, got {gram.shape[-1]}; use solver='host'"
            )
        options = {"scale": self.scale, "iterations": self.iterations, "objective": self.objective}
        if not strict and self.workspaces is not None:  # P - I is used up by this block, the status at the call end
            groups, size = gram.shape[0], gram.shape[-1]
            options["out"] = self.workspaces.buffer("mix", (groups, size, size), torch.float64, gram.device)
            options["status"] = self.workspaces.status(groups, gram.device)
        mix, status = solve_on_device(gram, **options, kernel=self.kernel)
        if not strict:
            return mix, status
        status = status.cpu().numpy()
        if (status != SOLVED).any():
            _gram_checker(self.kernel)(gram.cpu())  # names NaN/Inf or zero samples, if those are the cause
            if not (status == NON_FINITE).any():
                groups = np.flatnonzero(status == NOT_CONVERGED).tolist()
                raise ValueError(
                    f"the device solver's eigendecomposition did not converge in {MAX_SWEEPS} Jacobi sweeps for "
                    f"group(s) {groups}; use solver='host'"
                )
            raise ValueError(_divergence(self.scale, self.iterations))
        status[result_bound(gram.cpu().numpy(), mix.cpu().numpy()) > _LARGEST[dtype]] = MAY_OVERFLOW
        return mix, status

    def _settle(
        self,
        rows: list[torch.Tensor],
        mix: torch.Tensor,
        status: np.ndarray,
        group_size: int,
        apply_fn: Callable[..., torch.Tensor],
        strict: bool,
    ) -> tuple[torch.Tensor, np.ndarray]:
        """The host solver's groups that may overflow x's dtype, applied into a staged copy and checked: those that
        do are refused (strict) or left as they were (MAY_OVERFLOW kept), the others become SOLVED."""
        risky = np.flatnonzero(status == MAY_OVERFLOW)
        if risky.size == 0:
            return mix, status
        status = status.copy()
        for g in risky.tolist():
            fits = True
            for part_rows in rows:
                group = part_rows[g * group_size : (g + 1) * group_size]
                staged = apply_fn(group, mix[g : g + 1], torch.empty_like(group), None)  # in x's dtype: Inf past it
                fits = fits and bool(torch.isfinite(staged).all())
            if fits:
                status[g] = SOLVED
            elif strict:
                raise ValueError(_overflow(rows[0].dtype))
        mix = mix.clone()
        mix[torch.from_numpy(status != SOLVED).to(mix.device)] = 0.0
        return mix, status


NEAR_COLLINEAR = 1e-5
"""Cosines within this of +-1 are beyond what a float32-accumulated Gram resolves to the update's 1e-3 (it gets
cosines to ~1e-7): such groups (samples within ~3e-3 of one line, as one prompt's samples in early blocks) are summed
again in float64, so that identical, collinear and nearly identical samples get their answers
(bench/spread_accuracy.py: at 1e-6 a band of spreads 1.4e-3 .. 3e-3 was off by up to 2e-3)."""


def _resolve_near_collinear(rows: list[torch.Tensor], gram: torch.Tensor, group_size: int) -> torch.Tensor:
    """`gram` with the groups whose samples all lie within NEAR_COLLINEAR of one line summed again in float64
    (an extra pass over those groups only; one sync on a GPU)."""
    inv_norm = gram.diagonal(dim1=-2, dim2=-1).clamp_min(torch.finfo(torch.float64).tiny).rsqrt()
    cosines = (gram * inv_norm[..., :, None] * inv_norm[..., None, :]).abs()
    near = (cosines >= 1.0 - NEAR_COLLINEAR).flatten(1).all(-1)
    if not bool(near.any()):
        return gram
    groups = near.nonzero().flatten()
    resolved = gram.clone()
    resolved[groups] = 0.0
    for part_rows in rows:
        grouped = part_rows.view(gram.shape[0], group_size, -1)[groups]
        resolved[groups] += gram_torch(grouped.reshape(-1, grouped.shape[-1]), group_size).to(gram.device)
    return resolved


def _overflow(dtype: torch.dtype) -> str:
    return (
        f"the repelled samples exceed the range of {dtype} (largest {torch.finfo(dtype).max:g}): lower scale, "
        "or repel a copy in a wider dtype"
    )


def _repel_literal(
    parts: list[torch.Tensor], outs: list[torch.Tensor] | None, group_size: int, repulsion: Repulsion
) -> list[torch.Tensor]:
    """backend="reference": the paper's loop on the concatenated parts, checked before anything is written."""
    num_samples, dtype = parts[0].shape[0], parts[0].dtype
    rows = torch.cat([part.reshape(num_samples, -1) for part in parts], dim=1)
    options = {"scale": repulsion.scale, "iterations": repulsion.iterations, "objective": repulsion.objective}
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            update = repel_literal(
                rows, group_size, **options, kernel=repulsion.kernel, check_gram=_gram_checker(repulsion.kernel)
            )
    except np.linalg.LinAlgError as error:
        raise ValueError(_divergence(repulsion.scale, repulsion.iterations)) from error
    if not torch.isfinite(update).all():
        raise ValueError(_divergence(repulsion.scale, repulsion.iterations))
    result = update.view(num_samples, -1).to(dtype)
    if not torch.isfinite(result).all():
        raise ValueError(_overflow(dtype))
    pieces = result.split([part[0].numel() for part in parts], dim=1)
    if outs is None:
        return [piece.reshape(part.shape) for piece, part in zip(pieces, parts, strict=True)]
    return [_write(out, piece.view(out.shape)) for out, piece in zip(outs, pieces, strict=True)]


def _rows(part: torch.Tensor) -> torch.Tensor:
    """The samples of `part` as rows [B, L] with unit stride along L: a view where the strides allow, else a copy."""
    rows = _rows_view(part)
    return rows if rows is not None else part.reshape(part.shape[0], -1).contiguous()


def _rows_view(part: torch.Tensor) -> torch.Tensor | None:
    """`part` as rows [B, L] with unit stride along L, as a view (written through, any row stride), or None."""
    try:
        rows = part.view(part.shape[0], -1)
    except RuntimeError:
        return None
    return rows if rows.stride(-1) == 1 or rows.shape[-1] <= 1 else None


def _divergence(scale: float, iterations: int) -> str:
    return (
        f"repulsion diverged with scale={scale} and iterations={iterations}: the steps overshoot; "
        "lower scale or raise iterations"
    )


def _passes(backend: str) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """The Gram pass ``gram(rows, group_size)`` and the apply pass ``apply(rows, mix, out_rows, status)``."""
    if backend == "triton":
        from fastrepulse.kernels import apply_update, gram

        return gram, lambda rows, mix, out, status: apply_update(rows, mix, out, status=status)
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
    parts: list[torch.Tensor],
    scale: float,
    iterations: int,
    group_size: int | None,
    objective: str,
    kernel: str,
    backend: str,
    solver: str,
    outs: list[torch.Tensor] | None,
) -> int:
    if not parts:
        raise ValueError("x must be a tensor or a non-empty list of tensors")
    for x in parts:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor or a list of them, got {type(x).__name__}")
        if x.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"x must be bfloat16, float16, float32 or float64, got {x.dtype}; convert it with x.float()"
            )
        if x.dim() < 1:
            raise ValueError("x must have a leading sample dimension [B, ...], got a 0-d tensor")
    first = parts[0]
    for x in parts[1:]:
        if x.shape[0] != first.shape[0] or x.dtype != first.dtype or x.device != first.device:
            raise ValueError(
                "the parts of x must be parts of the same samples: one leading size, dtype and device, got "
                f"{[(tuple(part.shape), part.dtype, str(part.device)) for part in parts]}"
            )
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
    num_samples = first.shape[0]
    if group_size is None:
        group_size = max(num_samples, 1)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    if num_samples % group_size:
        raise ValueError(
            f"group_size={group_size} does not divide the {num_samples} samples of x (shape {tuple(first.shape)}); "
            "pass a divisor of x.shape[0]"
        )
    if outs is not None:
        if len(outs) != len(parts):
            raise TypeError(f"out must be a list of {len(parts)} tensors like x, got {len(outs)}")
        for x, out in zip(parts, outs, strict=True):
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


@functools.cache
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
