"""The scenes testbed's generators: small Flux, SD3 and Chroma pipelines trained on rendered colour scenes, built
offline.

Every component is a diffusers or transformers class made from constructor arguments:
- a VAE with three downsamplings (48 x 48 RGB to 16-channel 6 x 6 latents), so that a pipeline's 2 x 2 latent
  patch, one image token, covers one 16 x 16 cell of the scene's grid: 9 image tokens;
- the transformer (Flux and Chroma: 3 joint and 3 single-stream blocks; SD3: 4 joint blocks; width 128);
- CLIP and T5 text encoders (Chroma: T5 alone, its pads masked) with word-level tokenizers (fixed random weights,
  shipped with the rest: the transformer learns to read them), one token per word of the scene prompts;
- a flow-matching Euler scheduler.

`bench/train_scenes.py` trains them and writes `weights/scenes-<model>.safetensors`;
`fastrepulse.testbed.pipeline("scenes-flux")`, `pipeline("scenes-sd3")` and `pipeline("scenes-chroma")` load them.
"""

from __future__ import annotations

import warnings
from typing import Any

from diffusers import (
    AutoencoderKL,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
)
from transformers import CLIPTextModel, CLIPTextModelWithProjection

from fastrepulse.testbed import scenes
from fastrepulse.testbed.text import clip_encoder, t5_encoder, word_tokenizer

SIZE = scenes.SIZE
GRID = scenes.GRID
VOCABULARY = (
    *("a", "an", "and", "at", "the", "on", "background", "shape"),
    *scenes.SIZES,
    *scenes.COLOURS,
    *(name for name in scenes.BACKGROUNDS if name not in scenes.COLOURS),
    *scenes.SHAPES,
    *dict.fromkeys(word for position in scenes.POSITIONS for word in position.split()),
)
"""Every word a scene prompt uses (`scenes.prompt_text`): one token each."""
TEXT_TOKENS = 24
"""T5 tokens per prompt: the longest scene prompt has 21 words, closed by </s>, then padding."""
CLIP_TOKENS = 24
TEXT_WIDTH = 64
CLIP_WIDTH = 32
LATENT_CHANNELS = 16
NAMES = ("scenes-flux", "scenes-sd3", "scenes-chroma")

CALL_DEFAULTS: dict[str, dict[str, Any]] = {
    "scenes-flux": {
        "num_inference_steps": 20,
        "true_cfg_scale": 3.0,
        "negative_prompt": "",
        "max_sequence_length": TEXT_TOKENS,
    },
    "scenes-sd3": {"num_inference_steps": 20, "guidance_scale": 3.0, "max_sequence_length": TEXT_TOKENS},
    "scenes-chroma": {
        "num_inference_steps": 20,
        "guidance_scale": 3.0,
        "negative_prompt": "",
        "max_sequence_length": TEXT_TOKENS,
    },
}
"""The scene models by name, with their stored call defaults: 20 Euler steps, classifier-free guidance 3 (true CFG
for Flux and Chroma), 48 x 48 pixels."""


def vae() -> AutoencoderKL:
    """48 x 48 RGB in [-1, 1] to 16-channel 6 x 6 latents (scale factor 8) and back."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=SIZE,
        mid_block_add_attention=False,
        shift_factor=0.0,  # set from the trained latents' statistics, stored with the weights
        scaling_factor=1.0,
    )


def t5_words():
    """The T5 tokenizer of the scene prompts: a token per word, closed by </s>."""
    return word_tokenizer(VOCABULARY, start=None, end="</s>", pad="<pad>", max_length=512)


def clip_words():
    """The CLIP tokenizer of the scene prompts: a token per word between start and end; pads with end, as CLIP."""
    return word_tokenizer(
        VOCABULARY, start="<|startoftext|>", end="<|endoftext|>", pad="<|endoftext|>", max_length=CLIP_TOKENS
    )


def _chroma_transformer() -> ChromaTransformer2DModel:
    """Flux's scenes transformer as Chroma: T5 alone, and one small network (the approximator) that gives every
    block its modulation from the timestep."""
    return ChromaTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # packed as Flux's: one token per cell
        num_layers=3,
        num_single_layers=3,
        attention_head_dim=32,
        num_attention_heads=4,
        joint_attention_dim=TEXT_WIDTH,
        axes_dims_rope=(8, 12, 12),
        approximator_num_channels=32,
        approximator_hidden_dim=128,
        approximator_layers=2,
    )


def build(name: str, pipeline_class: type) -> Any:
    """The untrained scenes pipeline `name` (one of `NAMES`) as `pipeline_class` (the testbed's subclass of the
    diffusers pipeline)."""
    clip_tokenizer = clip_words()
    ids = {"bos": clip_tokenizer.bos_token_id, "eos": clip_tokenizer.eos_token_id, "vocab_size": len(clip_tokenizer)}
    t5_tokenizer, t5_slot = t5_words(), {"scenes-flux": "_2", "scenes-sd3": "_3", "scenes-chroma": ""}[name]
    t5 = {f"text_encoder{t5_slot}": t5_encoder(TEXT_WIDTH, len(t5_tokenizer)), f"tokenizer{t5_slot}": t5_tokenizer}
    if name == "scenes-chroma":
        with warnings.catch_warnings():  # diffusers' own Chroma still builds the FluxPosEmbed it deprecates
            warnings.filterwarnings("ignore", message="`FluxPosEmbed` is deprecated", category=FutureWarning)
            transformer = _chroma_transformer()
        clip = {}
    elif name == "scenes-flux":
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * LATENT_CHANNELS,  # the pipeline packs 2 x 2 latent pixels: one token per cell
            num_layers=3,
            num_single_layers=3,
            attention_head_dim=32,
            num_attention_heads=4,
            joint_attention_dim=TEXT_WIDTH,
            pooled_projection_dim=CLIP_WIDTH,
            guidance_embeds=False,
            axes_dims_rope=(8, 12, 12),
        )
        clip = {
            "text_encoder": clip_encoder(CLIPTextModel, CLIP_WIDTH, CLIP_TOKENS, **ids),
            "tokenizer": clip_tokenizer,
        }
    else:
        transformer = SD3Transformer2DModel(
            sample_size=SIZE // 8,
            patch_size=2,  # one token per cell, as Flux's packing
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            num_layers=4,  # the last one has no text output
            attention_head_dim=32,
            num_attention_heads=4,
            joint_attention_dim=TEXT_WIDTH,
            caption_projection_dim=128,
            pooled_projection_dim=2 * CLIP_WIDTH,
            pos_embed_max_size=GRID,
        )
        clip = {  # SD3 sets the two CLIP encoders' states side by side: 2 x 32 = the T5 width
            "text_encoder": clip_encoder(CLIPTextModelWithProjection, CLIP_WIDTH, CLIP_TOKENS, **ids),
            "tokenizer": clip_tokenizer,
            "text_encoder_2": clip_encoder(CLIPTextModelWithProjection, CLIP_WIDTH, CLIP_TOKENS, **ids),
            "tokenizer_2": clip_words(),
        }
    pipe = pipeline_class(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0), vae=vae(), **clip, **t5
    )
    pipe.default_sample_size = SIZE // pipe.vae_scale_factor
    return pipe
