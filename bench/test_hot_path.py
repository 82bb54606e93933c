"""The hot path on this CPU, side by side in one run: one hooked block's Python path against its solve alone,
and the embedded default (the Flux testbed: B = 4, 20 steps, true CFG, `testbed` preset) unpatched, patched, and
patched with the NumPy solver. One thread, so that the figures do not depend on what else runs.

pytest bench/test_hot_path.py --benchmark-enable --benchmark-columns=median,iqr,min,rounds -s

Each benchmark group holds the cases to compare: "block-overhead" (the block path minus its solve is the per-block
overhead, issue 11's <= 60 us target) and "testbed-e2e". On a shared machine the end-to-end figure to read is
`test_testbed_overhead`'s: each round times an unpatched and a patched call back to back, and it prints the median
of their ratios (also in the JSON's extra_info), which drifts in load do not bias.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import pytest
import torch

import fastrepulse
from fastrepulse import solver
from fastrepulse.patching import _CallState, _ForwardState, _Slice
from fastrepulse.solver import solve_groups
from fastrepulse.testbed import PROMPT, pipeline
from fastrepulse.testbed.digits import SIZE
from fastrepulse.testbed.models import TEXT_TOKENS
from fastrepulse.tokens import TextLayout


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def testbed() -> object:
    pipe = pipeline("flux")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _call(pipe: object) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return pipe(PROMPT.format(digit=7), num_images_per_prompt=4, generator=generator, output_type="pt").images


@pytest.mark.parametrize("case", ["hooked-block", "solve-only"])
def test_block(benchmark, testbed, case):
    """A dual-stream attention output of the testbed ([4, TEXT_TOKENS, 64] text), through the real hook."""
    handle = fastrepulse.patch(testbed, preset="testbed")
    try:
        block = handle.denoiser.blocks[0]
        width = block.module.attn.to_out[0].out_features
        text, image = torch.randn(4, TEXT_TOKENS, width), torch.randn(4, 16, width)
        handle._call = _CallState(images_per_prompt=4, samples=4)
        whole_batch = (_Slice(slice(None), 4, ((0, TEXT_TOKENS),)),)
        handle._forward = _ForwardState(batch=4, layout=TextLayout(TEXT_TOKENS), slices=whole_batch, step=0)
        config = handle.config
        gram = (text.reshape(4, -1).double() @ text.reshape(4, -1).double().T)[None].numpy()
        options = {"scale": config.scale, "iterations": config.iterations, "objective": config.objective}
        if case == "hooked-block":
            original, attention = text.clone(), block.attention

            def run() -> None:
                text.copy_(original)  # the same input every round
                handle._after_attention(block.kind, attention, (), {}, (image, text))

        else:

            def run() -> None:
                solve_groups(gram, **options, kernel=config.kernel)

        run()  # the first solve loads numba's compiled code (0.5 s): not what is timed
        benchmark.group = "block-overhead"
        benchmark(run)
    finally:
        handle._call = handle._forward = None
        handle.remove()


@pytest.mark.parametrize("case", ["base", "fastrepulse", "numpy-solver"])
def test_testbed_pipeline(benchmark, testbed, case, monkeypatch):
    if case == "numpy-solver":
        monkeypatch.setattr(solver, "_COMPILED", None)
    handle = None if case == "base" else fastrepulse.patch(testbed, preset="testbed")
    try:
        _call(testbed)  # warm-up: the solver's compile (or on-disk cache) is not what is timed
        benchmark.group = "testbed-e2e"
        images = benchmark(_call, testbed)
    finally:
        if handle is not None:
            handle.remove()
    assert images.shape == (4, 1, SIZE, SIZE) and torch.isfinite(images).all()  # grey 8 x 8 digits


def test_testbed_overhead(benchmark, testbed):
    """Base and patched calls in alternation; the median ratio is the end-to-end cost of repulsion."""
    ratios: list[float] = []

    def pair() -> None:
        start = time.perf_counter()
        _call(testbed)
        base = time.perf_counter() - start
        with fastrepulse.patched(testbed, preset="testbed"):
            start = time.perf_counter()
            _call(testbed)
            ratios.append((time.perf_counter() - start) / base)

    pair()  # warm-up: the solver's compiled code loads
    ratios.clear()
    benchmark.group = "testbed-overhead"
    benchmark.pedantic(pair, rounds=15 if benchmark.enabled else 1)
    overhead = 100 * (statistics.median(ratios) - 1)
    benchmark.extra_info["overhead_pct"] = overhead
    print(f"\nembedded default: repulsion adds {overhead:+.1f}% (median of {len(ratios)} side-by-side pairs)")
    assert all(ratio > 0 for ratio in ratios)
