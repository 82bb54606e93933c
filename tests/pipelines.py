"""Tiny, deterministic, fully offline diffusers pipelines for tests.

Every component is built from constructor arguments (nothing comes from a hub) and is small enough that a call with
2 prompts x 3 images x 4 steps takes a fraction of a second on a CPU. Weights are seeded inside each builder, so two
calls give identical pipelines; the caller's RNG state is left untouched.
"""

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxKontextPipeline,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from fastrepulse.testbed.text import clip_encoder, clip_tokenizer, t5_tokenizer

HEIGHT = 32  # image size for every pipeline: a multiple of 2 * vae_scale_factor (* patch size) for all of them
WIDTH = 32
# Kontext otherwise resizes the output to max_area=1024**2 and the input image to a preferred Kontext resolution.
KONTEXT_KWARGS = {"max_area": HEIGHT * WIDTH, "_auto_resize": False}

P = TypeVar("P", bound=DiffusionPipeline)


def _seeded(build: Callable[[], P]) -> Callable[[], P]:
    """Build under a fixed seed (identical weights on every call) without touching the caller's RNG."""

    @functools.wraps(build)
    def wrapper() -> P:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            pipe = build()
        for module in pipe.components.values():
            if isinstance(module, torch.nn.Module):
                module.eval()  # as from_pretrained leaves them; a VAE in train mode decodes ~5e-7 differently
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return wrapper


def _t5(d_model: int) -> T5EncoderModel:
    """One-layer T5 encoder; its width is the transformer's joint_attention_dim."""
    config = T5Config(
        vocab_size=128, d_model=d_model, d_kv=8, d_ff=64, num_layers=1, num_heads=4, relative_attention_num_buckets=8
    )
    return T5EncoderModel(config)


def _vae(latent_channels: int = 4) -> AutoencoderKL:
    """Two-level VAE (scale factor 2, 4 latent channels unless told); shift_factor is set because Flux and SD3 read
    it."""
    return AutoencoderKL(
        block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=latent_channels,
        layers_per_block=1,
        norm_num_groups=2,
        sample_size=HEIGHT,
        shift_factor=0.1,
        scaling_factor=1.5,
    )


def _flux_components() -> dict:
    """Components shared by Flux and Flux Kontext."""
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,  # 4 latent channels packed 2x2
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,
        axes_dims_rope=[4, 4, 8],
    )
    return {
        "transformer": transformer,
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": _vae(),
        "text_encoder": clip_encoder(CLIPTextModel, 32, 77),
        "tokenizer": clip_tokenizer(77),
        "text_encoder_2": _t5(32),
        "tokenizer_2": t5_tokenizer(),
    }


@_seeded
def flux() -> FluxPipeline:
    """Flux-dev layout: 2 dual-stream and 2 single-stream blocks, guidance embedding."""
    return FluxPipeline(**_flux_components())


@_seeded
def flux_kontext() -> FluxKontextPipeline:
    """Flux Kontext with the Flux components; call it with `image=` and `**KONTEXT_KWARGS`."""
    return FluxKontextPipeline(**_flux_components())


@_seeded
def sd3() -> StableDiffusion3Pipeline:
    """SD3 with 4 joint blocks (the last context_pre_only); CLIP widths 32 + 32 fill the 64-wide T5 embeddings."""
    transformer = SD3Transformer2DModel(
        sample_size=HEIGHT // 2,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=64,
        caption_projection_dim=32,
        pooled_projection_dim=64,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(),
        text_encoder=clip_encoder(CLIPTextModelWithProjection, 32, 77),
        tokenizer=clip_tokenizer(77),
        text_encoder_2=clip_encoder(CLIPTextModelWithProjection, 32, 77),
        tokenizer_2=clip_tokenizer(77),
        text_encoder_3=_t5(64),
        tokenizer_3=t5_tokenizer(),
    )


def _euler() -> EulerDiscreteScheduler:
    """The Stable Diffusion noise schedule (steps_offset=1 avoids a deprecation warning)."""
    return EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)


def _unet(**kwargs) -> UNet2DConditionModel:
    """Two-level UNet with cross-attention in the lower level."""
    return UNet2DConditionModel(
        sample_size=HEIGHT // 2,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=2,
        **kwargs,
    )


@_seeded
def sd() -> StableDiffusionPipeline:
    """Stable Diffusion 1.x layout without safety checker."""
    return StableDiffusionPipeline(
        unet=_unet(cross_attention_dim=32),
        scheduler=_euler(),
        vae=_vae(),
        text_encoder=clip_encoder(CLIPTextModel, 32, 77),
        tokenizer=clip_tokenizer(77),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


@_seeded
def sdxl() -> StableDiffusionXLPipeline:
    """SDXL layout: two CLIP encoders (32 + 32 wide) and text-time conditioning (6 * 8 time ids + 32 pooled)."""
    unet = _unet(
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
    )
    return StableDiffusionXLPipeline(
        unet=unet,
        scheduler=_euler(),
        vae=_vae(),
        text_encoder=clip_encoder(CLIPTextModel, 32, 77),
        tokenizer=clip_tokenizer(77),
        text_encoder_2=clip_encoder(CLIPTextModelWithProjection, 32, 77),
        tokenizer_2=clip_tokenizer(77),
    )


@_seeded
def pixart() -> PixArtSigmaPipeline:
    """PixArt-Sigma: a transformer whose text enters by cross-attention only (no contextual stream); call it with
    ``use_resolution_binning=False`` (its bins know only the released sizes)."""
    transformer = PixArtTransformer2DModel(
        sample_size=HEIGHT // 2,
        num_attention_heads=2,
        attention_head_dim=8,
        in_channels=4,
        out_channels=8,
        num_layers=2,
        cross_attention_dim=16,
        caption_channels=32,
        norm_type="ada_norm_single",
        use_additional_conditions=False,
        patch_size=2,
    )
    return PixArtSigmaPipeline(
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
        vae=_vae(),
        text_encoder=_t5(32),
        tokenizer=t5_tokenizer(),
    )
