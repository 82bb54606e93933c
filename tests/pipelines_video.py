"""Tiny offline VIDEO pipelines: HunyuanVideo, CogVideoX, Mochi.

Builders (each `@_seeded`; transformers 32 wide, 2 heads of 16; 2-layer text encoders 32 wide whose vocab is the
character tokenizer's): `hunyuan_video`, `cogvideox`, `mochi`. Call as `pipe(prompt=list(PROMPTS),
negative_prompt=list(NEGATIVE_PROMPTS), num_videos_per_prompt=2, **CALLS[name])` (1 frame, the smallest sizes the
pipelines accept). A 2-prompt x 2-video, 2-step CFG call with output_type="latent" takes 0.02-0.09 s on one
thread; two builds, and two calls on one pipeline, give bit-identical latents. The VAEs also decode (checked with
output_type="np", 1 and 5-7 frames).

Findings below were checked at runtime (forward hooks with_kwargs=True on the transformer, its blocks and their
attention modules) with PROMPTS, NEGATIVE_PROMPTS and num_videos_per_prompt=2. B = batch rows of one transformer
call, N = video tokens (frames x (h/2) x (w/2) latent patches), L = text tokens (TEXT_LEN = 32 here).
"Masked" means padded text positions are excluded as attention keys (checked: replacing them by noise leaves the
output bit-identical).

HunyuanVideo (HunyuanVideoPipeline, HunyuanVideoTransformer3DModel; LlamaModel hidden_states[-3] + CLIPTextModel
pooled; AutoencoderKLHunyuanVideo x2 spatial / x4 temporal). 16 x 16, 1 frame -> N = 16.
  1. Forward order: `context_embedder.token_refiner.refiner_blocks` (HunyuanVideoIndividualTokenRefinerBlock, TEXT
     ONLY, (B, L, D), mask (B, 1, L, L) bool = m_i & m_j), then `transformer_blocks` (HunyuanVideoTransformerBlock,
     dual-stream), then `single_transformer_blocks` (HunyuanVideoSingleTransformerBlock). Attention: `.attn` in all.
  2. All keywords: hidden_states (B, C, F, h, w) 5-D latents, timestep= (B,) float = t_sched (1000 at pure noise),
     encoder_hidden_states (B, L, D), encoder_attention_mask (B, L) FLOAT32 (1/0, the transformer dtype), right
     padding, pooled_projections (B, 32) (CLIP pooled), guidance= (B,) = guidance_scale * 1000. The mask is used:
     padded text is masked in the refiner and in the blocks (attention_mask (B, 1, 1, N + L) bool, True for the
     first N + sum(mask[i]) positions, so it assumes the valid text is a prefix, which it is).
  3. Dual and single blocks are both called positionally, block(img (B, N, D), txt (B, L, D), temb, attn_mask,
     (cos, sin), None, first_frame_tokens), and both return (img, txt): VIDEO AT INDEX 0, text at 1. The single
     block concatenates [video ; text] inside and splits it back. Each `.attn` is called with hidden_states=,
     encoder_hidden_states=, attention_mask=, image_rotary_emb= and returns (video, text); the joint attention
     sequence is [video ; text]. The refiner block returns one text tensor (B, L, D); its attn returns one tensor.
  4. CFG is two calls per step, cond first, then uncond; on when negative_prompt is given and true_cfg_scale > 1
     (guidance_scale is the distilled-guidance embedding, not CFG).
  5. Padding is to the fixed max_sequence_length (after cropping the template prefix). Repeats are CONSISTENT:
     embeddings [p0, p0, p1, p1] and masks [m0, m0, m1, m1] (sums 10, 10, 27, 27 cond; 5, 5, 11, 11 uncond): the
     suspected [m0, m1, m0, m1] bug is not present (mask.repeat(1, n).view(B * n, L) on a 2-D mask is correct).
     The builder's template is the default one with crop_start recomputed (HUNYUAN_VIDEO_TEMPLATE, in CALLS).
  6. `num_videos_per_prompt`, honoured (B = 4 per call).

CogVideoX (CogVideoXPipeline, CogVideoXTransformer3DModel 2b-style: sincos positions, no RoPE; T5EncoderModel;
AutoencoderKLCogVideoX x2 / t x2; CogVideoXDDIMScheduler). 8 x 8, 1 frame -> N = 4.
  1. `transformer_blocks` (CogVideoXBlock), no refiners. Attention: `.attn1`.
  2. Keywords: hidden_states (B, F, C, h, w) (FRAMES BEFORE CHANNELS), encoder_hidden_states (B, L, D),
     timestep= (B,) int64 (999 at pure noise, then 499 with 2 trailing steps), image_rotary_emb=None. No mask: the
     padded T5 tokens (<pad>) are attended (perturbing them changes every row's output).
  3. Blocks are called with keywords (hidden_states= (B, N, D), encoder_hidden_states= (B, L, D), temb=,
     image_rotary_emb=, attention_kwargs=) and return (video, text): VIDEO AT INDEX 0. attn1 is called with
     hidden_states=, encoder_hidden_states=, image_rotary_emb= and returns (video, text); inside, the joint sequence
     is [text ; video] (text first). The real text is [0, len(prompt) + 1) (chars + </s>).
  4. CFG is one batch [uncond ; cond], uncond first (rows [n0, n1, p0, p1] checked against encode_prompt). On when
     guidance_scale > 1.
  5. Padding is to the fixed max_sequence_length, which must equal the transformer's max_text_seq_length (the
     sincos table is built for it). No mask, so no mask-order question.
  6. The argument exists but is IGNORED: __call__ sets num_videos_per_prompt = 1, so num_videos_per_prompt=2 gives
     2 videos for 2 prompts (B = 4 with CFG). For k samples per prompt repeat the prompts (and negatives) k times:
     [p0, p0, p1, p1] gives 4 videos (B = 8).

Mochi (MochiPipeline, MochiTransformer3DModel; T5EncoderModel; AutoencoderKLMochi x8 / t x6 and 12 latent channels,
both hard-coded by the pipeline; FlowMatchEulerDiscreteScheduler(invert_sigmas=True), as Mochi's).
16 x 16, 1 frame -> N = 1.
  1. `transformer_blocks` (MochiTransformerBlock; the last one is context_pre_only, so 2 layers give one of each).
     Attention: `.attn1` (MochiAttention). No refiners (time_embed pools the text with attention, not a block list).
  2. Keywords: hidden_states (B, C, F, h, w), encoder_hidden_states (B, L, D), timestep= (B,) float
     = t_sched of the INVERTED schedule: 0 at pure noise (25 at the second step; 1000 = clean), and
     encoder_attention_mask (B, L) bool. The mask is used: MochiAttnProcessor keeps only the mask's positions per
     row (padding masked).
  3. Blocks are called with keywords (hidden_states=, encoder_hidden_states=, temb=, encoder_attention_mask=,
     image_rotary_emb=) and return (video, text): VIDEO AT INDEX 0 (the context_pre_only block returns the text
     unchanged). attn1 (hidden_states=, encoder_hidden_states=, image_rotary_emb=, attention_mask=) returns
     (video (B, N, D), text (B, L, D)); per row the joint sequence is [video ; mask-selected text], and the text
     output is [selected tokens ; zeros].
  4. CFG is one batch [uncond ; cond], uncond first (mask sums of the first half are the negatives'). On when
     guidance_scale > 1.
  5. Padding is to the fixed max_sequence_length. UPSTREAM BUG, seen at runtime: embeddings come as
     [n0, n0, n1, n1 ; p0, p0, p1, p1] but masks as [m0, m1, m0, m1] per half (mask.repeat(n, 1)); sums
     [5, 11, 5, 11, 10, 27, 10, 27] (true [5, 5, 11, 11, 10, 10, 27, 27]). So the 2nd copy of each first prompt
     attends 6 / 17 pad tokens and the 1st copy of each second prompt loses its last 6 / 17 real tokens. The
     transformer follows the mask: take spans from encoder_attention_mask, not from the prompts.
  6. `num_videos_per_prompt`, honoured (B = 8 with CFG).
"""

from __future__ import annotations

from diffusers import (
    AutoencoderKLCogVideoX,
    AutoencoderKLHunyuanVideo,
    AutoencoderKLMochi,
    CogVideoXDDIMScheduler,
    CogVideoXPipeline,
    CogVideoXTransformer3DModel,
    FlowMatchEulerDiscreteScheduler,
    HunyuanVideoPipeline,
    HunyuanVideoTransformer3DModel,
    MochiPipeline,
    MochiTransformer3DModel,
)
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE
from pipelines import _seeded
from pipelines_unified import WIDTH_TEXT, _ids, _len, _llm_kwargs, _prepend, _t5_config
from tiny_text import char_tokenizer
from transformers import CLIPTextModel, LlamaConfig, LlamaModel, T5EncoderModel

from fastrepulse.testbed.text import clip_encoder, clip_tokenizer, t5_tokenizer

__all__ = [
    "BUILDERS",
    "CALLS",
    "NEGATIVE_PROMPTS",
    "PROMPTS",
    "TEXT_LEN",
    "cogvideox",
    "hunyuan_video",
    "mochi",
]

PROMPTS = ["a red cat", "a small blue dog on a hill"]
NEGATIVE_PROMPTS = ["ugly", "blurry bad"]
TEXT_LEN = 32
"""max_sequence_length of every pipeline here (CogVideoX's transformer needs exactly this many text tokens)."""

# ------------------------------------------------------------------------------------------------------ HunyuanVideo

_LLAMA_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
HUNYUAN_VIDEO_SIZE = 16  # the pipeline requires height % 16 == width % 16 == 0; VAE x2 -> 8x8 latents, patch 2 -> 16


def _hunyuan_video_template(tokenizer) -> dict:
    """The pipeline's own template, with crop_start (95 for the Llama-3 tokenizer) recomputed for `tokenizer`."""
    template = DEFAULT_PROMPT_TEMPLATE["template"]
    return {"template": template, "crop_start": _len(tokenizer, template.split("{}")[0])}


def _hunyuan_video_tokenizer():
    tokenizer = _prepend(char_tokenizer(max_length=1024, special_tokens=_LLAMA_SPECIALS), "<|begin_of_text|>")
    tokenizer.eos_token = "<|eot_id|>"
    return tokenizer


HUNYUAN_VIDEO_TEMPLATE = _hunyuan_video_template(_hunyuan_video_tokenizer())
"""prompt_template call argument: the default template and its prefix length in the character tokenizer."""


@_seeded
def hunyuan_video() -> HunyuanVideoPipeline:
    """HunyuanVideo layout: 1 token-refiner, 1 dual- and 1 single-stream block, Llama (2 layers) + CLIP-L pooled.

    Guidance-distilled (guidance embedding); true CFG needs negative_prompt and true_cfg_scale > 1. Call with
    `prompt_template=HUNYUAN_VIDEO_TEMPLATE` (in CALLS): the default crop_start 95 is the Llama-3 tokenizer's.
    """
    tokenizer = _hunyuan_video_tokenizer()
    bos, eos = _ids(tokenizer, "<|begin_of_text|>", "<|eot_id|>")
    config = LlamaConfig(**_llm_kwargs(tokenizer), bos_token_id=bos, eos_token_id=eos)
    config.max_position_embeddings = 1024  # the template alone is ~440 characters
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=2,
        patch_size_t=1,
        guidance_embeds=True,
        text_embed_dim=WIDTH_TEXT,
        pooled_projection_dim=32,
        rope_axes_dim=(4, 6, 6),
    )
    vae = AutoencoderKLHunyuanVideo(
        latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 3,
        up_block_types=("HunyuanVideoUpBlock3D",) * 3,
        block_out_channels=(4, 4, 4),
        layers_per_block=1,
        norm_num_groups=2,
        spatial_compression_ratio=2,
        temporal_compression_ratio=4,
        mid_block_add_attention=False,
    )
    return HunyuanVideoPipeline(
        text_encoder=LlamaModel(config),
        tokenizer=tokenizer,
        transformer=transformer,
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0),
        text_encoder_2=clip_encoder(CLIPTextModel, 32, 77),
        tokenizer_2=clip_tokenizer(77),
    )


# --------------------------------------------------------------------------------------------------------- CogVideoX

COGVIDEOX_SIZE = 8  # the pipeline requires height % 8 == 0; VAE x2 -> 4x4 latents, patch 2 -> 4 tokens per frame


@_seeded
def cogvideox() -> CogVideoXPipeline:
    """CogVideoX-2b layout (sincos positions, no RoPE): 1 CogVideoXBlock, T5 (2 layers), 2-level VAE (x2, t x2)."""
    tokenizer = t5_tokenizer()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=4,
        out_channels=4,
        time_embed_dim=32,
        text_embed_dim=WIDTH_TEXT,
        num_layers=2,  # the last block's text feeds nothing: with one, repelled text could not change the video
        sample_width=COGVIDEOX_SIZE // 2,
        sample_height=COGVIDEOX_SIZE // 2,
        sample_frames=1,
        patch_size=2,
        temporal_compression_ratio=2,
        max_text_seq_length=TEXT_LEN,
    )
    vae = AutoencoderKLCogVideoX(
        down_block_types=("CogVideoXDownBlock3D",) * 2,
        up_block_types=("CogVideoXUpBlock3D",) * 2,
        block_out_channels=(4, 4),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        temporal_compression_ratio=2,
        sample_height=COGVIDEOX_SIZE,
        sample_width=COGVIDEOX_SIZE,
    )
    scheduler = CogVideoXDDIMScheduler(
        beta_schedule="scaled_linear", clip_sample=False, rescale_betas_zero_snr=True, prediction_type="v_prediction",
        set_alpha_to_one=True, snr_shift_scale=3.0, timestep_spacing="trailing",
    )  # fmt: skip
    return CogVideoXPipeline(
        tokenizer=tokenizer,
        text_encoder=T5EncoderModel(_t5_config(len(tokenizer))),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )


# ------------------------------------------------------------------------------------------------------------- Mochi

MOCHI_SIZE = 16  # the pipeline hard-codes VAE x8 (t x6) and patch 2, and requires height % 8 == 0: 16 -> 1 token


@_seeded
def mochi() -> MochiPipeline:
    """Mochi layout: 2 MochiTransformerBlocks (the last is context_pre_only), T5 (2 layers), 3-level VAE (x8, t x6).

    The VAE keeps what the pipeline hard-codes: x8 / t x6 compression and 12 latent channels; its group norms have
    32 groups, so 32 channels.
    """
    tokenizer = t5_tokenizer()
    transformer = MochiTransformer3DModel(
        patch_size=2,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=2,
        pooled_projection_dim=32,
        in_channels=12,  # the pipeline's decode views latents_mean as (1, 12, 1, 1, 1)
        text_embed_dim=WIDTH_TEXT,
        time_embed_dim=32,
        max_sequence_length=TEXT_LEN,
    )
    vae = AutoencoderKLMochi(
        latent_channels=12,
        encoder_block_out_channels=(32, 32, 32, 32),
        decoder_block_out_channels=(32, 32, 32, 32),
        layers_per_block=(1, 1, 1, 1, 1),
        add_attention_block=(False,) * 5,
        latents_mean=(0.0,) * 12,
        latents_std=(1.0,) * 12,
    )
    return MochiPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(invert_sigmas=True),
        vae=vae,
        text_encoder=T5EncoderModel(_t5_config(len(tokenizer))),
        tokenizer=tokenizer,
        transformer=transformer,
    )


BUILDERS = {f.__name__: f for f in (hunyuan_video, cogvideox, mochi)}

CALLS: dict[str, dict] = {
    "hunyuan_video": {
        "height": HUNYUAN_VIDEO_SIZE,
        "width": HUNYUAN_VIDEO_SIZE,
        "num_frames": 1,
        "true_cfg_scale": 4.0,
        "guidance_scale": 6.0,
        "max_sequence_length": TEXT_LEN,
        "prompt_template": HUNYUAN_VIDEO_TEMPLATE,
    },
    "cogvideox": {
        "height": COGVIDEOX_SIZE,
        "width": COGVIDEOX_SIZE,
        "num_frames": 1,
        "guidance_scale": 6.0,
        "max_sequence_length": TEXT_LEN,
    },
    "mochi": {
        "height": MOCHI_SIZE,
        "width": MOCHI_SIZE,
        "num_frames": 1,
        "guidance_scale": 4.5,
        "max_sequence_length": TEXT_LEN,
    },
}
"""Extra call kwargs per builder: `pipe(prompt=list(PROMPTS), negative_prompt=list(NEGATIVE_PROMPTS), **CALLS[name])`.

CogVideoX ignores num_videos_per_prompt (always 1): repeat its prompts for several samples per prompt.
"""
