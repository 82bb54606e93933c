"""Plot a bench_kernels.py JSON: time per repel call by variant, and the two passes against the floor.

python bench/plot_kernels.py docs/benchmarks/h100-2026-11-26.json docs/benchmarks/h100-2026-11-26.png
"""

from __future__ import annotations

import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VARIANTS = {"reference": "paper-style loop", "torch": "torch (eager)", "triton-call": "triton (whole call)"}
COLORS = {"reference": "#c44e52", "torch": "#8172b2", "triton-call": "#4c72b0", "triton": "#55a868"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results")
    parser.add_argument("png")
    parser.add_argument("--dtype", default="bf16")
    parser.add_argument("--group-size", type=int, default=4)
    args = parser.parse_args()
    with open(args.results) as f:
        result = json.load(f)
    records = [r for r in result["kernels"] if r["dtype"] == args.dtype and r["iterations"] == 50]
    shapes = list(dict.fromkeys(r["shape"] for r in records))

    fig, (calls, passes) = plt.subplots(1, 2, figsize=(13, 4.6))
    width = 0.2
    for i, (variant, label) in enumerate([*VARIANTS.items(), ("triton", "triton: the two passes only")]):
        ms = [_ms(records, shape, args.group_size, variant) for shape in shapes]
        calls.bar([k + (i - 1.5) * width for k in range(len(shapes))], ms, width, label=label, color=COLORS[variant])
    calls.set_yscale("log")
    calls.set_xticks(range(len(shapes)), shapes, rotation=15)
    calls.set_ylabel("ms per call (log)")
    calls.set_title(f"repel, B={args.group_size} {args.dtype}, M=50: one call per block")
    calls.legend(fontsize=8)

    for shape in shapes:
        sizes = sorted({r["B"] for r in records if r["shape"] == shape})
        ratios = [
            next(r["floor_ratio"] for r in records if (r["shape"], r["B"], r["variant"]) == (shape, b, "triton"))
            for b in sizes
        ]
        passes.plot(sizes, ratios, marker="o", label=shape)
    passes.axhline(1.5, color="grey", linestyle="--", linewidth=1)
    passes.text(2, 1.55, "1.5x: read twice, write once", color="grey", fontsize=8)
    passes.set_xscale("log", base=2)
    passes.set_yscale("log")
    passes.set_xlabel("B (samples per group)")
    passes.set_ylabel("time / (read + write once at copy bandwidth)")
    passes.set_title(f"Gram + apply passes vs the memory floor ({args.dtype})")
    passes.legend(fontsize=8)
    fig.suptitle(f"{result['device']}, {result['date']}, triton {result['triton']}, torch {result['torch']}")
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)


def _ms(records: list[dict], shape: str, size: int, variant: str) -> float:
    return next(r["ms"] for r in records if (r["shape"], r["B"], r["variant"]) == (shape, size, variant))


if __name__ == "__main__":
    main()
