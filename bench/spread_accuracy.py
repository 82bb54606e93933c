"""How close one prompt's samples may be and still get their update right: the relative error of the update
(result - x) against the float64 autograd oracle, per backend and dtype, as the group's spread shrinks.

In the first blocks the samples of one prompt are nearly identical, and the force on them depends on their small
differences: a Gram matrix summed in float32 cannot resolve cosines closer than ~1e-7 to 1. Samples are
``x_i = c + spread * n_i`` (|n_i| ~ |c|), moved by about a quarter of their spread.

    TRITON_INTERPRET=1 python bench/spread_accuracy.py        # CPU: the triton backend under the interpreter

Rows "triton (pipeline, device solver)" are the non-raising path of a patched pipeline with solver="device",
which skips the float64 re-summation of near-collinear groups (it would need a host sync).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from fastrepulse import repel
from fastrepulse.repulsion import Repulsion

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from oracle import literal_loop  # noqa: E402

SPREADS = (1e-1, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 1e-5, 1e-6)
SIZE, LENGTH, ITERATIONS = 4, 2048, 10
RESOLVED = 1e-3
"""The update counts as resolved where its relative error is at most this."""


def group(spread: float, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shared = torch.randn(1, LENGTH, dtype=torch.float64, generator=generator)
    return (shared + spread * torch.randn(SIZE, LENGTH, dtype=torch.float64, generator=generator)).to(dtype)


def update_error(x: torch.Tensor, backend: str, solver: str, strict: bool = True) -> float:
    """Relative error of the update of `backend` on x against the oracle (vendi, cosine), scale moving the
    samples by a quarter of their spread."""
    exact_x = x.to(torch.float64)
    spread = float((exact_x - exact_x.mean(0)).norm() / exact_x.mean(0).norm() / SIZE**0.5)
    one_step = literal_loop(x, scale=1.0, iterations=1, group_size=SIZE, objective="vendi", kernel="cosine")
    scale = float(0.25 * spread * exact_x.norm() / (one_step - exact_x).norm())
    expected = literal_loop(x, scale=scale, iterations=ITERATIONS, group_size=SIZE, objective="vendi", kernel="cosine")
    if strict:
        result = repel(x, scale=scale, iterations=ITERATIONS, backend=backend, solver=solver)
    else:
        result = x.clone()
        Repulsion(scale, ITERATIONS, "vendi", "cosine", backend, solver).run([result], [result], SIZE, strict=False)
    return float((result.to(torch.float64) - expected).norm() / (expected - exact_x).norm())


def main() -> None:
    rows = [("torch", "host", True), ("reference", "host", True), ("triton", "host", True), ("triton", "device", False)]
    print(f"| backend | dtype | {' | '.join(f'{s:g}' for s in SPREADS)} | smallest resolved |")
    print(f"|---|---|{'---|' * len(SPREADS)}---|")
    for backend, solver, strict in rows:
        for dtype in (torch.float64, torch.float32):
            errors = [update_error(group(spread, dtype), backend, solver, strict) for spread in SPREADS]
            resolved = [s for s, e in zip(SPREADS, errors, strict=True) if e <= RESOLVED]
            name = backend if strict else f"{backend} (pipeline, device solver)"
            smallest = f"{min(resolved):g}" if resolved else "none"
            cells = " | ".join(f"{error:.1e}" for error in errors)
            print(f"| {name} | {str(dtype).removeprefix('torch.')} | {cells} | {smallest} |")


if __name__ == "__main__":
    main()
