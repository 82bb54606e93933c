"""CPU smoke test of bench_kernels.py: the whole script on the tiny "smoke" shape, torch-compile included.

python -m pytest -q bench/test_bench_kernels.py   (30-45 s on 2 cores with a cold inductor cache: the first
torch.compile on a CPU builds C++; about 20 s warm)
"""

import json
import math
import sys
from dataclasses import fields
from pathlib import Path

import bench_kernels
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from oracle import UPDATE_TOLERANCE, assert_update_close, literal_loop  # noqa: E402

CALL_VARIANTS = {"torch", "reference", "torch-compile"}  # on a CPU: no triton variants, whole calls at one M


def test_cpu_smoke_run(tmp_path):
    out = tmp_path / "kernels.json"
    argv = ["--device", "cpu", "--compile", "--quick", "--shapes", "smoke", "--sizes", "4", "--out", str(out)]
    assert bench_kernels.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["copy_gbps"] > 0
    records = result["kernels"]
    assert all(set(r) == {f.name for f in fields(bench_kernels.Record)} for r in records)
    expected = {
        ("smoke", 4, dtype, bench_kernels.CALL_ITERATIONS, variant)
        for dtype in bench_kernels.DTYPES
        for variant in CALL_VARIANTS
    }
    assert sorted((r["shape"], r["B"], r["dtype"], r["iterations"], r["variant"]) for r in records) == sorted(expected)
    for r in records:
        assert math.isfinite(r["ms"]) and r["ms"] > 0, r
        assert math.isfinite(r["gbps"]) and r["gbps"] > 0, r


def test_compiled_call_matches_the_float64_oracle():
    """The timed torch-compile variant computes repel's update: checked against the paper's literal loop."""
    tokens, dim = bench_kernels.SMOKE_SHAPES["smoke"]
    x = torch.randn(1, tokens, dim) + 0.5 * torch.randn(4, tokens, dim)
    iterations = bench_kernels.CALL_ITERATIONS
    compiled = bench_kernels.compiled_torch_call(x, iterations)().view(x.shape)
    options = {"scale": bench_kernels.SCALE, "iterations": iterations, "objective": "vendi", "kernel": "cosine"}
    exact = literal_loop(x, group_size=4, **options)
    assert (exact - x).abs().max() > 0
    assert_update_close(compiled, x, exact, UPDATE_TOLERANCE[torch.float32], "torch-compile call")
