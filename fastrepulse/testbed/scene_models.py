"""The scenes testbed's generators: small Flux and SD3 pipelines trained on rendered colour scenes, built offline.

Every component is a diffusers or transformers class made from constructor arguments:
- a VAE with three downsamplings (48 x 48 RGB to 16-channel 6 x 6 latents), so that a pipeline's 2 x 2 latent
  patch, one image token, covers one 16 x 16 cell of the scene's grid: 9 image tokens;
- the transformer (Flux: 3 joint and 3 single-stream blocks of width 128);
- CLIP and T5 text encoders with word-level tokenizers (fixed random weights, shipped with the rest: the
  transformer learns to read them), one token per word of the scene prompts;
- a flow-matching Euler scheduler.

`bench/train_scenes.py` trains them and writes `weights/scenes-<model>.safetensors`;
`fastrepulse.testbed.pipeline("scenes-flux")` loads them.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel
from transformers import CLIPTextModel

from fastrepulse.testbed import scenes
from fastrepulse.testbed.text import clip_encoder, t5_encoder, word_tokenizer

SIZE = scenes.SIZE
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
NAMES = ("scenes-flux",)

CALL_DEFAULTS: dict[str, dict[str, Any]] = {
    "scenes-flux": {
        "num_inference_steps": 20,
        "true_cfg_scale": 3.0,
        "negative_prompt": "",
        "max_sequence_length": TEXT_TOKENS,
    },
}
"""The scene models by name, with their stored call defaults: 20 Euler steps, classifier-free guidance 3 (true CFG
for Flux), 48 x 48 pixels."""


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


def build(pipeline_class: type) -> Any:
    """The untrained Flux scenes pipeline as `pipeline_class` (the testbed's subclass of FluxPipeline)."""
    clip_tokenizer = clip_words()
    clip_ids = {key: clip_tokenizer.convert_tokens_to_ids(token) for key, token in
                (("bos", "<|startoftext|>"), ("eos", "<|endoftext|>"))}  # fmt: skip
    text_encoder = clip_encoder(CLIPTextModel, CLIP_WIDTH, CLIP_TOKENS, len(clip_tokenizer), **clip_ids)
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
    pipe = pipeline_class(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        vae=vae(),
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5_encoder(TEXT_WIDTH, vocab_size=len(t5_words())),
        tokenizer_2=t5_words(),
    )
    pipe.default_sample_size = SIZE // pipe.vae_scale_factor
    return pipe
