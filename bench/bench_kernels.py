"""Microbenchmark of repel at the real models' shapes: triton passes, whole calls, eager, compiled and reference.

On a GPU, times with triton.testing.do_bench (median, L2 flushed before every run) and writes one JSON
record per (shape, B, dtype, iterations, variant):

    {shape, B, dtype, iterations, variant, ms, gbps, floor_ratio, solve_ms}

`triton` times the two passes over the tensor (Gram + apply, the solver's output precomputed);
`solve_ms` is the host float64 solver on its own. `triton-call`, `torch` and `reference` time the
whole `repel` call; `triton-call-device` the call with solver="device" (its `solve_ms`: the device
solver alone); with --compile, `torch-compile` times the torch backend's call with its two passes
under torch.compile(mode="max-autotune", dynamic=False), compiled and autotuned per case before timing
(slow: narrow the run with --shapes/--sizes). On a GPU that mode also records CUDA graphs, which copy
inputs they do not own (x) into their own buffers on every call: part of what the variant measures.
gbps counts one read and one write of the tensor; floor_ratio is ms over the time the device's
measured copy needs for those bytes.

    python bench/bench_kernels.py --out results.json [--quick] [--compile] [--shapes flux-text] [--sizes 4]

--device cpu is a smoke run (bench/test_bench_kernels.py, with the tiny shape "smoke"): no Triton
variants, whole calls only, medians of a perf_counter timer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import triton.testing

from fastrepulse import repel
from fastrepulse.kernels import apply_update, gram
from fastrepulse.kernels.solve import solve_on_device
from fastrepulse.reference import apply_torch, gram_torch
from fastrepulse.solver import solve

SHAPES = {
    "flux-text": (512, 3072),
    "flux-single-512": (1536, 3072),
    "flux-single-1024": (4608, 3072),
    "sd35-large-text": (333, 2432),
    "sd3-medium-text": (333, 1536),
}
SMOKE_SHAPES = {"smoke": (64, 256)}  # not a model's: for CPU smoke tests, only when named with --shapes
KNOWN_SHAPES = {**SHAPES, **SMOKE_SHAPES}
GROUP_SIZES = (2, 4, 8, 16)
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SCALE = 1e3  # moderate: timing does not depend on it, but the iteration must stay finite
ITERATIONS = (50, 100)
CALL_ITERATIONS = 50
COMPILE_MODE = "max-autotune"


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


@dataclass(frozen=True)
class Options:
    device: torch.device
    quick: bool  # shorter timing windows
    compile: bool  # add the torch-compile variant


def host_median_ms(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of `repeats` calls of fn, in ms (time.perf_counter)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def median_ms(fn: Callable[[], object], device: torch.device, quick: bool = False) -> float:
    """Median ms per call of fn: do_bench on a GPU (warm-up included), else the host timer after one warm-up call."""
    if device.type == "cuda":
        return triton.testing.do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 100, return_mode="median")
    fn()
    return host_median_ms(fn, 5 if quick else 20)


def copy_bandwidth_gbps(device: torch.device) -> float:
    """Copy bandwidth (bytes read + written per second) in GB/s, on a 1 GiB buffer (64 MiB on a CPU)."""
    src = torch.randn(2**28 if device.type == "cuda" else 2**24, device=device)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / ms / 1e6


def host_solve_ms(gram_matrix: torch.Tensor, iterations: int, repeats: int = 5) -> float:
    return host_median_ms(
        lambda: solve(gram_matrix, scale=SCALE, iterations=iterations, objective="vendi", kernel="cosine"), repeats
    )


def compiled_torch_call(x: torch.Tensor, iterations: int) -> Callable[[], torch.Tensor]:
    """The data flow of repel(x, scale=SCALE, iterations=iterations, backend="torch"), its two passes compiled.

    Gram pass on the device, copy to the host, float64 solver (NumPy: not compilable), apply pass into a
    fresh tensor, as repel composes them; without repel's checks of the arguments and the Gram matrix.
    The passes are compiled for x's shape and dtype, and run once, here, so that no timing sees the compile.
    """
    torch.compiler.reset()  # one compile per case: static shapes would otherwise pile up to the recompile limit
    compiled_gram = torch.compile(gram_torch, mode=COMPILE_MODE, dynamic=False, fullgraph=True)
    compiled_apply = torch.compile(apply_torch, mode=COMPILE_MODE, dynamic=False, fullgraph=True)
    size = x.shape[0]

    def call() -> torch.Tensor:
        with torch.no_grad():
            rows = x.reshape(size, -1)
            gram_matrix = compiled_gram(rows, size).cpu()
            mix = solve(gram_matrix, scale=SCALE, iterations=iterations, objective="vendi", kernel="cosine")
            return compiled_apply(rows, mix, torch.empty_like(rows))

    call()
    return call


def bench_case(
    name: str, size: int, dtype_name: str, iterations: int, copy_gbps: float, options: Options
) -> list[Record]:
    tokens, dim = KNOWN_SHAPES[name]
    dtype = DTYPES[dtype_name]
    device = options.device
    shared = torch.randn(1, tokens, dim, device=device)
    x = (shared + 0.5 * torch.randn(size, tokens, dim, device=device)).to(dtype)
    nbytes = 2 * x.numel() * x.element_size()

    def record(variant: str, ms: float, solve_ms: float | None = None) -> Record:
        floor_ms = nbytes / (copy_gbps * 1e6)
        return Record(name, size, dtype_name, iterations, variant, ms, nbytes / ms / 1e6, ms / floor_ms, solve_ms)

    def timed(fn: Callable[[], object]) -> float:
        return median_ms(fn, device, options.quick)

    records: list[Record] = []
    calls = [("torch", "torch", "host"), ("reference", "reference", "host")]  # (variant, backend, solver)
    device_solve_ms = None
    if device.type == "cuda":  # the Triton kernels need a GPU
        rows = x.view(size, -1)
        out = torch.empty_like(rows)
        gram_matrix = gram(rows, size).cpu()
        mix = solve(gram_matrix, scale=SCALE, iterations=iterations, objective="vendi", kernel="cosine").to(device)

        def passes() -> None:
            gram(rows, size)
            apply_update(rows, mix, out)

        records.append(record("triton", timed(passes), host_solve_ms(gram_matrix, iterations)))
        device_gram = gram_matrix.to(device)
        device_solve_ms = timed(
            lambda: solve_on_device(device_gram, scale=SCALE, iterations=iterations, objective="vendi", kernel="cosine")
        )
        calls[:0] = [("triton-call", "triton", "host"), ("triton-call-device", "triton", "device")]
    if iterations == CALL_ITERATIONS:  # the passes do not depend on M; whole calls are timed at one M
        for variant, backend, solver in calls:
            call_ms = timed(
                lambda backend=backend, solver=solver: repel(
                    x, scale=SCALE, iterations=iterations, backend=backend, solver=solver
                )
            )
            records.append(record(variant, call_ms, device_solve_ms if solver == "device" else None))
        if options.compile:
            records.append(record("torch-compile", timed(compiled_torch_call(x, iterations))))
    return records


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="shorter timing windows")
    parser.add_argument("--compile", action="store_true", help=f"add torch-compile (mode={COMPILE_MODE}, per shape)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help="cpu: a smoke run, no triton")
    parser.add_argument("--shapes", nargs="+", choices=list(KNOWN_SHAPES), default=list(SHAPES))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(GROUP_SIZES), help="group sizes B")
    args = parser.parse_args(argv)
    options = Options(torch.device(args.device), args.quick, args.compile)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    # Without triton there is nothing M-dependent to time: only whole calls, at one M.
    iterations_timed = ITERATIONS if args.device == "cuda" else (CALL_ITERATIONS,)
    copy_gbps = copy_bandwidth_gbps(options.device)
    records: list[Record] = []
    for name in args.shapes:
        for dtype_name in DTYPES:
            for size in args.sizes:
                for iterations in iterations_timed:
                    case = bench_case(name, size, dtype_name, iterations, copy_gbps, options)
                    records += case
                    solve_ms = "".join(f" solve={r.solve_ms:.2f}ms" for r in case if r.solve_ms is not None)
                    print(
                        " ".join(f"{r.variant}={r.ms:.3f}ms" for r in case),
                        f"<- {name} B{size} {dtype_name} M{iterations}{solve_ms}",
                        flush=True,
                    )
    result = {
        "device": torch.cuda.get_device_name() if args.device == "cuda" else args.device,
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
        f"{'call ms':>8} {'dev call':>8} {'torch ms':>8} {'compile ms':>10} {'ref ms':>8} {'ref/call':>8} "
        f"{'compile/call':>12}"
    )
    rows: dict[tuple, dict] = {}
    for r in result["kernels"]:
        rows.setdefault((r["shape"], r["B"], r["dtype"], r["iterations"]), {})[r["variant"]] = r
    nan = float("nan")
    for (shape, size, dtype, iterations), v in rows.items():
        passes = v.get("triton", {})
        call, device_call, torch_ms, compiled, ref = (
            v.get(name, {}).get("ms", nan)
            for name in ("triton-call", "triton-call-device", "torch", "torch-compile", "reference")
        )
        print(
            f"{shape:17} {size:>2} {dtype:5} {iterations:>3} {passes.get('ms', nan):>9.4f} "
            f"{passes.get('floor_ratio', nan):>7.2f} {passes.get('solve_ms', nan):>8.2f} {call:>8.2f} "
            f"{device_call:>8.2f} {torch_ms:>8.2f} {compiled:>10.2f} {ref:>8.2f} {ref / call:>8.1f} "
            f"{compiled / call:>12.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
