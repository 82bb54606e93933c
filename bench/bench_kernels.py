"""GPU microbenchmark of repel at the real models' shapes: triton passes, whole calls, eager and reference.

Times with triton.testing.do_bench (median, L2 flushed before every run) and writes one JSON record
per (shape, B, dtype, iterations, variant):

    {shape, B, dtype, iterations, variant, ms, gbps, floor_ratio, solve_ms}

`triton` times the two passes over the tensor (Gram + apply, the solver's output precomputed);
`solve_ms` is the host float64 solver on its own. `triton-call`, `torch` and `reference` time the
whole `repel` call. gbps counts one read and one write of the tensor; floor_ratio is ms over the time
the card's measured device copy needs for those bytes.

    python bench/bench_kernels.py --out results.json [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass

import torch
import triton.testing

from fastrepulse import repel
from fastrepulse.kernels import apply_update, gram
from fastrepulse.solver import solve

SHAPES = {
    "flux-text": (512, 3072),
    "flux-single-512": (1536, 3072),
    "flux-single-1024": (4608, 3072),
    "sd35-large-text": (333, 2432),
    "sd3-medium-text": (333, 1536),
}
GROUP_SIZES = (2, 4, 8, 16)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SCALE = 1e3  # moderate: timing does not depend on it, but the iteration must stay finite
ITERATIONS = (50, 100)
CALL_ITERATIONS = 50
DEVICE = "cuda"


@dataclass
class Record:
    shape: str
    B: int
    dtype: str
    iterations: int
    variant: str
    ms: float
    gbps: float
    floor_ratio: float
    solve_ms: float | None = None


def copy_bandwidth_gbps() -> float:
    """Device copy bandwidth (bytes read + written per second) on a 1 GiB buffer, in GB/s."""
    src = torch.randn(2**28, device=DEVICE)
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    return 2 * src.numel() * src.element_size() / ms / 1e6


def host_solve_ms(gram_matrix: torch.Tensor, iterations: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        solve(gram_matrix, scale=SCALE, iterations=iterations, objective="vendi", kernel="cosine")
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2]


def bench_case(name: str, size: int, dtype_name: str, iterations: int, copy_gbps: float, quick: bool) -> list[Record]:
    tokens, dim = SHAPES[name]
    dtype = DTYPES[dtype_name]
    shared = torch.randn(1, tokens, dim, device=DEVICE)
    x = (shared + 0.5 * torch.randn(size, tokens, dim, device=DEVICE)).to(dtype)
    rows = x.view(size, -1)
    out = torch.empty_like(rows)
    nbytes = 2 * x.numel() * x.element_size()
    gram_matrix = gram(rows, size).cpu()
    mix = solve(gram_matrix, scale=SCALE, iterations=iterations, objective="vendi", kernel="cosine").to(DEVICE)

    def record(variant: str, ms: float, solve_ms: float | None = None) -> Record:
        floor_ms = nbytes / (copy_gbps * 1e6)
        return Record(name, size, dtype_name, iterations, variant, ms, nbytes / ms / 1e6, ms / floor_ms, solve_ms)

    def median_ms(fn) -> float:
        return triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 100, return_mode="median")

    def passes() -> None:
        gram(rows, size)
        apply_update(rows, mix, out)

    records = [record("triton", median_ms(passes), host_solve_ms(gram_matrix, iterations))]
    if iterations == CALL_ITERATIONS:  # the passes do not depend on M; whole calls are timed at one M
        for variant, backend in (("triton-call", "triton"), ("torch", "torch"), ("reference", "reference")):
            call_ms = median_ms(lambda backend=backend: repel(x, scale=SCALE, iterations=iterations, backend=backend))
            records.append(record(variant, call_ms))
    return records


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="shorter timing windows")
    args = parser.parse_args()
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    copy_gbps = copy_bandwidth_gbps()
    records: list[Record] = []
    for name in SHAPES:
        for dtype_name in DTYPES:
            for size in GROUP_SIZES:
                for iterations in ITERATIONS:
                    case = bench_case(name, size, dtype_name, iterations, copy_gbps, args.quick)
                    records += case
                    print(
                        " ".join(f"{r.variant}={r.ms:.3f}ms" for r in case),
                        f"<- {name} B{size} {dtype_name} M{iterations} solve={case[0].solve_ms:.2f}ms",
                        flush=True,
                    )
    result = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else DEVICE,
        "copy_gbps": copy_gbps,
        "torch": torch.__version__,
        "triton": triton.__version__,
        "kernels": [asdict(r) for r in records],
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print_table(result)
    return 0


def print_table(result: dict) -> None:
    print(f"\n{result['device']}: device copy {result['copy_gbps']:.0f} GB/s (read + write)")
    print(
        f"{'shape':17} {'B':>2} {'dtype':5} {'M':>3} {'passes ms':>9} {'floor x':>7} {'solve ms':>8} "
        f"{'call ms':>8} {'torch ms':>8} {'ref ms':>8} {'ref/call':>8}"
    )
    rows: dict[tuple, dict] = {}
    for r in result["kernels"]:
        rows.setdefault((r["shape"], r["B"], r["dtype"], r["iterations"]), {})[r["variant"]] = r
    nan = float("nan")
    for (shape, size, dtype, iterations), v in rows.items():
        call, torch_ms, ref = (v.get(name, {}).get("ms", nan) for name in ("triton-call", "torch", "reference"))
        print(
            f"{shape:17} {size:>2} {dtype:5} {iterations:>3} {v['triton']['ms']:>9.4f} "
            f"{v['triton']['floor_ratio']:>7.2f} {v['triton']['solve_ms']:>8.2f} {call:>8.2f} "
            f"{torch_ms:>8.2f} {ref:>8.2f} {ref / call:>8.1f}"
        )


if __name__ == "__main__":
    sys.exit(main())
