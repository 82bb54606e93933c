"""fastrepulse.patch under torch.compile: diffusers' regional compilation of tiny Flux's blocks."""

from __future__ import annotations

from collections.abc import Callable

import pipelines
import pytest
import torch
from torch._dynamo.utils import counters

import fastrepulse

STEPS = 4
CALL = {
    "prompt": ["a red cat", "a blue dog"],
    "num_images_per_prompt": 3,
    "num_inference_steps": STEPS,
    "height": pipelines.HEIGHT,
    "width": pipelines.WIDTH,
    "max_sequence_length": 16,
    "output_type": "latent",
}
SITES = [
    {"site": "attention"},
    {"site": "attention", "single_stream_tokens": "text"},
    {"site": "block"},
    {"site": "block", "single_stream_tokens": "text"},
]
SITE_IDS = ["attention", "attention-text", "block", "block-text"]


def _generate(pipe, **options) -> torch.Tensor:
    return pipe(generator=torch.Generator().manual_seed(0), **{**CALL, **options}).images


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For every repel a hook makes: was it running inside Dynamo's tracing?"""
    flags: list[bool] = []
    real_method = fastrepulse.RepulsionHandle._repel

    def method(self: fastrepulse.RepulsionHandle, *parts: torch.Tensor) -> None:
        flags.append(torch.compiler.is_compiling())
        real_method(self, *parts)

    monkeypatch.setattr(fastrepulse.RepulsionHandle, "_repel", method)
    return flags


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Every test compiles from scratch and leaves no compiled code behind."""
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _compile_counts(patch: Callable[[object], object] | None) -> tuple[int, int]:
    """Graphs compiled and graph breaks met by one call of a fresh, regionally compiled pipeline."""
    graphs = 0

    def counting_backend(gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        nonlocal graphs
        graphs += 1
        return gm.forward

    torch._dynamo.reset()
    counters.clear()
    pipe = pipelines.flux()
    if patch is not None:
        patch(pipe)
    pipe.transformer.compile_repeated_blocks(backend=counting_backend, dynamic=False)
    _generate(pipe)
    return graphs, sum(counters["graph_break"].values())


@pytest.mark.parametrize("options", SITES, ids=SITE_IDS)
def test_patched_blocks_compile_to_the_unpatched_graphs(traced: list[bool], options: dict) -> None:
    """Steps 0-1 repelled, 2-3 not: the same graphs as unpatched and no graph break in either kind of step."""
    counts = _compile_counts(lambda pipe: fastrepulse.patch(pipe, scale=300.0, steps=2, **options))
    assert counts == _compile_counts(None)
    assert traced and not any(traced)  # the hooks ran, and the op ran outside the traced code


@pytest.mark.parametrize("site", ["attention", "block"])
def test_torch_compile_does_not_recompile_per_step(traced: list[bool], site: str) -> None:
    pipe = pipelines.flux()
    base = _generate(pipe)
    with fastrepulse.patched(pipe, scale=300.0, steps=2, site=site):
        expected = _generate(pipe)
        pipe.transformer.compile_repeated_blocks(backend="eager", dynamic=False)  # diffusers regional compilation
        compiled = _generate(pipe)  # compiles, once per block layout (diffusers' own stride variants)
        # new step numbers (4, 5) and the repelled -> plain switch: a step read by traced code would recompile
        with torch._dynamo.config.patch(error_on_recompile=True):
            longer = _generate(pipe, num_inference_steps=STEPS + 2)
            again = _generate(pipe)
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(compiled, base, rtol=1e-4, atol=1e-4)
    assert torch.equal(again, compiled) and not torch.equal(longer, compiled)
    assert traced and not any(traced)  # the hooks' work runs in the op, outside the graphs


def test_patching_a_compiled_pipeline_takes_effect() -> None:
    """Blocks compiled without hooks are recompiled with them: after compiling, and after an unpatched call."""
    pipe = pipelines.flux()
    base = _generate(pipe)
    with fastrepulse.patched(pipe, scale=300.0, steps=2):
        expected = _generate(pipe)
    pipe.transformer.compile_repeated_blocks(backend="eager", dynamic=False)
    for _ in range(2):
        torch.testing.assert_close(_generate(pipe), base, rtol=1e-4, atol=1e-4)
        with fastrepulse.patched(pipe, scale=300.0, steps=2):
            torch.testing.assert_close(_generate(pipe), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["flux2", "qwenimage", "z_image"])
def test_newer_families_compile_without_graph_breaks(traced: list[bool], name: str) -> None:
    """Regional compilation of a family whose single-stream blocks return one joint tensor (Flux.2), whose groups
    take their own text lengths (Qwen-Image: per-group slices), or whose denoiser takes lists (Z-Image): the compiled
    patched pipeline gives the eager patched images, with no graph break."""
    import pipelines_dual
    import pipelines_unified

    builders = {**pipelines_dual.BUILDERS, **pipelines_unified.BUILDERS}
    calls = {**pipelines_dual.CALLS, **pipelines_unified.CALLS}
    call = {"height": pipelines.HEIGHT, "width": pipelines.WIDTH, **calls[name], "num_inference_steps": 2}
    call = {**call, "output_type": "latent", "num_images_per_prompt": 2}
    prompts = ["a red cat", "a small blue dog on a hill"]

    def generate(pipe) -> torch.Tensor:
        return pipe(prompt=list(prompts), generator=torch.Generator().manual_seed(0), **call).images

    pipe = builders[name]()
    base = generate(pipe)
    with fastrepulse.patched(pipe, scale=1e4, steps="all"):
        expected = generate(pipe)
        pipe.transformer.compile_repeated_blocks(backend="eager", dynamic=False)
        compiled = generate(pipe)
    torch.testing.assert_close(compiled, expected, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(expected, base, rtol=1e-4, atol=1e-4)
    assert sum(counters["graph_break"].values()) == 0
    assert traced and not any(traced)
