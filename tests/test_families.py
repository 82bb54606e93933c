"""Every supported family on a tiny offline pipeline: which tokens are repelled, groups, exactness, refusals.

Each pipeline is called as its users call it (prompt strings through its own text encoder, its own CFG style),
with 2 prompts x 2 images, 2 steps. The text lengths a prompt should have are found apart from fastrepulse: from a
call with that prompt alone (no padding to another prompt), less the pads its mask excludes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import pipelines
import pipelines_dual
import pipelines_more
import pipelines_unified
import pipelines_video
import pytest
import torch

import fastrepulse
from fastrepulse.models import FAMILIES, Family, find_denoiser
from fastrepulse.repulsion import Repulsion
from fastrepulse.tokens import TextLayout

PROMPTS = ["a red cat", "a small blue dog on a hill"]  # of different lengths: pads differ between them
IMAGES = 2
STEPS = 2

BUILDERS = {
    **pipelines_dual.BUILDERS,
    **pipelines_unified.BUILDERS,
    **pipelines_more.BUILDERS,
    **pipelines_video.BUILDERS,
}
SIZE = {"height": pipelines.HEIGHT, "width": pipelines.WIDTH}
ALL_CALLS = {**pipelines_dual.CALLS, **pipelines_unified.CALLS, **pipelines_more.CALLS, **pipelines_video.CALLS}
CALLS = {name: {**SIZE, **call} for name, call in ALL_CALLS.items()}
ONE_PROMPT = {"qwenimage_edit_plus"}
"""Pipelines that take one prompt per call (upstream)."""
VIDEO = set(pipelines_video.BUILDERS)
"""Pipelines that make videos: num_videos_per_prompt, and frames for images."""
REPEATED = {"cogvideox"}
"""Pipelines that make one sample per prompt whatever is asked (upstream): their prompts are repeated instead."""


def _samples(name: str, prompts: list[str], call: dict) -> dict:
    """The call's prompt list and samples per prompt, as each pipeline takes them (a copy of the list: Z-Image's
    pipeline writes its chat template into the caller's)."""
    if name in REPEATED:
        negative = call.get("negative_prompt")
        repeated = (
            {"negative_prompt": [n for n in negative for _ in range(IMAGES)]} if isinstance(negative, list) else {}
        )
        return {"prompt": [p for p in prompts for _ in range(IMAGES)], **repeated}
    per_prompt = "num_videos_per_prompt" if name in VIDEO else "num_images_per_prompt"
    return {"prompt": list(prompts), per_prompt: IMAGES}


def _images(output) -> torch.Tensor:
    return output.frames if hasattr(output, "frames") else output.images


def _prompts(name: str) -> list[str]:
    return PROMPTS[:1] if name in ONE_PROMPT else PROMPTS


@dataclass
class Run:
    """One repulsion run by a hook: its pieces (cloned before it ran), its group size and its block."""

    pieces: list[torch.Tensor]
    group_size: int
    block: int
    call: int  # the denoiser call of the pipeline call it ran in


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def family(request: pytest.FixtureRequest) -> tuple[str, object]:
    return request.param, BUILDERS[request.param]()


def _generate(name: str, pipe, prompts: list[str] | None = None, seed: int = 0) -> torch.Tensor:
    prompts = prompts or _prompts(name)
    generator = torch.Generator().manual_seed(seed)
    kwargs = {"num_inference_steps": STEPS, "output_type": "latent", **CALLS[name]}
    kwargs.update(_samples(name, prompts, kwargs))
    return _images(pipe(generator=generator, **kwargs))


def _record(monkeypatch: pytest.MonkeyPatch, calls: list[int] = ()) -> list[Run]:
    """Record every repulsion the hooks run (and still run it); `calls`: a list that grows by one at each denoiser
    call, to tell which call a run is in."""
    runs: list[Run] = []
    real_run, real_repel = Repulsion.run, fastrepulse.RepulsionHandle._repel
    current: list[fastrepulse.RepulsionHandle] = []

    def repel(self, parts, joint):
        current.append(self)
        try:
            real_repel(self, parts, joint)
        finally:
            current.pop()

    def run(self, parts, outs, group_size, **options):
        handle = current[-1]
        block = handle._block_indices[(handle._forward.hooks_run - 1) % len(handle._block_indices)]
        runs.append(Run([part.clone() for part in parts], group_size, block, len(calls) - 1))
        return real_run(self, parts, outs, group_size, **options)

    monkeypatch.setattr(fastrepulse.RepulsionHandle, "_repel", repel)
    monkeypatch.setattr(Repulsion, "run", run)
    return runs


def _attended(name: str, arguments: dict) -> list[int]:
    """The text tokens each row of a denoiser call attends, as the family's pipeline and model lay them out
    (written from runs of each pipeline, apart from fastrepulse's registry)."""
    if name.startswith("z_image"):  # captions of their own lengths, padded to 32 with attended pad tokens
        return [-(-len(caption) // 32) * 32 for caption in arguments["cap_feats"]]
    if name == "hidream":  # T5, then the last Llama layer
        t5 = arguments["encoder_hidden_states_t5"]
        return [t5.shape[1] + arguments["encoder_hidden_states_llama3"].shape[2]] * t5.shape[0]
    if name == "ernie_image":  # per-sample lengths
        return arguments["text_lens"].tolist()
    if name == "ideogram4":  # left padding, then the text: marked 3
        return (arguments["indicator"] == 3).sum(1).tolist()
    if name == "bria_fibo":  # a joint [text ; image] mask, in the attention's arguments
        text, mask = arguments["encoder_hidden_states"], arguments["joint_attention_kwargs"].get("attention_mask")
        return [text.shape[1]] * text.shape[0] if mask is None else mask[:, 0, 0, : text.shape[1]].sum(1).tolist()
    if name == "hunyuan_image":  # the attended Qwen and ByT5 tokens, packed first
        masks = [arguments[key] for key in ("encoder_attention_mask", "encoder_attention_mask_2")]
        return sum(mask.bool().sum(1) for mask in masks if mask is not None).tolist()
    text = arguments["encoder_hidden_states"]
    masks = dict.fromkeys(("lumina2", "krea2", "hunyuan_video", "mochi"), "encoder_attention_mask")
    mask = arguments.get(masks.get(name, "encoder_hidden_states_mask"))
    if mask is not None:
        return mask.bool().sum(1).tolist()
    return [text.shape[1] + (8 if name == "aura_flow" else 0)] * text.shape[0]  # AuraFlow's registers


PADS_TO_THE_LONGEST = {"cogview4"}
"""Pipelines that pad every prompt of a call to the longest and attend the pads."""
MASK_PLACES_TEXT = {"lumina2", "hunyuan_image"}
"""Pipelines that repeat the masks prompt by prompt, the embeddings image by image, into a model that places each
row's text by its mask: one prompt's rows then hold its text at different places, and a group takes the tokens
every one of its rows attends (with 2 images of 2 prompts: the shorter prompt's length, in both groups)."""


def _negatives(name: str, count: int) -> list[str | None]:
    negative = CALLS[name].get("negative_prompt")
    return list(negative) if isinstance(negative, list) else [negative] * count


def _lengths_alone(name: str, pipe, prompt: str, negative: str | None) -> list[list[int]]:
    """Per denoiser call of the first step, each row's attended text, for `prompt` alone (2 images)."""
    denoiser = find_denoiser(pipe).module
    signature = inspect.signature(type(denoiser).forward)
    seen: list[list[int]] = []

    def hook(module, args, kwargs):
        seen.append(_attended(name, signature.bind(module, *args, **kwargs).arguments))

    call = {key: value for key, value in CALLS[name].items() if key != "negative_prompt"}
    if negative is not None:
        call["negative_prompt"] = [negative]
    if isinstance(call.get("image"), list):
        call["image"] = call["image"][:1]  # one reference image per prompt
    handle = denoiser.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        generator = torch.Generator().manual_seed(0)
        call.update(_samples(name, [prompt], call))
        pipe(num_inference_steps=STEPS, output_type="latent", generator=generator, **call)  # Mochi's needs 2
    finally:
        handle.remove()
    return seen[: len(seen) // STEPS]  # the first step's


def _expected_runs(name: str, pipe, prompts: list[str]) -> list[list[int]]:
    """Per denoiser call of the first step: the text length of each run a hooked block makes, group by group in
    prompt order within each guidance branch (one run for the whole batch where all groups have one length)."""
    alone = [
        _lengths_alone(name, pipe, prompt, negative)
        for prompt, negative in zip(prompts, _negatives(name, len(prompts)), strict=True)
    ]
    expected = []
    for index in range(len(alone[0])):  # denoiser calls per step: one, or one per branch
        rows = [lengths[index] for lengths in alone]
        branches = len(rows[0]) // IMAGES
        groups = []
        for branch in range(branches):
            found = [row[branch * IMAGES] for row in rows]
            if name in PADS_TO_THE_LONGEST:
                found = [max(found)] * len(found)
            if name in MASK_PLACES_TEXT:
                found = [min(found)] * len(found)
            groups.extend(found)
        expected.append(groups[:1] if len(set(groups)) == 1 else groups)
    return expected


def test_scale_zero_and_unpatch_give_the_unpatched_images(family) -> None:
    name, pipe = family
    base = _generate(name, pipe)
    for method in ("contextual", *find_denoiser(pipe).family.baselines):
        with fastrepulse.patched(pipe, method=method, scale=0.0):
            assert torch.equal(_generate(name, pipe), base), method
    fastrepulse.patch(pipe, method="contextual", scale=1e4).remove()
    assert torch.equal(_generate(name, pipe), base)


def test_repulsion_changes_the_images(family) -> None:
    name, pipe = family
    base = _generate(name, pipe)
    scales = {"contextual": 1e4, "particle": 30.0, "cads": 0.25}
    for method in ("contextual", *find_denoiser(pipe).family.baselines):
        with fastrepulse.patched(pipe, method=method, scale=scales[method], steps="all"):
            assert not torch.equal(_generate(name, pipe), base), method


def test_the_repelled_tokens_are_each_prompts_attended_text(family, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every run repels one prompt's 2 images (never a branch's other prompt, never the other branch), and takes
    exactly that prompt's attended text tokens: as many as it has alone, no image token, no masked pad."""
    name, pipe = family
    prompts = _prompts(name)
    expected = _expected_runs(name, pipe, prompts)
    calls: list[int] = []
    counter = find_denoiser(pipe).module.register_forward_pre_hook(lambda module, args: calls.append(len(calls)))
    runs = _record(monkeypatch, calls)
    try:
        with fastrepulse.patched(pipe, method="contextual", scale=1e4, site="block", single_stream_tokens="text"):
            _generate(name, pipe, prompts)
    finally:
        counter.remove()
    assert {run.group_size for run in runs} == {IMAGES}
    blocks = len(find_denoiser(pipe).blocks)
    found = [[] for _ in expected]
    for run in runs:
        found[run.call].append(sum(piece.shape[1] for piece in run.pieces))
    assert found == [lengths * blocks for lengths in expected]


def _text_start(name: str, joint: int, arguments: dict) -> int:
    """Where the text starts in a single-stream block's joint output of `joint` tokens (as each pipeline's runs
    showed, apart from fastrepulse's registry)."""
    if name == "hidream":  # [image | T5 | Llama layer -1 | this block's Llama layer]
        t5, llama = arguments["encoder_hidden_states_t5"].shape[1], arguments["encoder_hidden_states_llama3"].shape[2]
        return joint - t5 - 2 * llama
    if name.startswith("z_image"):  # [image, padded to 32 | caption | ...]
        height, width = arguments["x"][0].shape[-2:]
        return -(-(height // 2) * (width // 2) // 32) * 32
    if name == "ernie_image":  # [image | text, padded to the longest]
        return joint - arguments["text_bth"].shape[1]
    return 0  # [text | image]


SEQUENCE_FIRST = {"ernie_image"}
"""Pipelines whose blocks return [sequence, batch, width]."""
CARRIED = {"bria_fibo": 0.5}
"""The share of the text's channels that each next block takes on (BriaFibo replaces the rest)."""


@pytest.mark.parametrize("site", ["block", "attention"])
def test_joint_sequences_give_up_exactly_their_text(family, site: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a block or its attention returns one joint sequence, each run repels the text tokens at the family's
    text position, as they were returned (no image token): compared value for value."""
    name, pipe = family
    denoiser = find_denoiser(pipe)
    signature = inspect.signature(type(denoiser.module).forward)
    calls: list[dict] = []
    outputs: dict[tuple[int, int], torch.Tensor] = {}

    def before(module, args, kwargs):
        calls.append(signature.bind(module, *args, **kwargs).arguments)

    def capture(index: int):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                batch_first = output.transpose(0, 1) if name in SEQUENCE_FIRST and site == "block" else output
                outputs[len(calls) - 1, index] = batch_first.clone()

        return hook

    hooks = [denoiser.module.register_forward_pre_hook(before, with_kwargs=True)]
    for block in denoiser.blocks:
        module = block.module if site == "block" else block.attention
        hooks.append(module.register_forward_hook(capture(block.index)))
    runs = _record(monkeypatch, calls)
    try:
        with fastrepulse.patched(pipe, method="contextual", scale=1e4, site=site, single_stream_tokens="text"):
            _generate(name, pipe)
    finally:
        for hook in hooks:
            hook.remove()
    if not outputs:
        pytest.skip(f"no {site} of this family returns a joint sequence")
    checked = 0
    for (call, block), output in outputs.items():
        block_runs = [run for run in runs if run.call == call and run.block == block]
        start = _text_start(name, output.shape[1], calls[call])
        for index, run in enumerate(block_runs):
            rows = slice(None) if run.pieces[0].shape[0] == output.shape[0] else slice(2 * index, 2 * index + 2)
            text = torch.cat(run.pieces, dim=1)
            masks = {"krea2": "encoder_attention_mask", "ideogram4": "indicator"}  # text not in one run
            mask = calls[call].get(masks.get(name, ""))
            if mask is None:
                positions = torch.arange(start, start + text.shape[1])
            else:  # Krea2: [prompt | pads | suffix]; Ideogram4: [pads | text | image], text marked 3
                positions = start + (mask[rows][0] == (3 if name == "ideogram4" else True)).nonzero()[:, 0]
            expected = output[rows][:, positions]
            expected = expected[..., : int(expected.shape[-1] * CARRIED.get(name, 1))]
            assert torch.equal(text, expected), (call, block, index)
            checked += 1
    assert checked


def test_the_hooked_text_is_contextual(family, monkeypatch: pytest.MonkeyPatch) -> None:
    """The text each block repels changes when only the latents change (another seed): it is contextual."""
    name, pipe = family
    runs = _record(monkeypatch)
    with fastrepulse.patched(pipe, method="contextual", scale=1e-30, site="block", single_stream_tokens="text"):
        _generate(name, pipe, seed=0)
        first = list(runs)
        runs.clear()
        _generate(name, pipe, seed=1)
    assert len(first) == len(runs)
    for one, other in zip(first, runs, strict=True):
        assert one.block == other.block
        assert not torch.equal(one.pieces[0], other.pieces[0]), f"block {one.block}"


def test_a_prompt_is_independent_of_the_prompt_beside_it(family) -> None:
    """Where the unpatched pipeline gives a prompt's images whatever prompt shares the call, so does the patched one."""
    name, pipe = family
    if name in ONE_PROMPT:
        pytest.skip("one prompt per call")
    other = [PROMPTS[0], "a green bird"]
    unpatched = torch.equal(_generate(name, pipe)[:IMAGES], _generate(name, pipe, other)[:IMAGES])
    with fastrepulse.patched(pipe, method="contextual", scale=1e4, steps="all"):
        patched = torch.equal(_generate(name, pipe)[:IMAGES], _generate(name, pipe, other)[:IMAGES])
    assert patched == unpatched


def test_bad_options_are_refused_at_patch_time(family) -> None:
    name, pipe = family
    count = len(find_denoiser(pipe).blocks)
    with pytest.raises(ValueError, match=f"this model has {count} text blocks"):
        fastrepulse.patch(pipe, method="contextual", scale=1.0, blocks=(count,))
    with pytest.raises(ValueError, match="site"):
        fastrepulse.patch(pipe, method="contextual", scale=1.0, site="nowhere")
    assert not hasattr(pipe, fastrepulse.patching.HANDLE_ATTRIBUTE)


def test_cads_reads_each_familys_timestep_as_the_noise_level(family, monkeypatch: pytest.MonkeyPatch) -> None:
    """CADS anneals on t in [0, 1], 1 = pure noise, whatever the family passes its denoiser (t, t / 1000, 1 - t)."""
    name, pipe = family
    if "cads" not in find_denoiser(pipe).family.baselines:
        pytest.skip("CADS does not work on this family")
    levels: list[float] = []
    real = fastrepulse.patching.cads_condition

    def recording(condition, t, config, generator):
        levels.append(float(t))
        return real(condition, t, config, generator)

    monkeypatch.setattr(fastrepulse.patching, "cads_condition", recording)
    with fastrepulse.patched(pipe, method="cads", scale=0.25):
        _generate(name, pipe)
    assert levels[0] == pytest.approx(1.0, abs=0.02)
    assert 0.0 <= min(levels) < levels[0] and max(levels) <= 1.0 + 1e-6


def test_every_registered_class_exists_in_diffusers() -> None:
    """The registry names classes as strings: each is a diffusers class (a typo would leave its family unmatched)."""
    import diffusers

    for family in FAMILIES:
        for name in family.classes:
            assert hasattr(diffusers, name), name


NO_CONTEXTUAL_STREAM = {
    "UNet2DConditionModel": "cross-attention only",
    "PixArtTransformer2DModel": "cross-attention only",
    "SanaTransformer2DModel": "cross-attention only",
    "WanTransformer3DModel": "cross-attention only",
    "LTXVideoTransformer3DModel": "cross-attention only",
    "QwenImage21Transformer2DModel": "encoded causally",
    "OmniGenTransformer2DModel": "encoded causally",
    "Cosmos3OmniTransformer": "encoded causally",
}


@pytest.mark.parametrize("denoiser", sorted(NO_CONTEXTUAL_STREAM))
def test_models_without_a_contextual_stream_refuse_contextual_and_say_why(denoiser: str) -> None:
    """A stand-in of the class (found by name, as the registry finds it): "contextual" is refused at patch time with
    the reason and the methods that work there, and those methods patch."""
    pipe = type("Pipeline", (), {"transformer": type(denoiser, (torch.nn.Module,), {})()})()
    family = find_denoiser(pipe).family
    works = " or ".join(f"method={method!r}" for method in family.baselines)
    reason = f"no such text: .*{NO_CONTEXTUAL_STREAM[denoiser]}.*" + (f"use {works}" if works else "no method")
    with pytest.raises(ValueError, match=reason):
        fastrepulse.patch(pipe, method="contextual", scale=1.0)
    for method in ("particle", "cads"):
        if method in family.baselines:
            continue
        with pytest.raises(ValueError, match=f"method='{method}' does not work on"):
            fastrepulse.patch(pipe, method=method, scale=1.0)


def test_baselines_run_on_a_cross_attention_transformer() -> None:
    """PixArt-Sigma end to end: "contextual" refused, Particle Guidance and CADS exact at scale 0 and acting above."""
    pipe = pipelines.pixart()
    call = {**SIZE, "guidance_scale": 4.0, "use_resolution_binning": False, "max_sequence_length": 16}

    def generate() -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        kwargs = {"num_inference_steps": STEPS, "output_type": "latent", **call}
        return pipe(prompt=list(PROMPTS), num_images_per_prompt=IMAGES, generator=generator, **kwargs).images

    base = generate()
    with pytest.raises(ValueError, match="cross-attention only"):
        fastrepulse.patch(pipe, method="contextual", scale=1.0)
    for method, scale in (("particle", 30.0), ("cads", 0.25)):
        with fastrepulse.patched(pipe, method=method, scale=0.0):
            assert torch.equal(generate(), base)
        with fastrepulse.patched(pipe, method=method, scale=scale):
            assert not torch.equal(generate(), base)
    assert torch.equal(generate(), base)


@pytest.mark.parametrize("name", ["qwenimage", "flux2"])  # a text stream, and joint sequences
def test_a_layout_this_diffusers_release_does_not_have_is_a_clear_error(name: str, monkeypatch) -> None:
    """Where the text found in a hooked block does not fit the family's layout (a diffusers release that lays its
    blocks out otherwise), the call stops with an error naming the release, rather than repelling other tokens."""
    import diffusers

    pipe = BUILDERS[name]()
    monkeypatch.setattr(Family, "text_layout", lambda self, arguments: TextLayout(10_000))
    error = rf"expects .*10000.*diffusers release \({diffusers.__version__}\)"
    with (
        fastrepulse.patched(pipe, method="contextual", scale=1e4, site="block"),
        pytest.raises(RuntimeError, match=error),
    ):
        _generate(name, pipe)
