"""Tiny offline pipelines of more families: ERNIE-Image, Bria FIBO, Ideogram 4.

Builders (each `@_seeded`, 32 x 32 images, hidden 32, 2 heads of 16, 1-2 blocks of each kind, text encoders 32 wide
whose vocab is the character tokenizer's): `ernie_image`, `bria_fibo`, `ideogram4`. Call as
`pipe(prompt=list(PROMPTS), num_images_per_prompt=2, num_inference_steps=2, output_type="latent", generator=...,
**CALLS[name])` (pass a copy of the prompt list). On one CPU thread such a call (CFG on) takes 0.02 s (ERNIE, FIBO)
and 0.07 s (Ideogram 4; the first call of a process 0.07 / 0.03 / 0.27 s); two builds give bit-identical latents,
and so do two calls on one pipeline.

Not built here:
* GLM-Image (GlmImagePipeline): its prompt reaches the transformer as prior image tokens that an autoregressive
  GlmImageForConditionalGeneration (VQ vision tower + GlmImageProcessor) generates with `generate()`; the text stream
  is ByT5 glyph embeddings of quoted text only. Not attempted within the time given to this module.
* JoyImage (JoyImageEditPipeline / EditPlus): edit-only pipelines that need a Qwen3VLProcessor, which cannot be
  built offline here as is (transformers 5 without torchvision: "type object 'VIDEO_PROCESSOR_MAPPING' has no
  attribute '_extra_content'", as for Qwen2VLProcessor in pipelines_dual). Not attempted within the time given.

Findings below were checked at runtime (forward hooks with_kwargs=True on the transformer, its blocks and their
attention modules) with PROMPTS (9 and 26 characters), NEGATIVE_PROMPTS ["ugly", "blurry bad"], 2 images per
prompt. B = rows of one transformer call, N = image tokens, L = text tokens.

ERNIE-Image (ErnieImagePipeline, ErnieImageTransformer2DModel, Mistral3Model, AutoencoderKLFlux2). The transformer
zero-initialises adaLN_modulation and final_linear (velocity exactly 0); the builder gives them small random weights.
use_pe=False (no prompt enhancer is built anyway). vae_scale_factor = 2 ** len(block_out_channels) = 4: N = 64.
  1. `layers` (ErnieImageSharedAdaLNBlock) only, no refiners. Attention: `.self_attention` (ErnieImageAttention).
  2. Keywords: hidden_states (B, 16, 8, 8) (2x2-patchified latents), timestep= (B,) float = scheduler t (1000 at
     pure noise), text_bth (B, Tmax, 32) float (Mistral hidden_states[-2], zero-padded on the right), text_lens (B,)
     int64 (BOS + characters). The pads are really masked: the transformer builds a bool key mask from text_lens,
     and replacing the pad rows of text_bth by noise leaves the output bit-identical.
  3. SEQUENCE-FIRST. Blocks are called positionally, block(x, rope, temb, mask): x is (S, B, D) = (N + Tmax, B, 32)
     = cat([image (N, B, D), text (Tmax, B, D)], dim=0); rope (B, S, 1, 16); temb a list of 6 tensors (S, B, D);
     mask (B, 1, 1, S) bool. The block returns one tensor (S, B, D). Sample i's text is x[N : N + text_lens[i], i]
     (suffix after the image, right padding, per-sample length). The attention module gets it BATCH-FIRST:
     self_attention(x.permute(1, 0, 2) (B, S, D), attention_mask=, image_rotary_emb=) and returns (B, S, D), text at
     [:, N : N + text_lens[i]]. Image RoPE positions are offset by text_lens[i] on axis 0. Output keeps x[:N].
  4. CFG (guidance_scale > 1) is one batch [uncond ; cond], uncond first. The negative is negative_prompt (a list
     as long as the prompts, or one string), default "" (BOS only, length 1).
  5. Per-sample lengths, padded to the longest of cond and uncond together (Tmax = 27); text_lens
     [5, 5, 11, 11, 10, 10, 27, 27] match the embedding rows [n0, n0, n1, n1, p0, p0, p1, p1].

Bria FIBO (BriaFiboPipeline, BriaFiboTransformer2DModel, SmolLM3ForCausalLM, AutoencoderKLWan). The pipeline
hard-codes vae_scale_factor = 16 and does not patchify: 32 x 32 gives a 2 x 2 latent, N = 4 tokens of z_dim = 4
(the tiny Wan VAE's real factor, 4, only matters for decoding). An empty prompt is encoded as the hard-coded token
128000 (bot_token_id), outside this tokenizer's vocab, so negative "" (the default) fails here: CALLS passes
NEGATIVE_PROMPTS.
  1. `transformer_blocks` (BriaFiboTransformerBlock, `.attn` BriaFiboAttention), then `single_transformer_blocks`
     (BriaFiboSingleTransformerBlock, `.attn` Attention). `caption_projection` is a ModuleList of
     BriaFiboTextProjection (one per block), not blocks.
  2. Keywords: hidden_states (B, N, 4), timestep= (B,) = scheduler t (1000 at pure noise, not divided),
     encoder_hidden_states (B, L, 64) = cat(h[-1], h[-2]) of the SmolLM3 hidden states, text_encoder_layers = list
     of num_layers + num_single_layers tensors (B, L, 32) (the last ones of the hidden-state tuple: h[1], h[2] here),
     txt_ids (L, 3) zeros, img_ids (N, 3), joint_attention_kwargs={"attention_mask": (B, 1, 1, L + N) bool} =
     [text mask ; image ones] (omitted when nothing is padded). It reaches SDPA as a bool mask: pads are masked.
  3. Dual block: keywords hidden_states=img (B, N, D), encoder_hidden_states=txt (B, L, D), temb=, image_rotary_emb=,
     joint_attention_kwargs=; returns (txt, img), TEXT AT INDEX 0; its attn returns (img, txt). Single block:
     hidden_states= [txt ; img] (B, L + N, D), returns one tensor, text prefix [0, L). Sample i's real text is
     [0, mask_i.sum()) (right padding).
  4. CFG (guidance_scale > 1) is one batch [uncond ; cond] of 2B rows, uncond first; negative = negative_prompt.
  5. The tokenizer pads to the longest prompt (padding="longest"), then cond and uncond are zero-padded to the same
     L (26 here), mask 0 there. Mask sums [4, 4, 10, 10, 9, 9, 26, 26]: rows [n0, n0, n1, n1, p0, p0, p1, p1] match
     the embeddings (repeat_interleave).
  6. Text channels between blocks: before EVERY block (dual and single) the transformer rebuilds the text stream as
     cat([txt[..., :D/2], caption_projection[k](text_encoder_layers[k])], -1). So only the FIRST half of the channels
     (0:16 here) carries the transformer's contextual text state from block to block (for block 0 it is
     context_embedder(encoder_hidden_states)[..., :D/2]); the second half (16:32) of each block's text output is
     discarded and replaced by a fresh, non-contextual projection of one text-encoder layer. Verified: block 0 input
     halves equal those two terms, the single block's text first half equals the dual block's text output first half,
     and its second half equals caption_projection[1](layer 1). For single blocks the same happens to the text prefix
     of the joint tensor (the output is split at L after each block).

Ideogram 4 (Ideogram4Pipeline, Ideogram4Transformer2DModel x2, Qwen3VLModel with 36 text layers, AutoencoderKLFlux2).
Packed sequences: max_sequence_length text slots (64 here; the chat template alone is 19 tokens), then N = 64 image
tokens (VAE scale 2, patch 2).
  1. `transformer.layers` (Ideogram4TransformerBlock), and a SEPARATE `unconditional_transformer.layers` (same
     classes) that sees image tokens only. Attention: `.attention` (Ideogram4Attention). No refiners.
  2. Keywords: hidden_states (B, 64 + N, 16) (zeros in the text slots, then latents), timestep= (B,) = 1 - t/1000
     (about 0 at pure noise: 1.2e-4), encoder_hidden_states (B, 64 + N, 416) (13 tapped layers interleaved
     channel-wise, zero at pads and image slots), position_ids (B, S, 3) int64, segment_ids (B, S) int64 (-1 pads,
     1 text + image), indicator (B, S) int64 (0 pad, 3 text, 2 image). The transformer masks attention by segment
     equality (B, 1, S, S) bool: text and image never attend the pads (pads attend each other only).
  3. Blocks are positional, block(x (B, S, 32), mask (B, 1, S, S), (cos, sin) (B, S, 16), adaln (B, 1, 32)), and
     return one tensor. Row i: [0, 64 - n_i) left pad, [64 - n_i, 64) text, [64, 64 + N) image, with
     n_i = (indicator[i] == 3).sum() (28 and 45 here). The attention gets x positionally with attention_mask=,
     image_rotary_emb=.
  4. CFG: two calls per step, conditional transformer first, then unconditional_transformer on (B, N, 16) with
     zero text features and indicator all 2 (no text at all; there is no negative prompt argument).
     v = g * cond + (1 - g) * uncond. CALLS sets guidance_scale and guidance_schedule=None (the default schedule
     has 48 entries).
  5. Fixed L = max_sequence_length with per-sample left padding; rows are [p0, p0, p1, p1] for features, indicator
     and segments alike.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKLWan,
    BriaFiboPipeline,
    BriaFiboTransformer2DModel,
    ErnieImagePipeline,
    ErnieImageTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    Ideogram4Pipeline,
    Ideogram4Transformer2DModel,
)
from diffusers.pipelines.ideogram4.pipeline_ideogram4 import QWEN3_VL_ACTIVATION_LAYERS
from pipelines import HEIGHT, WIDTH, _seeded
from pipelines_dual import _flux2_vae
from pipelines_unified import VL_SPECIALS, _ids, _llm_kwargs, _prepend, _qwen_vl_config
from tiny_text import char_tokenizer
from transformers import Mistral3Config, Mistral3Model, Qwen3VLConfig, Qwen3VLModel, SmolLM3Config, SmolLM3ForCausalLM

__all__ = ["BUILDERS", "CALLS", "HEIGHT", "WIDTH", "PROMPTS", "NEGATIVE_PROMPTS"]

PROMPTS = ["a red cat", "a small blue dog on a hill"]  # 9 and 26 characters (= tokens): lengths differ a lot
NEGATIVE_PROMPTS = ["ugly", "blurry bad"]
TEXT_WIDTH = 32  # hidden size of every text encoder
MAX_SEQUENCE_LENGTH = 32


def _init_zeroed(*linears: torch.nn.Linear, std: float = 0.02) -> None:
    """Give zero-initialised layers (adaLN / output projections) small random weights, so a random tiny model's
    output depends on its inputs (zero-init makes the velocity identically 0)."""
    for linear in linears:
        torch.nn.init.normal_(linear.weight, std=std)
        if linear.bias is not None:
            torch.nn.init.normal_(linear.bias, std=std)


def _mistral3(tokenizer) -> Mistral3Model:
    """Mistral3 (2 text layers, width 32; a 1-layer Pixtral tower that text-only prompts never run)."""
    bos, eos, img = _ids(tokenizer, "<s>", "</s>", "[IMG]")
    text = _llm_kwargs(tokenizer) | {"model_type": "mistral", "sliding_window": None, "bos_token_id": bos,
                                     "eos_token_id": eos}  # fmt: skip
    vision = {"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
              "intermediate_size": 32, "image_size": 28, "patch_size": 14}  # fmt: skip
    config = Mistral3Config(
        text_config=text, vision_config=vision, image_token_index=img, spatial_merge_size=1, vision_feature_layer=-1
    )
    return Mistral3Model(config)


@_seeded
def ernie_image() -> ErnieImagePipeline:
    """ERNIE-Image: 2 shared-AdaLN single-stream layers (hidden 32, 2 heads), Mistral3 text encoder with BOS.

    The transformer zero-initialises adaLN_modulation and final_linear (its velocity would be exactly 0 for any
    input); here they get small random weights.
    """
    tokenizer = _prepend(char_tokenizer(special_tokens=("<s>", "</s>", "[IMG]")), "<s>")
    transformer = ErnieImageTransformer2DModel(
        hidden_size=32,
        num_attention_heads=2,
        num_layers=2,
        ffn_hidden_size=64,
        in_channels=16,  # 4 latent channels, 2x2-patchified by the pipeline
        out_channels=16,
        patch_size=1,
        text_in_dim=TEXT_WIDTH,
        rope_axes_dim=(4, 6, 6),  # sums to head_dim 16
    )
    _init_zeroed(transformer.adaLN_modulation[-1], transformer.final_linear)
    return ErnieImagePipeline(
        transformer=transformer,
        vae=_flux2_vae(),
        text_encoder=_mistral3(tokenizer),
        tokenizer=tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


@_seeded
def bria_fibo() -> BriaFiboPipeline:
    """Bria FIBO: 1 dual- and 1 single-stream block (2 heads of 16), SmolLM3 (2 layers, 32 wide), tiny Wan VAE."""
    tokenizer = char_tokenizer(special_tokens=("<|begin_of_text|>", "<|end_of_text|>"))
    config = SmolLM3Config(
        **_llm_kwargs(tokenizer), bos_token_id=None, eos_token_id=_ids(tokenizer, "<|end_of_text|>")[0]
    )
    transformer = BriaFiboTransformer2DModel(
        patch_size=1,
        in_channels=4,  # = the VAE's z_dim (the pipeline does not patchify)
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=2 * TEXT_WIDTH,  # hidden_states[-1] | hidden_states[-2]
        axes_dims_rope=[0, 8, 8],
        text_encoder_dim=TEXT_WIDTH,
    )
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    return BriaFiboPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=vae,
        text_encoder=SmolLM3ForCausalLM(config),
        tokenizer=tokenizer,
    )


IDEOGRAM4_MAX_SEQUENCE_LENGTH = 64
"""Ideogram4 left-pads the chat-templated prompt to this length; the template alone is 19 character tokens."""


def _ideogram4_transformer() -> Ideogram4Transformer2DModel:
    return Ideogram4Transformer2DModel(
        in_channels=16,  # 4 latent channels, 2x2-patchified
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        intermediate_size=64,
        adaln_dim=32,
        llm_features_dim=len(QWEN3_VL_ACTIVATION_LAYERS) * TEXT_WIDTH,  # 13 tapped layers, interleaved
        rope_theta=10000,
        mrope_section=(4, 2, 2),  # sums to head_dim / 2 (interleaved: 3 * h and 3 * w sections <= head_dim / 2)
    )


@_seeded
def ideogram4() -> Ideogram4Pipeline:
    """Ideogram 4: 2 single-stream blocks in the conditional and 2 in the separate unconditional transformer.

    The pipeline taps the text encoder's decoder layers (0, 3, ..., 33, 35), so the Qwen3-VL text model has 36 layers
    (width 32, 2 heads); its 13 tapped states are concatenated channel-interleaved into 416-wide features.
    """
    tokenizer = char_tokenizer(special_tokens=VL_SPECIALS)
    text = {"num_hidden_layers": max(QWEN3_VL_ACTIVATION_LAYERS) + 1, "rope_parameters": {"mrope_interleaved": True}}
    vision = dict(patch_size=4, num_position_embeddings=16, deepstack_visual_indexes=[0])
    text_encoder = Qwen3VLModel(_qwen_vl_config(Qwen3VLConfig, tokenizer, text, vision))
    return Ideogram4Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flux2_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=_ideogram4_transformer(),
        unconditional_transformer=_ideogram4_transformer(),
    )


_SIZE = {"height": HEIGHT, "width": WIDTH}
CALLS: dict[str, dict] = {
    "ernie_image": {**_SIZE, "negative_prompt": NEGATIVE_PROMPTS, "guidance_scale": 4.0, "use_pe": False},
    "bria_fibo": {
        **_SIZE,
        "negative_prompt": NEGATIVE_PROMPTS,
        "guidance_scale": 4.0,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
    },  # fmt: skip
    # no negative prompt: the unconditional branch is a separate transformer without text
    "ideogram4": {
        **_SIZE,
        "guidance_scale": 4.0,
        "guidance_schedule": None,
        "max_sequence_length": IDEOGRAM4_MAX_SEQUENCE_LENGTH,
    },  # fmt: skip
}
"""Extra call kwargs: pipe(prompt=list(PROMPTS), num_images_per_prompt=2, num_inference_steps=2,
output_type="latent", generator=..., **CALLS[name])."""

BUILDERS = {name: globals()[name] for name in CALLS}
