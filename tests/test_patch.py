"""fastrepulse.patch on tiny offline Flux, Flux-Kontext and SD3 pipelines (and SD/SDXL for the baselines)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import diffusers
import pipelines
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline
from oracle import group_vendi
from PIL import Image

import fastrepulse
from fastrepulse.repulsion import Repulsion

STEPS = 4
PROMPTS = ["a red cat", "a blue dog"]
IMAGES = 3
CALL = {"num_inference_steps": STEPS, "height": pipelines.HEIGHT, "width": pipelines.WIDTH, "output_type": "latent"}
TEXT_TOKENS = 16
"""T5 length for Flux and SD3 calls: the pipelines pad to 512 and 256 by default, 3x the time of a call here."""


@dataclass(frozen=True)
class RepelCall:
    """One repulsion run by a hook: what it saw and where the pipeline call was."""

    shapes: tuple[tuple[int, ...], ...]  # of the parts of the samples (text, or text and image tokens)
    group_size: int
    step: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.shapes[0]


@pytest.fixture
def repel_calls(monkeypatch: pytest.MonkeyPatch) -> list[RepelCall]:
    """Record every repulsion the hooks run (and still run it), with the step of the handle running it."""
    calls: list[RepelCall] = []
    handles: list[fastrepulse.RepulsionHandle] = []
    real_run, real_method = Repulsion.run, fastrepulse.RepulsionHandle._repel

    def method(self: fastrepulse.RepulsionHandle, *args) -> None:
        handles.append(self)
        try:
            real_method(self, *args)
        finally:
            handles.pop()

    def recording(self: Repulsion, parts: list[torch.Tensor], outs: list[torch.Tensor], group_size: int, **options):
        assert all(out is part for out, part in zip(outs, parts, strict=True)), "hooks repel in place"
        calls.append(RepelCall(tuple(tuple(part.shape) for part in parts), group_size, handles[-1]._call.step))
        return real_run(self, parts, outs, group_size, **options)

    monkeypatch.setattr(fastrepulse.RepulsionHandle, "_repel", method)
    monkeypatch.setattr(Repulsion, "run", recording)
    return calls


def _generate(pipe, prompt=PROMPTS, images: int = IMAGES, seed: int = 0, **options) -> torch.Tensor:
    kwargs = {**CALL, **options}
    if hasattr(pipe, "transformer"):
        kwargs.setdefault("max_sequence_length", TEXT_TOKENS)
    if isinstance(pipe, FluxKontextPipeline):
        kwargs.update(pipelines.KONTEXT_KWARGS, image=_kontext_image())
    generator = torch.Generator().manual_seed(seed)
    return pipe(prompt=prompt, num_images_per_prompt=images, generator=generator, **kwargs).images


def _kontext_image() -> Image.Image:
    pixels = torch.Generator().manual_seed(7)
    array = (torch.rand(pipelines.HEIGHT, pipelines.WIDTH, 3, generator=pixels) * 255).to(torch.uint8).numpy()
    return Image.fromarray(array)


def _spread(latents: torch.Tensor, group_size: int) -> float:
    """Mean pairwise distance between the final latents of each group."""
    groups = latents.float().flatten(1).view(-1, group_size, latents[0].numel())
    distances = torch.cdist(groups, groups)
    return (distances.sum() / (groups.shape[0] * group_size * (group_size - 1))).item()


def _hooks(pipe) -> int:
    modules = pipe.transformer.modules() if hasattr(pipe, "transformer") else pipe.unet.modules()
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in modules)


TRANSFORMER_PIPELINES = {"flux": pipelines.flux, "flux-kontext": pipelines.flux_kontext, "sd3": pipelines.sd3}
ALL_PIPELINES = {**TRANSFORMER_PIPELINES, "sd": pipelines.sd, "sdxl": pipelines.sdxl}


@pytest.fixture(scope="module", params=list(TRANSFORMER_PIPELINES))
def transformer_pipe(request: pytest.FixtureRequest):
    return TRANSFORMER_PIPELINES[request.param]()


@pytest.mark.parametrize("method", ["contextual", "particle", "cads"])
def test_scale_zero_and_unpatch_give_the_unpatched_images(transformer_pipe, method: str) -> None:
    pipe = transformer_pipe
    base = _generate(pipe)
    original_class, original_scheduler = type(pipe), pipe.scheduler
    with fastrepulse.patched(pipe, method=method, scale=0.0, steps="all"):
        assert torch.equal(_generate(pipe), base)
    assert type(pipe) is original_class and pipe.scheduler is original_scheduler
    with fastrepulse.patched(pipe, method=method, scale={"contextual": 300.0, "particle": 10.0, "cads": 0.25}[method]):
        assert not torch.equal(_generate(pipe), base)
    assert type(pipe) is original_class and pipe.scheduler is original_scheduler
    assert "_fastrepulse_handle" not in pipe.__dict__ and "scheduler" in pipe.__dict__
    assert _hooks(pipe) == 0
    assert torch.equal(_generate(pipe), base)


def test_patching_twice_replaces_the_configuration(transformer_pipe) -> None:
    pipe = transformer_pipe
    fastrepulse.patch(pipe, scale=300.0, steps="all")
    hooks = _hooks(pipe)
    second = fastrepulse.patch(pipe, scale=50.0, steps=2)
    assert _hooks(pipe) == hooks
    assert second.config.scale == 50.0 and second.config.steps == 2
    assert pipe._fastrepulse_handle is second
    expected = _generate(pipe)
    fastrepulse.unpatch(pipe)
    with fastrepulse.patched(pipe, scale=50.0, steps=2):
        assert torch.equal(_generate(pipe), expected)
    fastrepulse.unpatch(pipe)  # a second unpatch does nothing
    assert _hooks(pipe) == 0


def test_groups_are_the_images_of_one_prompt(repel_calls: list[RepelCall]) -> None:
    pipe = pipelines.flux()
    fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0])
    _generate(pipe)
    assert [(call.shape[0], call.group_size) for call in repel_calls] == [(6, 3)]
    repel_calls.clear()
    _generate(pipe, true_cfg_scale=2.0, negative_prompt=["blurry"] * 2)  # cond and uncond: two transformer calls
    assert [(call.shape[0], call.group_size) for call in repel_calls] == [(6, 3), (6, 3)]


def test_sd3_groups_split_the_guidance_branches(repel_calls: list[RepelCall]) -> None:
    pipe = pipelines.sd3()
    fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0])
    _generate(pipe, guidance_scale=3.0, negative_prompt="blurry")  # one call on [uncond ; cond]
    assert [(call.shape[0], call.group_size) for call in repel_calls] == [(12, 3)]
    repel_calls.clear()
    slg = {"skip_guidance_layers": [1], "skip_layer_guidance_start": 0.0, "skip_layer_guidance_stop": 1.0}
    fastrepulse.patch(pipe, scale=300.0, steps="all", blocks=[0])  # the extra call comes from step 1 on
    _generate(pipe, guidance_scale=3.0, negative_prompt="blurry", **slg)
    assert [(call.shape[0], call.group_size) for call in repel_calls] == [(12, 3)] + [(12, 3), (6, 3)] * 3


def test_a_prompt_is_independent_of_the_prompts_beside_it() -> None:
    """Patched, "a red cat" alone and beside another prompt differ no more than the unpatched pipeline's own batch
    variance allows: not at all where the base is batch-invariant to the bit, else within 100x of the base's
    difference (float32 BLAS kernels differ between batch 3 and 6 on some CPUs: 4.8e-7 base, up to 6x that patched).
    """
    pipe = pipelines.flux()
    base = (_generate(pipe, prompt=PROMPTS[:1]) - _generate(pipe, prompt=PROMPTS)[:IMAGES]).abs().max().item()
    options = {"scale": 300.0, "steps": "all", "site": "block"}
    with fastrepulse.patched(pipe, **options):
        alone = _generate(pipe, prompt=PROMPTS[:1])
        patched = (alone - _generate(pipe, prompt=PROMPTS)[:IMAGES]).abs().max().item()
    assert patched <= 100 * base, f"patched {patched:.2e} against the unpatched pipeline's {base:.2e}"
    with fastrepulse.patched(pipe, group_size=2 * IMAGES, **options):  # both prompts in one group: what must show
        mixed = (alone - _generate(pipe, prompt=PROMPTS)[:IMAGES]).abs().max().item()
    assert mixed > 1000 * max(base, 1e-7), f"one group of two prompts moved the images by only {mixed:.2e}"


@pytest.mark.parametrize(("name", "method"), [("flux", "contextual"), ("sd", "particle")])
def test_the_same_seed_for_every_image_gives_the_unpatched_images(name: str, method: str) -> None:
    """Identical images of a prompt have nothing to be pushed apart from (before: "repulsion diverged")."""
    pipe = ALL_PIPELINES[name]()
    kwargs = {**CALL, "prompt": PROMPTS, "num_images_per_prompt": IMAGES}
    if name == "flux":
        kwargs["max_sequence_length"] = TEXT_TOKENS

    def same_seeds() -> list[torch.Generator]:
        return [torch.Generator().manual_seed(0) for _ in range(len(PROMPTS) * IMAGES)]

    base = pipe(generator=same_seeds(), **kwargs).images
    with fastrepulse.patched(pipe, method=method, scale=300.0 if method == "contextual" else 30.0, steps="all"):
        assert torch.equal(pipe(generator=same_seeds(), **kwargs).images, base)


@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_a_prompt_is_independent_of_which_prompt_shares_the_call(name: str) -> None:
    """Same batch shape, other second prompt: the first prompt's images stay the same to the bit (with CFG on SD3)."""
    pipe = TRANSFORMER_PIPELINES[name]()
    options = {"guidance_scale": 3.0, "negative_prompt": "blurry"} if name == "sd3" else {}
    base = [_generate(pipe, prompt=[PROMPTS[0], other], **options)[:IMAGES] for other in (PROMPTS[1], "a green frog")]
    if not torch.equal(*base):  # diffusers 0.35's SD3 tiles pooled embeddings [A, B, A, B, ...] for several images
        pytest.skip(f"the unpatched {name} pipeline of diffusers {diffusers.__version__} mixes prompts itself")
    with fastrepulse.patched(pipe, scale=1000.0, steps="all", site="block"):
        first = _generate(pipe, prompt=PROMPTS, **options)
        second = _generate(pipe, prompt=[PROMPTS[0], "a green frog"], **options)
        moved = not torch.equal(first[IMAGES:], second[IMAGES:])
    assert torch.equal(first[:IMAGES], second[:IMAGES]) and moved


@pytest.mark.parametrize("steps", [1, 2, "all"])
def test_only_the_first_steps_are_repelled(repel_calls: list[RepelCall], steps: int | str) -> None:
    pipe = pipelines.flux()
    fastrepulse.patch(pipe, scale=300.0, steps=steps, blocks=[0])
    _generate(pipe)
    _generate(pipe)  # a second call counts from step 0 again
    expected = list(range(STEPS if steps == "all" else steps))
    assert [call.step for call in repel_calls] == expected * 2


def test_step_counter_restarts_after_a_failed_call(repel_calls: list[RepelCall]) -> None:
    pipe = pipelines.flux()
    fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0])

    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        _generate(pipe, callback_on_step_end=fail)
    repel_calls.clear()
    _generate(pipe)
    assert [call.step for call in repel_calls] == [0]


IMAGE_TOKENS = (pipelines.HEIGHT // 4) * (pipelines.WIDTH // 4)  # VAE factor 2, then 2x2 packing


@pytest.mark.parametrize(
    ("site", "tokens", "expected"),
    [
        ("attention", "all", [((6, TEXT_TOKENS, 32),)] * 2 + [((6, TEXT_TOKENS + IMAGE_TOKENS, 32),)] * 2),
        ("attention", "text", [((6, TEXT_TOKENS, 32),)] * 4),
        ("block", "all", [((6, TEXT_TOKENS, 32),)] * 2 + [((6, TEXT_TOKENS, 32), (6, IMAGE_TOKENS, 32))] * 2),
        ("block", "text", [((6, TEXT_TOKENS, 32),)] * 4),
    ],
    ids=["attention-all", "attention-text", "block-all", "block-text"],
)
def test_flux_sites_repel_the_text_stream(repel_calls: list[RepelCall], site: str, tokens: str, expected) -> None:
    pipe = pipelines.flux()
    fastrepulse.patch(pipe, scale=300.0, steps=1, site=site, single_stream_tokens=tokens)
    _generate(pipe)
    assert [call.shapes for call in repel_calls] == expected


@pytest.mark.parametrize(
    ("blocks", "expected"),
    [("all", [0, 1, 2]), ("early", [0]), ("middle", [1]), ("late", [2]), ([2, 0], [0, 2]), (range(1, 3), [1, 2])],
    ids=["all", "early", "middle", "late", "list", "range"],
)
def test_block_selection(blocks, expected: list[int]) -> None:
    pipe = pipelines.sd3()  # 4 joint blocks, the last without a text output: 3 text blocks
    handle = fastrepulse.patch(pipe, scale=300.0, blocks=blocks)
    text_blocks = handle.denoiser.blocks
    hooked = [block.index for block in text_blocks if block.module.attn._forward_hooks]
    assert hooked == expected
    assert not pipe.transformer.transformer_blocks[-1].attn._forward_hooks
    handle.remove()


def test_a_refused_patch_leaves_the_previous_one_in_place() -> None:
    pipe = pipelines.sd3()
    handle = fastrepulse.patch(pipe, scale=300.0, blocks="early")
    hooks = _hooks(pipe)
    with pytest.raises(ValueError, match=r"blocks \[3\] do not exist: this model has 3 text blocks"):
        fastrepulse.patch(pipe, scale=1.0, blocks=[0, 3])
    assert pipe._fastrepulse_handle is handle and _hooks(pipe) == hooks
    handle.remove()
    assert _hooks(pipe) == 0


def _text_vendi_after_first_block(pipe, scale: float) -> float:
    """Vendi score of the text stream at the first block's output, over the groups of the first step."""
    captured: list[torch.Tensor] = []
    first = pipe.transformer.transformer_blocks[0]
    with fastrepulse.patched(pipe, scale=scale, steps=1, site="block", blocks=[0]):
        # registered after the patch's hook, so it sees the repelled output
        hook = first.register_forward_hook(lambda module, args, output: captured.append(output[0].clone()))
        _generate(pipe, num_inference_steps=1)
    hook.remove()
    return group_vendi(captured[0].double().flatten(1), IMAGES).mean().item()


@pytest.mark.parametrize("name", ["flux", "sd3"])
def test_repulsion_raises_the_text_diversity_it_acts_on(name: str) -> None:
    pipe = TRANSFORMER_PIPELINES[name]()
    scales = [1e-9, 300.0, 1000.0]  # 1e-9: the hooks run but do not move anything measurable
    vendi = [_text_vendi_after_first_block(pipe, scale) for scale in scales]
    assert vendi[0] < vendi[1] < vendi[2]


def test_repulsion_spreads_the_final_latents() -> None:
    pipe = pipelines.flux()
    text = {"max_sequence_length": 512}  # the random tiny T5's 16 tokens move the latents by 0.4% at most
    base = _spread(_generate(pipe, **text), IMAGES)
    spreads = []
    for scale in (300.0, 1000.0):
        with fastrepulse.patched(pipe, scale=scale, steps="all", site="block"):
            spreads.append(_spread(_generate(pipe, **text), IMAGES))
    assert base < spreads[0] < spreads[1]
    assert spreads[1] > 1.02 * base


def test_particle_guidance_spreads_the_latents_and_cads_perturbs_them() -> None:
    pipe = pipelines.flux()
    base_latents = _generate(pipe)
    base = _spread(base_latents, IMAGES)
    with fastrepulse.patched(pipe, method="particle", scale=100.0):
        assert _spread(_generate(pipe), IMAGES) > 1.1 * base
    with fastrepulse.patched(pipe, method="cads", scale=0.25, seed=3):
        first, second = _generate(pipe), _generate(pipe)
    assert torch.equal(first, second)  # seeded noise: reproducible
    assert not torch.equal(first, base_latents)


@pytest.mark.parametrize("name", ["sd", "sdxl"])
def test_baselines_run_on_unet_pipelines(name: str) -> None:
    pipe = ALL_PIPELINES[name]()
    options = {"guidance_scale": 3.0, "negative_prompt": ["blurry"] * len(PROMPTS)}
    base = _generate(pipe, **options)
    with fastrepulse.patched(pipe, method="particle", scale=0.0):
        assert torch.equal(_generate(pipe, **options), base)
    with fastrepulse.patched(pipe, method="particle", scale=30.0):
        assert _spread(_generate(pipe, **options), IMAGES) > _spread(base, IMAGES)
    with fastrepulse.patched(pipe, method="cads", scale=0.25):
        assert not torch.equal(_generate(pipe, **options), base)
    assert torch.equal(_generate(pipe, **options), base)
    with fastrepulse.patched(pipe, method="cads", scale=0.25) as handle:
        refused = "no such text: .*cross-attention only.*; use method='particle' or method='cads'"
        with pytest.raises(ValueError, match=refused):
            fastrepulse.patch(pipe, method="contextual", scale=1.0)
        assert pipe._fastrepulse_handle is handle
    assert _hooks(pipe) == 0


def test_unsupported_pipelines_are_refused() -> None:
    class Pipeline:
        transformer = torch.nn.Linear(2, 2)

    with pytest.raises(TypeError, match="fastrepulse supports FluxTransformer2DModel.*got Pipeline with Linear"):
        fastrepulse.patch(Pipeline(), scale=1.0)


def test_groups_of_one_warn_once_and_group_size_states_the_grouping(repel_calls: list[RepelCall]) -> None:
    """Every image with a prompt of its own: one warning per patch, nothing repelled; `group_size=` groups them."""
    pipe = pipelines.flux()
    fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0])
    call = {**CALL, "prompt": ["a red cat", "a blue dog", "a green frog"], "max_sequence_length": TEXT_TOKENS}
    with pytest.warns(UserWarning, match="each group holds one sample"):
        pipe(generator=torch.Generator().manual_seed(0), **call)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe(generator=torch.Generator().manual_seed(0), **call)
    assert repel_calls == []
    fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0], group_size=3)
    pipe(generator=torch.Generator().manual_seed(0), **call)
    assert [(c.shape[0], c.group_size) for c in repel_calls] == [(3, 3)]
    fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0], group_size=2)
    with pytest.raises(ValueError, match="a batch of 3 samples does not split into groups of 2"):
        pipe(generator=torch.Generator().manual_seed(0), **call)


def test_prompt_embeds_passed_expanded_form_one_group(repel_calls: list[RepelCall]) -> None:
    """Embeddings that already hold a prompt's images (num_images_per_prompt=1) are one group of them."""
    pipe = pipelines.flux()
    embeds, pooled, _ = pipe.encode_prompt(prompt=PROMPTS[0], prompt_2=None, num_images_per_prompt=IMAGES)
    call = {**CALL, "prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
    base = pipe(generator=torch.Generator().manual_seed(0), **call).images
    fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0])
    repelled = pipe(generator=torch.Generator().manual_seed(0), **call).images
    assert [(c.shape[0], c.group_size) for c in repel_calls] == [(IMAGES, IMAGES)]
    assert not torch.equal(repelled, base)


def test_prompt_embeds_of_one_prompt_broadcast_to_its_images(repel_calls: list[RepelCall]) -> None:
    pipe = pipelines.flux()
    embeds, pooled, _ = pipe.encode_prompt(prompt=PROMPTS[0], prompt_2=None)
    fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0])
    latents = pipe(prompt_embeds=embeds, pooled_prompt_embeds=pooled, num_images_per_prompt=IMAGES, **CALL).images
    assert latents.shape[0] == IMAGES
    assert [(c.shape[0], c.group_size) for c in repel_calls] == [(IMAGES, IMAGES)]


def test_scheduler_replaced_while_patched_is_wrapped_and_restored(repel_calls: list[RepelCall]) -> None:
    pipe = pipelines.flux()
    handle = fastrepulse.patch(pipe, scale=300.0, steps=1, blocks=[0])
    replacement = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.scheduler = replacement
    _generate(pipe)
    assert [call.step for call in repel_calls] == [0]
    handle.remove()
    assert pipe.scheduler is replacement


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"scale": -1.0}, "scale must be a finite number >= 0"),
        ({"scale": 1.0, "site": "mlp"}, "site must be one of"),
        ({"scale": 1.0, "blocks": "first"}, "blocks must be one of"),
        ({"scale": 1.0, "blocks": []}, "blocks must not be empty"),
        ({"scale": 1.0, "steps": 0}, "steps must be an int >= 1"),
        ({"scale": 1.0, "method": "sgi"}, "method must be one of"),
        ({"preset": "flux-schnell"}, "preset must be one of"),
        ({"preset": "flux-dev", "method": "cads"}, "preset 'flux-dev' is for method='contextual'"),
        ({}, "pass scale=... or a preset"),
        ({"scale": 1.0, "group_size": 0}, "group_size must be an int >= 1"),
    ],
)
def test_bad_options_fail_at_patch_time_and_change_nothing(options: dict, message: str) -> None:
    pipe = pipelines.flux()
    with pytest.raises(ValueError, match=message):
        fastrepulse.patch(pipe, **options)
    assert "_fastrepulse_handle" not in pipe.__dict__ and _hooks(pipe) == 0


def test_an_option_overrides_one_field_of_the_preset() -> None:
    handle = fastrepulse.patch(pipelines.flux(), preset="flux-dev", iterations=10)
    assert handle.config == fastrepulse.PRESETS["flux-dev"].replace(iterations=10)
    assert handle.config.iterations == 10 != fastrepulse.PRESETS["flux-dev"].iterations


def test_triton_backend_and_device_solver_inside_the_hooks() -> None:
    """The kernels (Triton's interpreter here) in real hooks give what the eager backend and host solver give."""
    pipe = pipelines.flux()
    options = {"scale": 1000.0, "steps": 1, "iterations": 3, "blocks": [0, 3]}
    with fastrepulse.patched(pipe, backend="torch", solver="host", **options):
        eager = _generate(pipe, prompt=PROMPTS[:1])
    with fastrepulse.patched(pipe, backend="triton", solver="device", **options):
        fused = _generate(pipe, prompt=PROMPTS[:1])
    assert not torch.equal(fused, _generate(pipe, prompt=PROMPTS[:1]))
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-4)
