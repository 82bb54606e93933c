"""An independent float64 oracle: the paper's literal loop with autograd, and the comparison helpers.

Nothing here imports fastrepulse: the objective is written out from its definition and
differentiated by autograd, so the closed forms of the package are checked, not reused.
"""

from __future__ import annotations

import math

import torch

EIGENVALUE_FLOOR = 1e-12

# Largest allowed relative error of the update (result - x) per input dtype.
UPDATE_TOLERANCE = {
    torch.float64: 1e-5,
    torch.float32: 1e-3,
    torch.bfloat16: 2e-2,
    torch.float16: 2e-2,
}


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
