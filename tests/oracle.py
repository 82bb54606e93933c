"""An independent float64 oracle: the paper's literal loop with autograd, and the comparison helpers.

Nothing here imports fastrepulse: the objective is written out from its definition and
differentiated by autograd, so the closed forms of the package are checked, not reused.
"""

from __future__ import annotations

import math

import torch

EIGENVALUE_FLOOR = 1e-12

UPDATE_TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}
"""Largest relative error of the update (result - x) for wide dtypes. Measured over every parity case and two
seeds: float64 at most 2.4e-14 (every backend), float32 at most 3.2e-6 (the literal loop's 50 float32 steps;
the Gram-space backends 4e-7)."""

ROUNDING_SLACK = 3e-5
"""16-bit results must be the float64 answer correctly rounded, up to this much of max|P - I| sum_j |x_j| per
element before the rounding (float32 Gram and mixing matrix, the apply kernel's 16-bit split: measured up to
3.7e-6); rounding twice, or truncating, is off by up to half an ulp of the update itself, ~1e-3 of that."""


def _kernel(c: torch.Tensor, kernel: str, bandwidth: torch.Tensor | None) -> torch.Tensor:
    if kernel == "cosine":
        u = c / c.norm(dim=1, keepdim=True)
        return u @ u.T
    return torch.exp(-torch.cdist(c, c).square() / bandwidth)


def _objective(k: torch.Tensor, objective: str) -> torch.Tensor:
    if objective == "vendi":
        lam = torch.linalg.eigvalsh(k / k.shape[0])
        return -(lam * lam.clamp_min(EIGENVALUE_FLOOR).log()).sum()
    return -(k.sum() - k.diagonal().sum())


def median_bandwidth(c: torch.Tensor) -> torch.Tensor:
    """median_{i<j} |c_i - c_j|^2 / log(B), the documented rbf rule."""
    size = c.shape[0]
    i, j = torch.triu_indices(size, size, offset=1)
    return _median((c[i] - c[j]).square().sum(-1)) / math.log(size)


def _median(values: torch.Tensor) -> torch.Tensor:
    ordered = values.sort().values
    mid = ordered.numel() // 2
    return ordered[mid] if ordered.numel() % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def literal_loop(
    x: torch.Tensor, *, scale: float, iterations: int, group_size: int, objective: str, kernel: str
) -> torch.Tensor:
    """`iterations` steps c <- c + (scale / iterations) grad H per group, in float64 with autograd."""
    flat = x.detach().to(torch.float64).reshape(x.shape[0], -1)
    groups = []
    for c in flat.split(group_size):
        bandwidth = median_bandwidth(c) if kernel == "rbf" else None
        for _ in range(iterations):
            c = c.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(_objective(_kernel(c, kernel, bandwidth), objective), c)
            c = c.detach() + (scale / iterations) * grad
        groups.append(c)
    return torch.cat(groups).reshape(x.shape)


def group_vendi(x: torch.Tensor, group_size: int, kernel: str = "cosine", bandwidth_from: torch.Tensor | None = None):
    """Vendi score exp(H) of every group [G], from its definition; rbf bandwidths from `bandwidth_from` (x)."""
    flat = x.detach().to(torch.float64).reshape(x.shape[0], -1)
    source = flat if bandwidth_from is None else bandwidth_from.detach().to(torch.float64).reshape(x.shape[0], -1)
    scores = []
    for c, c_source in zip(flat.split(group_size), source.split(group_size), strict=True):
        bandwidth = median_bandwidth(c_source) if kernel == "rbf" else None
        scores.append(torch.exp(_objective(_kernel(c, kernel, bandwidth), "vendi")))
    return torch.stack(scores)


def assert_update_close(result: torch.Tensor, x: torch.Tensor, expected: torch.Tensor, tol: float, label: str) -> None:
    """Relative error of the update |(result - x) - (expected - x)| / |expected - x| <= tol, with a labelled report."""
    assert result.shape == x.shape and result.dtype == x.dtype, f"{label}: got {result.shape} {result.dtype}"
    got = result.detach().to(torch.float64) - x.detach().to(torch.float64)
    want = expected.to(torch.float64) - x.detach().to(torch.float64)
    assert torch.isfinite(got).all(), f"{label}: non-finite values in the result (unwritten or NaN)"
    err = (got - want).norm() / want.norm()
    if not err <= tol:
        diff = (got - want).abs().flatten()
        worst = diff.topk(min(5, diff.numel())).indices
        rows = "\n".join(
            f"  [{tuple(int(v) for v in torch.unravel_index(k, x.shape))}] got {got.flatten()[k]:+.6e} "
            f"want {want.flatten()[k]:+.6e}"
            for k in worst
        )
        raise AssertionError(f"{label}: relative update error {err:.3e} > {tol:.0e}; worst elements:\n{rows}")


def assert_matches_oracle(
    result: torch.Tensor, x: torch.Tensor, expected: torch.Tensor, group_size: int, label: str
) -> None:
    """result against the oracle's float64 `expected` for input x: float32/float64 by the relative error of the
    update, 16-bit as correctly rounded from `expected` (the bound on the error before rounding follows from
    the group's P - I, recovered from the oracle as expected = P x)."""
    if x.element_size() > 2:
        assert_update_close(result, x, expected, UPDATE_TOLERANCE[x.dtype], label)
        return
    assert result.shape == x.shape and result.dtype == x.dtype, f"{label}: got {result.shape} {result.dtype}"
    rows = x.to(torch.float64).reshape(-1, group_size, x[0].numel())
    exact = expected.to(torch.float64).reshape(rows.shape)
    mix = exact @ rows.mT @ torch.linalg.inv(rows @ rows.mT) - torch.eye(group_size, dtype=torch.float64)
    bound = mix.abs().amax((1, 2), keepdim=True) * rows.abs().sum(1, keepdim=True)
    slack = ROUNDING_SLACK * bound + 2.0**-22 * rows.abs()
    assert_correctly_rounded(result.reshape(rows.shape), exact, slack.expand_as(rows), label)


def assert_correctly_rounded(result: torch.Tensor, exact: torch.Tensor, slack: torch.Tensor, label: str) -> None:
    """16-bit results rounded once: |result - exact| <= ulp(result) / 2 + slack, elementwise.

    slack is the caller's absolute bound on the error before the final rounding (float64 inputs).
    """
    assert torch.isfinite(result).all(), f"{label}: non-finite values in the result (unwritten or NaN)"
    magnitude = result.abs()
    ulp = (torch.nextafter(magnitude, torch.full_like(magnitude, float("inf"))) - magnitude).to(torch.float64)
    excess = (result.to(torch.float64) - exact).abs() - (0.5 * ulp + slack)
    worst = int(excess.argmax())
    assert excess.flatten()[worst] <= 0, (
        f"{label}: element {worst} is {result.flatten()[worst].item():+.6e}, exact {exact.flatten()[worst].item():+.6e}"
        f" (half an ulp {0.5 * ulp.flatten()[worst].item():.2e}, slack {slack.flatten()[worst].item():.2e})"
    )
