"""A patched pipeline copied, pickled, called from two threads; a saved testbed pipeline; what `import` costs."""

from __future__ import annotations

import copy
import io
import json
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import pipelines
import pytest
import torch
from diffusers import ChromaPipeline, DiffusionPipeline, FluxKontextPipeline, FluxPipeline, StableDiffusion3Pipeline
from PIL import Image

import fastrepulse
from fastrepulse.scheduler import unwrap_scheduler
from fastrepulse.testbed import PROMPT, pipeline
from fastrepulse.testbed.models import TESTBED_MARKER

CALL = {"num_inference_steps": 4, "height": pipelines.HEIGHT, "width": pipelines.WIDTH, "output_type": "latent"}
PROMPTS = ["a red cat", "a blue dog"]
IMAGES = 3
PIPELINES = {
    "flux": pipelines.flux,
    "flux-kontext": pipelines.flux_kontext,
    "sd3": pipelines.sd3,
    "sd": pipelines.sd,
    "sdxl": pipelines.sdxl,
}
METHODS = {
    "contextual": {"method": "contextual", "scale": 300.0, "steps": 1},
    "particle": {"method": "particle", "scale": 10.0},
    "cads": {"method": "cads", "scale": 0.25},
}


def _generate(pipe, seed: int = 0, images: int = IMAGES, **options) -> torch.Tensor:
    kwargs = {**CALL, **options}
    if hasattr(pipe, "transformer"):
        kwargs.setdefault("max_sequence_length", 16)
    if isinstance(pipe, FluxKontextPipeline):
        pixels = torch.Generator().manual_seed(7)
        array = (torch.rand(pipelines.HEIGHT, pipelines.WIDTH, 3, generator=pixels) * 255).to(torch.uint8).numpy()
        kwargs.update(pipelines.KONTEXT_KWARGS, image=Image.fromarray(array))
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt=PROMPTS, num_images_per_prompt=images, generator=generator, **kwargs).images


def _hooks(pipe) -> list:
    """Every forward hook and pre-hook on the pipeline's denoiser."""
    denoiser = pipe.transformer if hasattr(pipe, "transformer") else pipe.unet
    return [hook for m in denoiser.modules() for hook in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]


def _handle_of(hook) -> object:
    """The handle a hook reports to: hooks are bound methods of it, some inside a functools.partial."""
    return getattr(hook, "func", hook).__self__


@pytest.mark.parametrize("method", sorted(METHODS))
def test_a_deep_copy_is_an_independent_patched_pipeline(method: str) -> None:
    pipe = pipelines.flux()
    base = _generate(pipe)
    handle = fastrepulse.patch(pipe, **METHODS[method])
    expected = _generate(pipe)
    assert not torch.equal(expected, base)
    duplicate = copy.deepcopy(pipe)
    own = duplicate._fastrepulse_handle
    assert own is not handle and own.pipe is duplicate and own.config == handle.config
    assert type(duplicate) is type(pipe)
    assert len(_hooks(duplicate)) == len(_hooks(pipe)) > 0
    assert all(_handle_of(hook) is own for hook in _hooks(duplicate))
    assert all(_handle_of(hook) is handle for hook in _hooks(pipe))
    scheduler = unwrap_scheduler(duplicate.scheduler)
    assert duplicate.scheduler is not scheduler and scheduler is not unwrap_scheduler(pipe.scheduler)
    assert torch.equal(_generate(duplicate), expected) and torch.equal(_generate(pipe), expected)

    fastrepulse.unpatch(duplicate)
    assert type(duplicate) is FluxPipeline and duplicate.scheduler is scheduler and not _hooks(duplicate)
    assert torch.equal(_generate(duplicate), base)
    assert pipe._fastrepulse_handle is handle and torch.equal(_generate(pipe), expected)

    second = copy.deepcopy(pipe)
    handle.remove()  # the original's handle still undoes its own patch, and only that
    assert type(pipe) is FluxPipeline and not _hooks(pipe) and torch.equal(_generate(pipe), base)
    assert torch.equal(_generate(second), expected)


@pytest.mark.parametrize("how", [copy.copy, copy.deepcopy], ids=["copy", "deepcopy"])
def test_a_copy_of_the_wrapped_scheduler_alone_is_a_plain_scheduler(how) -> None:
    """As pipelines make a second scheduler (diffusers' LTX-2, for audio): it must not count the sampler's steps."""
    pipe = pipelines.flux()
    fastrepulse.patch(pipe, **METHODS["particle"])
    original = unwrap_scheduler(pipe.scheduler)
    scheduler = how(pipe.scheduler)
    assert type(scheduler) is type(original) and scheduler is not original and scheduler.config == original.config


def _round_trips(pipe) -> dict[str, object]:
    buffer = io.BytesIO()
    torch.save(pipe, buffer)
    buffer.seek(0)
    return {"pickle": pickle.loads(pickle.dumps(pipe)), "torch.save": torch.load(buffer, weights_only=False)}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_a_pickled_pipeline_loads_patched_with_the_same_images(name: str) -> None:
    """Pickled before its first call: from then on transformers 5's CLIP encoders of SD3 and SDXL, asked for their
    hidden states, carry hooks that pickle cannot save (local functions), patched or not."""
    base = _generate(PIPELINES[name]())
    pipe = PIPELINES[name]()
    handle = fastrepulse.patch(pipe, **METHODS["contextual" if hasattr(pipe, "transformer") else "particle"])
    copies = _round_trips(pipe)
    expected = _generate(pipe)
    assert not torch.equal(expected, base)
    for how, loaded in copies.items():
        assert type(loaded) is type(pipe) and loaded._fastrepulse_handle.config == handle.config, how
        assert torch.equal(_generate(loaded), expected), how
        fastrepulse.unpatch(loaded)
        assert type(loaded) is type(pipe).__base__ and torch.equal(_generate(loaded), base), how
    assert torch.equal(_generate(pipe), expected)


def test_a_pickled_pipeline_loads_patched_in_a_fresh_process(tmp_path: Path) -> None:
    """Where it matters (multiprocessing, a saved object): in a process that never patched a pipeline."""
    pipe = pipelines.flux()
    fastrepulse.patch(pipe, **METHODS["contextual"])
    expected = _generate(pipe)
    torch.save(pipe, tmp_path / "pipe.pt")
    script = f"""
import torch
torch.set_num_threads({torch.get_num_threads()})  # as here: other thread counts split float32 sums otherwise
pipe = torch.load({str(tmp_path / "pipe.pt")!r}, weights_only=False)
assert type(pipe).__name__ == "FluxPipeline" and pipe._fastrepulse_handle.pipe is pipe
images = pipe(prompt={PROMPTS!r}, num_images_per_prompt={IMAGES}, generator=torch.Generator().manual_seed(0),
              max_sequence_length=16, **{CALL!r}).images
torch.save(images, {str(tmp_path / "images.pt")!r})
"""
    # from tmp_path: in the repository root, kernels/ would shadow the PyPI `kernels` (see conftest.py)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, cwd=tmp_path)
    assert torch.equal(torch.load(tmp_path / "images.pt"), expected)


def test_a_second_concurrent_call_is_refused_and_the_first_completes() -> None:
    pipe = pipelines.flux()
    fastrepulse.patch(pipe, scale=300.0, steps="all")
    expected = _generate(pipe)
    inside, resume = threading.Event(), threading.Event()

    def pause(pipe, step: int, timestep, tensors: dict) -> dict:
        if step == 0:
            inside.set()
            resume.wait(timeout=120)
        return tensors

    results: dict[str, torch.Tensor] = {}
    first = threading.Thread(target=lambda: results.update(first=_generate(pipe, callback_on_step_end=pause)))
    first.start()
    try:
        assert inside.wait(timeout=120)
        with pytest.raises(RuntimeError, match="runs one call at a time.*copy.deepcopy"):
            _generate(pipe, images=2)
    finally:
        resume.set()
        first.join(timeout=120)
    assert torch.equal(results["first"], expected)
    assert torch.equal(_generate(pipe), expected)  # and the pipeline takes calls again


SAVED_AS = {
    "flux": (FluxPipeline, PROMPT.format(digit=7)),
    "sd3": (StableDiffusion3Pipeline, PROMPT.format(digit=7)),
    "scenes-flux": (FluxPipeline, "a red circle"),
    "scenes-sd3": (StableDiffusion3Pipeline, "a red circle"),
    "scenes-chroma": (ChromaPipeline, "a red circle"),
}
"""Each testbed pipeline: the standard diffusers class it saves as, and a prompt it knows."""


@pytest.mark.parametrize(("name", "cls", "prompt"), [(name, *saved) for name, saved in SAVED_AS.items()], ids=SAVED_AS)
def test_a_saved_testbed_loads_as_the_standard_pipeline(tmp_path: Path, name: str, cls: type, prompt: str) -> None:
    """Offline: the saved folder holds every component, tokenizers included. The marker tells it is the testbed;
    with the testbed's stored defaults passed explicitly, the standard pipeline draws the testbed's images."""
    testbed = pipeline(name)
    testbed.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["_class_name"] == cls.__name__
    assert DiffusionPipeline.load_config(tmp_path)[TESTBED_MARKER] == name
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    assert type(loaded) is cls
    loaded.set_progress_bar_config(disable=True)
    settings = {"height": testbed.size, "width": testbed.size, "output_type": "pt", **testbed.call_defaults}
    images = loaded(prompt=prompt, num_images_per_prompt=2, generator=torch.Generator().manual_seed(3), **settings)
    generator = torch.Generator().manual_seed(3)
    expected = testbed(prompt=prompt, num_images_per_prompt=2, generator=generator, output_type="pt")
    # not bit for bit: the loaded weights lie at other memory alignments, where CPU kernels sum float32 in another
    # order (SD3: 3.6e-7; the same weights copied to fresh memory give the testbed's bits)
    torch.testing.assert_close(images.images, expected.images, rtol=0, atol=1e-5)


def test_importing_fastrepulse_leaves_dynamo_unimported() -> None:
    """torch._dynamo takes seconds to import; only `patch` needs it."""
    code = "import sys, fastrepulse; print(sorted(m for m in sys.modules if m.startswith('torch._dynamo')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.strip() == "[]"
