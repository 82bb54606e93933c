"""Gram accuracy on a GPU against float64, per tiling: how tensor-core accumulation loses bits.

Tensor cores add into an accumulator with truncation, so the error grows with the chain of MMA steps
into one accumulator. This compares the default tiling (chains of at most tiling.MAX_CHAIN steps)
with 16x longer chains, with unsliced 16-row tiles, and with cuBLAS float32 on upcast inputs, on
prompt-like samples (cosine similarity about 0.99).

    python bench/gram_accuracy.py
"""

from __future__ import annotations

from dataclasses import replace

import torch

from fastrepulse.kernels import gram, pick_tiling

CASES = [(4, 1536 * 3072), (20, 1536 * 3072), (64, 512 * 3072), (4, 10**8)]


def relative_error(result: torch.Tensor, exact: torch.Tensor) -> float:
    return float((result - exact).norm() / exact.norm())


def main() -> None:
    print(f"{'dtype':8} {'B':>3} {'L':>10} {'tiling':>12} {'rel err':>9} {'cos err':>9}")
    for dtype in (torch.bfloat16, torch.float16):
        for size, length in CASES:
            shared = torch.randn(1, length, device="cuda")
            x = (shared + 0.1 * torch.randn(size, length, device="cuda")).to(dtype)
            exact = x.to(torch.float64) @ x.to(torch.float64).T if size * length <= 2e8 else None
            if exact is None:  # too large for a float64 copy: row blocks
                exact = sum(c.to(torch.float64) @ c.to(torch.float64).T for c in x.split(2**24, dim=1))
            inv = exact.diagonal().rsqrt()
            cos_exact = exact * inv[:, None] * inv[None, :]
            default = pick_tiling(size, length, dtype, x.device)
            variants = {"cublas-fp32": None, "default": default}
            longer = default.chunks_per_split * 16  # 16x longer accumulator chains, as without the split rule
            variants["chain x16"] = replace(
                default, chunks_per_split=longer, splits=-(-default.splits * default.chunks_per_split // longer)
            )
            if default.sliced:
                variants["unsliced"] = replace(default, block_k=default.block_l)
            for name, tiling in variants.items():
                try:
                    if tiling is None:
                        result = (x.float() @ x.float().T).double() if size * length <= 1e9 else None
                        if result is None:
                            continue
                    else:
                        result = gram(x, size, tiling)[0]
                except Exception as error:  # noqa: BLE001 - report and go on
                    print(f"{str(dtype)[6:]:8} {size:>3} {length:>10} {name:>12} failed: {str(error)[:60]}")
                    continue
                inv = result.diagonal().rsqrt()
                cos_err = float((result * inv[:, None] * inv[None, :] - cos_exact).abs().max())
                print(
                    f"{str(dtype)[6:]:8} {size:>3} {length:>10} {name:>12} "
                    f"{relative_error(result, exact):>9.2e} {cos_err:>9.2e}",
                    flush=True,
                )
            del x, shared


if __name__ == "__main__":
    main()
