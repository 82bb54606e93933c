"""The testbed's generators: small Flux and SD3 pipelines trained on the real digits, built offline.

Every component is a diffusers or transformers class made from constructor arguments: a one-level VAE
(8 x 8 grey images to 8 x 8 one-channel latents), the transformer, CLIP/T5 text encoders with
character-level tokenizers (fixed random weights, shipped with the rest: the transformer learns to read
them), and a flow-matching Euler scheduler. `pipeline(name)` builds the architecture and loads the
trained weights shipped in `weights/<name>.safetensors`; `bench/train_testbed.py` reproduces them.
`save_pretrained` saves them as the standard diffusers pipeline, marked as the testbed (`TESTBED_MARKER`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    ChromaPipeline,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from safetensors import safe_open
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from fastrepulse.testbed import scene_models
from fastrepulse.testbed.digits import SIZE
from fastrepulse.testbed.text import clip_encoder, clip_tokenizer, t5_encoder, t5_tokenizer

PROMPT = "a handwritten {digit}"
"""The testbed's prompts: `PROMPT.format(digit=7)`; the empty prompt is the unconditional one."""
WEIGHTS = Path(__file__).with_name("weights")
TEXT_TOKENS = 16
"""T5 tokens per prompt: "a handwritten 7" is 15 characters and </s>."""
CLIP_TOKENS = 20
"""CLIP tokens per prompt: start, 15 characters, end, padding."""
TEXT_WIDTH = 64
"""Width of the T5 embeddings (the transformers' joint_attention_dim)."""
CLIP_WIDTH = 32


CALL_DEFAULTS: dict[str, dict[str, Any]] = {
    "flux": {
        "num_inference_steps": 20,
        "true_cfg_scale": 3.0,
        "negative_prompt": "",
        "max_sequence_length": TEXT_TOKENS,
    },
    "sd3": {"num_inference_steps": 20, "guidance_scale": 3.0, "max_sequence_length": TEXT_TOKENS},
}
"""The testbed models by name, with their stored call defaults: 20 Euler steps and classifier-free
guidance 3 (true CFG for Flux, which has no guidance embedding), at the scans' 8 x 8 pixels."""
TESTBED_MARKER = "_fastrepulse_testbed"
"""The key of a saved testbed pipeline's model_index.json that names the model ("flux" or "sd3"). diffusers ignores
it (a private key): `DiffusionPipeline.from_pretrained` loads the folder as the standard pipeline, without the stored
call defaults; ``DiffusionPipeline.load_config(folder)`` reads it."""


class _Defaults:
    """Fills the testbed's stored call defaults (steps, guidance, size) into a diffusers pipeline call."""

    testbed_name: str
    call_defaults: dict[str, Any] = {}
    size: int = SIZE

    def to_json_string(self) -> str:
        """The config that `save_pretrained` writes to model_index.json: named as the diffusers pipeline class, which
        is what `DiffusionPipeline.from_pretrained` can load (it knows no testbed class), and marked as the testbed."""
        config = json.loads(super().to_json_string())
        mro = type(self).__mro__
        config.update({"_class_name": mro[mro.index(_Defaults) + 1].__name__, TESTBED_MARKER: self.testbed_name})
        return json.dumps(config, indent=2, sort_keys=True) + "\n"

    def __call__(self, prompt: str | list[str] | None = None, **kwargs: Any) -> Any:
        settings = {"height": self.size, "width": self.size, **self.call_defaults, **kwargs}
        if isinstance(prompt, list) and isinstance(settings.get("negative_prompt"), str):
            settings["negative_prompt"] = [settings["negative_prompt"]] * len(prompt)
        return super().__call__(prompt, **settings)


class TestbedFluxPipeline(_Defaults, FluxPipeline):
    """FluxPipeline with the testbed's stored defaults."""

    testbed_name = "flux"
    call_defaults = CALL_DEFAULTS["flux"]


class TestbedSD3Pipeline(_Defaults, StableDiffusion3Pipeline):
    """StableDiffusion3Pipeline with the testbed's stored defaults."""

    testbed_name = "sd3"
    call_defaults = CALL_DEFAULTS["sd3"]


class ScenesFluxPipeline(_Defaults, FluxPipeline):
    """FluxPipeline with the scenes testbed's stored defaults."""

    testbed_name = "scenes-flux"
    call_defaults = scene_models.CALL_DEFAULTS["scenes-flux"]
    size = scene_models.SIZE


class ScenesSD3Pipeline(_Defaults, StableDiffusion3Pipeline):
    """StableDiffusion3Pipeline with the scenes testbed's stored defaults."""

    testbed_name = "scenes-sd3"
    call_defaults = scene_models.CALL_DEFAULTS["scenes-sd3"]
    size = scene_models.SIZE


class ScenesChromaPipeline(_Defaults, ChromaPipeline):
    """ChromaPipeline with the scenes testbed's stored defaults."""

    testbed_name = "scenes-chroma"
    call_defaults = scene_models.CALL_DEFAULTS["scenes-chroma"]
    size = scene_models.SIZE


PIPELINE_CLASSES: dict[str, type[DiffusionPipeline]] = {
    "flux": TestbedFluxPipeline,
    "sd3": TestbedSD3Pipeline,
    "scenes-flux": ScenesFluxPipeline,
    "scenes-sd3": ScenesSD3Pipeline,
    "scenes-chroma": ScenesChromaPipeline,
}
"""Every testbed pipeline by name: the digit models and the scene models."""


def from_saved(pipe: DiffusionPipeline, name: str) -> DiffusionPipeline:
    """The testbed pipeline `name` again, with its stored call defaults, from the components of a folder that
    `save_pretrained` wrote (loaded as the standard pipeline; its model_index.json carries `TESTBED_MARKER`)."""
    if name not in PIPELINE_CLASSES:
        raise ValueError(f"{TESTBED_MARKER} must be one of {sorted(PIPELINE_CLASSES)}, got {name!r}")
    return PIPELINE_CLASSES[name](**pipe.components)


def pipeline(name: str, *, trained: bool = True) -> DiffusionPipeline:
    """The testbed pipeline `name` (the digits' "flux" or "sd3", the scenes' "scenes-flux", "scenes-sd3" or
    "scenes-chroma") on the CPU in float32, with its trained weights.

    `trained=False` gives the same architecture with its seeded initial weights (what training starts from).

    Raises:
        ValueError: an unknown name.
        FileNotFoundError: the weights are missing from the installed package (reinstall it, or train them with
            bench/train_testbed.py or bench/train_scenes.py).
    """
    if name not in PIPELINE_CLASSES:
        raise ValueError(f"testbed model must be one of {sorted(PIPELINE_CLASSES)}, got {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe = scene_models.build(name, PIPELINE_CLASSES[name]) if name in scene_models.NAMES else _build(name)
    if trained:
        path = WEIGHTS / f"{name}.safetensors"
        if not path.exists():
            script = f"train_scenes.py --model {name}" if name in scene_models.NAMES else "train_testbed.py"
            raise FileNotFoundError(
                f"{path} is missing: reinstall fastrepulse, or train the weights with bench/{script}; "
                "trained=False gives the untrained pipeline"
            )
        with safe_open(path, "pt") as weights:
            state = {key: weights.get_tensor(key) for key in weights.keys()}  # noqa: SIM118 (no __iter__)
            load_weights(pipe, state, weights.metadata())
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.eval().requires_grad_(False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trainable(pipe: DiffusionPipeline) -> dict[str, torch.nn.Module]:
    """The modules whose weights the testbed ships, by component name."""
    return {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def load_weights(pipe: DiffusionPipeline, state: dict[str, torch.Tensor], latents: dict[str, str]) -> None:
    """Load a flat state dict ("<component>.<parameter>") into the pipeline's modules, strictly, and the
    latents' shift and scaling factors (`latent_statistics`) into the VAE's config."""
    pipe.vae.register_to_config(**{key: float(latents[key]) for key in ("shift_factor", "scaling_factor")})
    for name, module in trainable(pipe).items():
        prefix = f"{name}."
        own = {key[len(prefix) :]: value.float() for key, value in state.items() if key.startswith(prefix)}
        module.load_state_dict(_same_layout(own, set(module.state_dict())), strict=True)


def _same_layout(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """`state` keyed as `expected`: transformers 5 dropped CLIPTextModel's `text_model.` wrapper, which 4.x
    keeps; anything else that differs is left for the strict load to report."""
    for rename in (lambda key: key, lambda key: "text_model." + key, lambda key: key.removeprefix("text_model.")):
        renamed = {rename(key): value for key, value in state.items()}
        if set(renamed) == expected:
            return renamed
    return state


def latent_statistics(pipe: DiffusionPipeline) -> dict[str, str]:
    """The VAE's latent shift and scaling factors as safetensors metadata."""
    return {key: repr(float(pipe.vae.config[key])) for key in ("shift_factor", "scaling_factor")}


def weights_digest(path: Path) -> str:
    """The identity of a weights file: sha256 (16 hex digits) of its metadata and tensors, each in name order. The
    file's own bytes are not one: safetensors writes the metadata in an order that changes from process to process,
    so two runs that train the same weights can write two different files."""
    digest = hashlib.sha256()
    with safe_open(path, "pt") as weights:
        for key, value in sorted(weights.metadata().items()):
            digest.update(f"{key}={value}\n".encode())
        for key in sorted(weights.keys()):  # noqa: SIM118 (no __iter__)
            tensor = weights.get_tensor(key)
            digest.update(f"{key} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def state_of(pipe: DiffusionPipeline) -> dict[str, torch.Tensor]:
    """The pipeline's weights as one flat state dict, stored in float16 to keep the file small."""
    return {
        f"{name}.{key}": value.detach().to(torch.float16).contiguous()
        for name, module in trainable(pipe).items()
        for key, value in module.state_dict().items()
    }


def _build(name: str) -> DiffusionPipeline:
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    if name == "flux":
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4,  # one latent channel packed 2 x 2: 16 image tokens
            num_layers=2,
            num_single_layers=2,
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=TEXT_WIDTH,
            pooled_projection_dim=CLIP_WIDTH,
            guidance_embeds=False,
            axes_dims_rope=(8, 12, 12),
        )
        pipe = TestbedFluxPipeline(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae(),
            text_encoder=clip_encoder(CLIPTextModel, CLIP_WIDTH, CLIP_TOKENS),
            tokenizer=clip_tokenizer(CLIP_TOKENS),
            text_encoder_2=t5_encoder(TEXT_WIDTH),
            tokenizer_2=t5_tokenizer(),
        )
    else:
        transformer = SD3Transformer2DModel(
            sample_size=SIZE,
            patch_size=2,  # 16 image tokens
            in_channels=1,
            out_channels=1,
            num_layers=4,  # the last one has no text output
            attention_head_dim=32,
            num_attention_heads=2,
            joint_attention_dim=TEXT_WIDTH,
            caption_projection_dim=64,
            pooled_projection_dim=2 * CLIP_WIDTH,
            pos_embed_max_size=SIZE // 2,
        )
        pipe = TestbedSD3Pipeline(
            transformer=transformer,
            scheduler=scheduler,
            vae=vae(),
            text_encoder=clip_encoder(CLIPTextModelWithProjection, CLIP_WIDTH, CLIP_TOKENS),
            tokenizer=clip_tokenizer(CLIP_TOKENS),
            text_encoder_2=clip_encoder(CLIPTextModelWithProjection, CLIP_WIDTH, CLIP_TOKENS),
            tokenizer_2=clip_tokenizer(CLIP_TOKENS),
            text_encoder_3=t5_encoder(TEXT_WIDTH),
            tokenizer_3=t5_tokenizer(),
        )
    pipe.default_sample_size = SIZE // pipe.vae_scale_factor
    return pipe


def vae() -> AutoencoderKL:
    """One-level VAE (scale factor 1): 8 x 8 grey images to one-channel 8 x 8 latents and back."""
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        block_out_channels=(32,),
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        latent_channels=1,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=SIZE,
        mid_block_add_attention=False,
        shift_factor=0.0,  # set from the trained latents' statistics, stored with the weights
        scaling_factor=1.0,
    )
