"""Compile every Triton kernel configuration for real GPUs on a machine without one.

For each kernel, input dtype and group size (hence block size) that `pick_tiling` and
`pick_apply_tiling` can choose (the apply kernel with and without the device solver's status), this
compiles with `triton.compile` for sm_80 and sm_90, reads registers, spills and shared memory from
Triton's bundled ptxas, counts the matrix instructions in the SASS, prints a table and exits
non-zero on a compile error or any spill.

    python bench/compile_check.py [--arch 80 90] [--jobs 2]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # the interpreter replaces kernels with Python functions

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastrepulse.kernels.apply import _apply_kernel  # noqa: E402
from fastrepulse.kernels.gram import _gram_kernel  # noqa: E402
from fastrepulse.kernels.solve import (  # noqa: E402
    MAX_GROUP,
    MAX_REGISTERS,
    SOLVED,
    _solve_kernel,
    solver_constants,
    solver_warps,
)
from fastrepulse.kernels.tiling import dot_precision, pick_apply_tiling, pick_tiling  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64}
SOLVER_VARIANTS = ("vendi-cosine", "vendi-rbf", "energy-cosine", "energy-rbf")  # the solver's "dtype" column
GROUP_SIZES = (2, 3, 4, 8, 16, 20, 32, 64)
APPLY_GROUP_SIZES = (2, 3, 4, 5, 8, 12, 16, 20, 32, 64)  # FMA tiles up to 8 rows (5: padded to 8), 12: a dot tile
APPLY_KERNELS = {"apply": False, "apply+status": True}  # name: whether the device solver's status is read
LENGTH = 3072 * 512  # Flux text tokens: the split is irrelevant to code generation
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
MMA = re.compile(r"\b(HMMA|HGMMA|DMMA|IMMA)\b")


@dataclass(frozen=True)
class Case:
    kernel: str
    dtype: str
    group_size: int
    arch: int


@dataclass(frozen=True)
class Report:
    case: Case
    block: str
    registers: int = -1
    spill_bytes: int = -1
    stack_bytes: int = -1
    shared_bytes: int = -1
    mma_instructions: int = -1
    error: str = ""


def compile_case(case: Case) -> Report:
    aligned = [["tt.divisibility", 16]]
    if case.kernel == "solve":
        objective, kernel = case.dtype.split("-")
        block_size = triton.next_power_of_2(case.group_size)
        # the Gram's float32 partial sums, as repel passes them; step a float64 scalar (the kernel's annotation)
        signature = {"gram_ptr": "*fp32", "mix_ptr": "*fp64", "status_ptr": "*i32", "step": "fp64"}
        signature.update(iterations="i32", num_partials="i32")
        constants = solver_constants(case.group_size, objective, kernel)
        warps = solver_warps(block_size)
        attrs = {(i,): aligned for i in range(3)}
        block = f"{block_size}x{block_size} w{warps}"
        options = {"num_warps": warps, "maxnreg": MAX_REGISTERS}
        return _compile(case, block, _solve_kernel, signature, constants, attrs, options)
    dtype = DTYPES[case.dtype]
    if case.kernel == "gram":
        tiling = pick_tiling(case.group_size, LENGTH, dtype, torch.device("cpu"))
        block = f"{tiling.block_b}x{tiling.block_l} w{tiling.num_warps}"
        fn = _gram_kernel
        signature = {
            "x_ptr": f"*{case.dtype}",
            "partial_ptr": "*fp64" if dtype == torch.float64 else "*fp32",
            "stride_row": "i32",
            "stride_group": "i32",
            "L": "i32",
            "CHUNKS_PER_SPLIT": "i32",
        }
        constants = {
            "B": case.group_size,
            "BLOCK_B": tiling.block_b,
            "BLOCK_L": tiling.block_l,
            "BLOCK_K": tiling.block_k,
            "SLICED": tiling.sliced,
            "INPUT_PRECISION": dot_precision(dtype),
        }
        attrs = {(0,): aligned, (1,): aligned, (2,): aligned, (3,): aligned, (4,): aligned}
        options = {"num_warps": tiling.num_warps, "num_stages": tiling.num_stages}
    else:
        apply_tiling = pick_apply_tiling(case.group_size, LENGTH, dtype)
        block = f"{apply_tiling.block_b}x{apply_tiling.block_l} w{apply_tiling.num_warps}"
        has_status = APPLY_KERNELS[case.kernel]
        fn = _apply_kernel
        signature = {
            "x_ptr": f"*{case.dtype}",
            "mix_ptr": "*fp64",  # the solvers' float64 P - I, read as is
            "out_ptr": f"*{case.dtype}",
            "status_ptr": "*i32" if has_status else "constexpr",
            "stride_x": "i32",
            "stride_out": "i32",
            "L": "i32",
        }
        constants = {
            "B": case.group_size,
            "BLOCK_B": apply_tiling.block_b,
            "BLOCK_L": apply_tiling.block_l,
            "DOT": apply_tiling.dot,
            "SPLIT_MIX": dtype.itemsize == 2,
            "INPUT_PRECISION": dot_precision(dtype),
            "HAS_STATUS": has_status,
            "SOLVED_STATUS": SOLVED,
        }
        if not has_status:
            constants["status_ptr"] = None
        attrs = {(i,): aligned for i in range(7) if has_status or i != 3}
        options = {"num_warps": apply_tiling.num_warps}
    return _compile(case, block, fn, signature, constants, attrs, options)


def _compile(case: Case, block: str, fn, signature: dict, constants: dict, attrs: dict, options: dict) -> Report:
    signature.update(dict.fromkeys(constants, "constexpr"))
    try:
        compiled = triton.compile(
            ASTSource(fn, signature, constants, attrs), target=GPUTarget("cuda", case.arch, 32), options=options
        )
        return _resources(case, block, compiled)
    except Exception as error:  # noqa: BLE001 - every failure is reported in the table
        return Report(case, block, error=f"{type(error).__name__}: {str(error).splitlines()[0][:100]}")


def _resources(case: Case, block: str, compiled) -> Report:
    with tempfile.TemporaryDirectory() as tmp:
        ptx, cubin = Path(tmp) / "kernel.ptx", Path(tmp) / "kernel.cubin"
        ptx.write_text(compiled.asm["ptx"])
        cubin.write_bytes(compiled.asm["cubin"])
        arch = re.search(r"^\.target\s+(\w+)", compiled.asm["ptx"], re.M).group(1)
        info = subprocess.run(
            [BIN / "ptxas", f"-arch={arch}", "-v", ptx, "-o", Path(tmp) / "check.cubin"],
            capture_output=True,
            text=True,
            check=True,
        ).stderr
        sass = subprocess.run([BIN / "cuobjdump", "-sass", cubin], capture_output=True, text=True, check=True).stdout
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", info)]
    return Report(
        case,
        block,
        registers=int(re.search(r"Used (\d+) registers", info).group(1)),
        spill_bytes=sum(spills),
        stack_bytes=int(re.search(r"(\d+) bytes stack frame", info).group(1)),
        shared_bytes=compiled.metadata.shared,
        mma_instructions=len(MMA.findall(sass)),
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    cases = [Case("gram", dtype, size, arch) for dtype in DTYPES for size in GROUP_SIZES for arch in args.arch]
    cases += [
        Case(kernel, dtype, size, arch)
        for kernel in APPLY_KERNELS
        for dtype in DTYPES
        for size in APPLY_GROUP_SIZES
        for arch in args.arch
    ]
    solver_sizes = [size for size in GROUP_SIZES if size <= MAX_GROUP]
    cases += [Case("solve", v, size, arch) for v in SOLVER_VARIANTS for size in solver_sizes for arch in args.arch]
    with ProcessPoolExecutor(args.jobs) as pool:
        reports = list(pool.map(compile_case, cases))

    print(
        f"{'kernel':12} {'dtype':5} {'B':>3} {'sm':>3} {'tile':>12} {'regs':>5} {'spill':>6} {'stack':>6} "
        f"{'smem':>7} {'mma':>5}  status"
    )
    failed = 0
    for r in reports:
        c = r.case
        bad = bool(r.error) or r.spill_bytes > 0 or r.stack_bytes > 0
        failed += bad
        status = r.error or ("SPILL" if bad else "ok")
        print(
            f"{c.kernel:12} {c.dtype:5} {c.group_size:>3} {c.arch:>3} {r.block:>12} {r.registers:>5} "
            f"{r.spill_bytes:>6} {r.stack_bytes:>6} {r.shared_bytes:>7} {r.mma_instructions:>5}  {status}"
        )
    print(f"\n{len(reports) - failed}/{len(reports)} configurations compiled without spills")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
