"""Tiny offline pipelines of the newer families: LLM text encoders, refiners, joint (unified) sequences.

Builders (each `@_seeded`, 32 x 32 images, hidden 32, 2 heads, 1-2 blocks of each kind, 2-layer text encoders whose
vocab is the character tokenizer's): `z_image`, `z_image_turbo`, `hidream`, `lumina2`, `krea2`, `hunyuan_image`,
`cogview4`, `aura_flow`. Call as `pipe(prompt=..., negative_prompt=..., height=HEIGHT, width=WIDTH, **CALLS[name])`.
A 2-prompt x 2-image, 2-step CFG call with output_type="latent" takes 0.02-0.12 s on one thread.

Findings below were checked at runtime (forward hooks with_kwargs=True on the transformer, its blocks and their
attention modules) with prompts ["a red cat", "a blue dog"], negatives ["ugly", "blurry bad"], 2 images per prompt.
B = batch rows of one transformer call, N = image tokens (64 here, 4 for Lumina2), L = text tokens.
"Masked" means padded text positions are excluded as attention keys.

Z-Image (ZImagePipeline, ZImageTransformer2DModel, Qwen3Model). Set guidance_scale > 0 for CFG (not > 1);
guidance_scale=0 is Turbo.
  1. Forward order: `noise_refiner` (ZImageTransformerBlock, modulation, image tokens only), `context_refiner` (same
     class, no modulation, caption only), `layers` (same class, unified). Attention: `.attention`.
  2. Everything is positional: transformer(x, t, cap_feats, joint_attention_kwargs=, return_dict=False).
     x is a list of B tensors (C, 1, H, W). t has shape (B,) and is (1000 - t_sched) / 1000, so 0 at pure noise
     (scaled by 1000 inside). cap_feats is a list of B tensors (L_i, D) holding only the real tokens of each caption
     (the pipeline drops padding with the tokenizer mask), so lengths vary. There is no mask argument.
  3. Every block is called positionally as block(x, attn_mask, freqs_cis[, adaln, None, None, None]) and returns one
     tensor (B, S, 32). The attention is called as attention(x, attention_mask=, freqs_cis=). attn_mask is bool (B, S)
     with True = real, or None when all rows have the same length. It masks only the padding that makes the batch
     even. The padding up to a multiple of 32 inside each sample (x_pad_token / cap_pad_token) is attended.
     Row i of `layers` is: [0, P) image, with P = ceil32(N) and N = (H/2)(W/2); then [P, P+L_i) real caption, with
     L_i = len(cap_feats[i]); then [P+L_i, P+ceil32(L_i)) cap_pad_token; then zeros up to S = max_i(P + ceil32(L_i)).
     Checked with captions of 28/69/19 tokens and 36 image tokens (24 x 24): S=160, mask sums [96, 160, 96, 96], and
     the segments equal the refiner outputs. At 32 x 32, N = P = 64 and the caption is [64, 64+L_i).
  4. CFG is one batched call: rows [cond x B/2 ; uncond x B/2], cond first. The uncond text is negative_prompt or "",
     also put through the chat template ("" gives 19 tokens). A negative must be a list as long as the prompt list.
  5. Lengths are per sample (cond 28/29, uncond 23/29). Repeats are [p0, p0, p1, p1], and there is no mask to
     disagree with them.

HiDream (HiDreamImagePipeline, HiDreamImageTransformer2DModel; CLIP-L/G with projection, T5EncoderModel,
LlamaForCausalLM). The builder sets pipe.default_sample_size = 16, because the pipeline rescales every request to
that area (otherwise 32 -> 256 px).
  1. `double_stream_blocks` (HiDreamBlock -> `.block` HiDreamImageTransformerBlock), then `single_stream_blocks`
     (HiDreamBlock -> `.block` HiDreamImageSingleTransformerBlock). Attention: `.block.attn1` (HiDreamAttention).
     There are no refiners. `caption_projection` is a ModuleList of TextProjection that is not blocks.
  2. Keywords: hidden_states (B, C, H, W), timesteps= (B,) = t_sched (1000 at pure noise), encoder_hidden_states_t5
     (B, 32, D), encoder_hidden_states_llama3 (n_layers, B, 32, D). The llama tensor is layer-first, with batch on
     dim 1. pooled_embeds is (B, 64). No text mask is passed, so padded T5 (<pad>) and Llama (eos) tokens are
     attended. hidden_states_masks is None for square images.
  3. A double block is called with keywords (hidden_states=img (B,N,D), hidden_states_masks=None,
     encoder_hidden_states=txt, temb=, image_rotary_emb=) and returns (img, txt), image at index 0.
     txt = [t5 (32) | llama[llama_layers[-1]] (32) | llama[llama_layers[k]] (32)], so 96 tokens. Afterwards only
     txt[:, :64] is kept. attn1 is called positionally (img, mask, txt) with image_rotary_emb=.
     A single block gets hidden_states=[img (N) | t5 | llama_last | llama_k] (B, N+96, D) and
     encoder_hidden_states=None, and returns one tensor, truncated to N+64 after each block. Real tokens are at the
     start of each segment: T5 chars + </s>, and Llama BOS + chars.
  4. CFG is one batch [uncond ; cond], uncond first. t5 and pooled are concatenated on dim 0, llama on dim 1.
     The negative is negative_prompt or "". CFG is on when guidance_scale > 1.
  5. Padding is to the fixed max_sequence_length (T5, Llama; CLIP uses min(msl, 218)). Repeats are consistent
     (checked for t5 and llama dim 1).

Lumina2 (Lumina2Pipeline, Lumina2Transformer2DModel, Gemma2Model). vae_scale_factor is hard-coded 8, so the VAE is
x8 and a 32 x 32 image gives N = 4. The default 170-character system prompt would fill the 32 tokens, so
CALLS["lumina2"] passes system_prompt="Draw".
  1. Forward order: `context_refiner` (Lumina2TransformerBlock, no modulation, text only), `noise_refiner` (same
     class, image only), `layers` (joint). Attention: `.attn`.
  2. Keywords: hidden_states (B, C, h, w), timestep= 1 - t_sched/1000 (0 at pure noise), encoder_hidden_states
     (B, 32, D) (Gemma hidden_states[-2]), encoder_attention_mask (B, 32) int64 with right padding. The mask is
     used: it is the key mask of context_refiner and sets the per-row caption length L_i = mask[i].sum().
  3. Blocks are positional, block(x, mask, rope[, temb]), and return one tensor. context_refiner gets (B, 32, D)
     with the int mask. noise_refiner gets (B, N, D) with no mask. A row of `layers` is [0, L_i) caption, then
     [L_i, L_i+N) image, then zeros (masked), with a bool (B, S) mask, S = max(L_i) + N (None if all rows are equal).
     attn is called with hidden_states=, encoder_hidden_states= (the same tensor), attention_mask=,
     image_rotary_emb=.
  4. CFG is two calls per step, cond first, then uncond (cfg_trunc_ratio=1 keeps uncond every step). The negative is
     negative_prompt or "", without the system prompt and "<Prompt Start>". CFG is on when guidance_scale > 1.
  5. Padding is to the fixed max_sequence_length. UPSTREAM BUG, seen at runtime: the embeddings come as
     [p0, p0, p1, p1] but the masks as [m0, m1, m0, m1] (mask.repeat(n, 1)). Cond mask sums are [30, 31, 30, 31]
     (true [30, 30, 31, 31]) and uncond sums [5, 11, 5, 11]. So row 1 takes one pad token as caption and row 2 loses
     its last real token. The transformer follows the mask, so take spans from encoder_attention_mask, not from
     the prompts.

Krea2 (Krea2Pipeline, Krea2Transformer2DModel, Qwen3VLModel, AutoencoderKLQwenImage). The builder recomputes
prompt_template_encode_start_idx and _num_suffix_tokens (34 / 5 for Qwen) for the character tokenizer, so
L = max_sequence_length.
  1. `text_fusion.layerwise_blocks` (Krea2TextFusionBlock): its sequence axis is the tapped encoder layers,
     (B*L, n_text_layers, D), with no mask, so it is not a token sequence. Then `text_fusion.refiner_blocks` (same
     class, text only, (B, L, D), mask (B, 1, 1, L)). Then `transformer_blocks` (Krea2TransformerBlock, joint).
     Attention: `.attn` (Krea2Attention).
  2. Keywords: hidden_states (B, N, 16) packed latents, encoder_hidden_states (B, L, n_layers, D), timestep=
     t_sched/1000 (1 at pure noise), position_ids (L+N, 3), encoder_attention_mask (B, L) bool. The mask is used as
     a key mask in the refiner and the joint blocks.
  3. A joint block is called positionally, block(x (B, L+N, D), temb_mod (B, 1, 6D), (cos, sin), mask (B,1,1,L+N)),
     and returns one tensor: text [0, L), image [L, L+N). The text is [prompt | PAD | 13 suffix tokens
     "<|im_end|>\n<|im_start|>assistant\n"], so the real span is not contiguous: it is exactly
     encoder_attention_mask[i] (sums 22/23 cond, 17/23 uncond).
  4. CFG is two calls, cond first, then uncond. The negative is negative_prompt or "", with the template. CFG is on
     when guidance_scale > 0, with v = cond + s * (cond - uncond).
  5. Length is fixed at L = max_sequence_length. Mask rows are [m0, m0, m1, m1], consistent with the embeddings.

HunyuanImage (HunyuanImagePipeline, HunyuanImageTransformer2DModel, Qwen2_5_VLForConditionalGeneration + ByT5
T5EncoderModel, AutoencoderKLHunyuanImage x4, patch 1). There are no length or guidance call arguments. The builder
lowers pipe.tokenizer_max_length (1000) and tokenizer_2_max_length (128) to 32 and recomputes the template drop
index (34). CFG comes from the guider, AdaptiveProjectedMixGuidance(guidance_scale=3.5); without a guider there is
no CFG.
  1. `context_embedder.token_refiner.refiner_blocks` (HunyuanImageIndividualTokenRefinerBlock, Qwen text only), then
     `transformer_blocks` (HunyuanImageTransformerBlock, dual-stream), then `single_transformer_blocks`
     (HunyuanImageSingleTransformerBlock). Attention: `.attn`.
  2. Keywords: hidden_states (B, C, H, W), timestep= t_sched (1000 at pure noise), timestep_r=None, guidance=None,
     encoder_hidden_states (B, 32, D) (Qwen hidden_states[-3], template prefix dropped), encoder_attention_mask
     (B, 32) int64, encoder_hidden_states_2 / encoder_attention_mask_2 (B, 32, D2) / (B, 32) (ByT5; all zeros
     unless the prompt has quoted text). The masks are used: the refiner gets (B, 1, L, L) bool (m_i & m_j, with
     column 0 forced True), and the blocks get attention_mask (B, 1, 1, N + 64) bool with the image part True.
  3. Dual and single blocks are both called positionally as block(img (B, N, D), txt (B, 64, D), temb) with
     attention_mask= and image_rotary_emb=, and return (img, txt), image at index 0. The single block concatenates
     [img ; txt] inside. Per row, txt is [valid ByT5 | valid Qwen | invalid ByT5 | invalid Qwen]. Without glyph
     text the real span is txt[:, :sum(encoder_attention_mask[i])], which equals attention_mask[i, 0, 0, N:].
  4. CFG is two calls (guider), cond first, then uncond. The negative is negative_prompt or "", with the template.
  5. Padding is to the fixed tokenizer_max_length. UPSTREAM BUG, seen at runtime: the masks come as
     [m0, m1, m0, m1] (mask.repeat(1, n, 1) on a 2-D mask) while the embeddings are [p0, p0, p1, p1]. Sums are
     [10, 11, 10, 11] cond and [5, 11, 5, 11] uncond. Mask_2 is repeated the same way (all zeros here, so it
     does not show).

CogView4 (CogView4Pipeline, CogView4Transformer2DModel, GlmModel; left padding and a "[gMASK]<sop>" prefix, as in
GLM-4).
  1. `transformer_blocks` (CogView4TransformerBlock), no refiners. Attention: `.attn1`.
  2. Keywords: hidden_states (B, C, H, W), encoder_hidden_states (B, L, D) (GLM hidden_states[-2]), timestep=
     t_sched (1000 at pure noise), original_size / target_size / crop_coords (B, 2). There is no mask: attention_mask
     is None, and the text encoder gets none either, so the left pads are attended.
  3. Blocks are positional, block(img (B, N, D), txt (B, L, D), temb, (cos, sin), None, None), and return (img, txt),
     image at index 0. Attention runs on [txt ; img]. The real text is the last 2 + len(prompt) positions (left
     padding). That length cannot be recovered from the transformer's arguments.
  4. CFG is two calls, cond first, then uncond. The negative is negative_prompt or "". CFG is on when
     guidance_scale > 1.
  5. Text is padded to the longest prompt in the encode and then left-padded to a multiple of 16, so cond and uncond
     can differ (32 vs 16 seen). Rows within a call share L. Repeats are [p0, p0, p1, p1].

AuraFlow (AuraFlowPipeline, AuraFlowTransformer2DModel, UMT5EncoderModel).
  1. `joint_transformer_blocks` (AuraFlowJointTransformerBlock), then `single_transformer_blocks`
     (AuraFlowSingleTransformerBlock). Attention: `.attn`.
  2. hidden_states is POSITIONAL (args[0]). encoder_hidden_states= (B, L, D) is the UMT5 output times the mask, so
     pads are zeroed but attended. timestep= t_sched/1000 (1 at pure noise). No mask.
  3. A joint block is called with keywords (hidden_states=img, encoder_hidden_states=txt, temb=, attention_kwargs=)
     and returns (txt, img): TEXT AT INDEX 0. txt = [8 register tokens | L text]. A single block gets hidden_states=
     [registers (8) | text (L) | image (N)] (B, 8+L+N, D) and returns one tensor. The real text is [8, 8 + n_i),
     where n_i = len(prompt) + 1 (</s>).
  4. CFG is one batch [uncond ; cond], uncond first. The negative is negative_prompt or "", padded to the same L.
     CFG is on when guidance_scale > 1.
  5. Padding is to the fixed max_sequence_length. Repeats are consistent, and there is no mask.
"""

from __future__ import annotations

from diffusers import (
    AdaptiveProjectedMixGuidance,
    AuraFlowPipeline,
    AuraFlowTransformer2DModel,
    AutoencoderKL,
    AutoencoderKLHunyuanImage,
    AutoencoderKLQwenImage,
    CogView4Pipeline,
    CogView4Transformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    HiDreamImagePipeline,
    HiDreamImageTransformer2DModel,
    HunyuanImagePipeline,
    HunyuanImageTransformer2DModel,
    Krea2Pipeline,
    Krea2Transformer2DModel,
    Lumina2Pipeline,
    Lumina2Transformer2DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from pipelines import HEIGHT, WIDTH, _seeded, _vae
from tiny_text import char_tokenizer
from tokenizers import processors
from transformers import (
    ByT5Tokenizer,
    CLIPTextModelWithProjection,
    Gemma2Config,
    Gemma2Model,
    GlmConfig,
    GlmModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3Config,
    Qwen3Model,
    Qwen3VLConfig,
    Qwen3VLModel,
    T5Config,
    T5EncoderModel,
    UMT5Config,
    UMT5EncoderModel,
)

from fastrepulse.testbed.text import clip_encoder, clip_tokenizer, t5_tokenizer

__all__ = [
    "BUILDERS",
    "CALLS",
    "HEIGHT",
    "WIDTH",
    "aura_flow",
    "cogview4",
    "hidream",
    "hunyuan_image",
    "krea2",
    "lumina2",
    "z_image",
    "z_image_turbo",
]

TEXT_LEN = 32
"""max_sequence_length (or the instance attribute that replaces it) of every pipeline here."""

WIDTH_TEXT = 32  # hidden size of every LLM / T5 text encoder
QWEN_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
VL_SPECIALS = (*QWEN_SPECIALS, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")


def _ids(tokenizer: PreTrainedTokenizerFast, *tokens: str) -> list[int]:
    return [tokenizer.convert_tokens_to_ids(t) for t in tokens]


def _prepend(tokenizer: PreTrainedTokenizerFast, *tokens: str) -> PreTrainedTokenizerFast:
    """Make `tokenizer` start every text with `tokens` (BOS / GLM prefix), as the real tokenizer does."""
    template = " ".join((*tokens, "$A"))
    special = [(t, tokenizer.convert_tokens_to_ids(t)) for t in tokens]
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=special)
    return tokenizer


def _len(tokenizer: PreTrainedTokenizerFast, text: str) -> int:
    """Tokens of `text` in `tokenizer` (the char tokenizers add no special tokens)."""
    return len(tokenizer(text).input_ids)


def _llm_kwargs(tokenizer: PreTrainedTokenizerFast, layers: int = 2) -> dict:
    """Config fields shared by the decoder-only text encoders: 2 layers, width 32, 2 heads of 16."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=WIDTH_TEXT,
        intermediate_size=2 * WIDTH_TEXT,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )


def _t5_config(vocab_size: int, cls: type[T5Config] = T5Config) -> T5Config:
    return cls(
        vocab_size=vocab_size, d_model=WIDTH_TEXT, d_kv=16, d_ff=2 * WIDTH_TEXT, num_layers=2, num_heads=2,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )  # fmt: skip


def _z_image() -> ZImagePipeline:
    tokenizer = char_tokenizer(special_tokens=QWEN_SPECIALS)
    text_encoder = Qwen3Model(
        Qwen3Config(**_llm_kwargs(tokenizer), eos_token_id=_ids(tokenizer, "<|im_end|>")[0], bos_token_id=None)
    )
    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=4,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        cap_feat_dim=WIDTH_TEXT,
        axes_dims=[4, 6, 6],
        axes_lens=[128, 32, 32],
    )
    return ZImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )


@_seeded
def z_image() -> ZImagePipeline:
    """Z-Image with CFG (guidance_scale > 0 turns it on): 1 noise + 1 context refiner, 2 unified layers."""
    return _z_image()


@_seeded
def z_image_turbo() -> ZImagePipeline:
    """The same pipeline, meant to be called as Turbo (guidance_scale=0: one branch, no negative prompt)."""
    return _z_image()


@_seeded
def hidream() -> HiDreamImagePipeline:
    """HiDream-I1 layout: 1 double- and 1 single-stream block (MoE feed-forward, 2 experts), CLIP x2 + T5 + Llama."""
    llama_tokenizer = _prepend(char_tokenizer(special_tokens=("<|begin_of_text|>", "<|eot_id|>")), "<|begin_of_text|>")
    llama_tokenizer.eos_token = "<|eot_id|>"  # the pipeline pads with eos
    bos, eos = _ids(llama_tokenizer, "<|begin_of_text|>", "<|eot_id|>")
    llama_config = LlamaConfig(**_llm_kwargs(llama_tokenizer), bos_token_id=bos, eos_token_id=eos)
    llama_config._attn_implementation = "eager"  # the pipeline asks for output_attentions
    t5_tok = t5_tokenizer()
    transformer = HiDreamImageTransformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        caption_channels=[WIDTH_TEXT, WIDTH_TEXT],  # [T5, Llama]
        text_emb_dim=64,  # pooled CLIP-L + CLIP-G widths
        num_routed_experts=2,
        num_activated_experts=1,
        axes_dims_rope=(8, 4, 4),
        max_resolution=(HEIGHT // 2, WIDTH // 2),  # in latent pixels: max_seq = 64 tokens
        llama_layers=[0, 1],  # one Llama hidden state per block (double, single)
    )
    pipe = HiDreamImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae(),
        text_encoder=clip_encoder(CLIPTextModelWithProjection, 32, 77),
        tokenizer=clip_tokenizer(77),
        text_encoder_2=clip_encoder(CLIPTextModelWithProjection, 32, 77),
        tokenizer_2=clip_tokenizer(77),
        text_encoder_3=T5EncoderModel(_t5_config(len(t5_tok))),
        tokenizer_3=t5_tok,
        text_encoder_4=LlamaForCausalLM(llama_config),
        tokenizer_4=llama_tokenizer,
        transformer=transformer,
    )
    # The pipeline rescales every request to the area (default_sample_size * vae_scale_factor) ** 2 (128 -> 256 x 256
    # here); this makes that area HEIGHT x WIDTH, so the requested 32 x 32 stays 32 x 32.
    pipe.default_sample_size = HEIGHT // pipe.vae_scale_factor
    return pipe


def _vae8() -> AutoencoderKL:
    """Four-level VAE (scale factor 8): Lumina2 hard-codes vae_scale_factor = 8."""
    return AutoencoderKL(
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        sample_size=HEIGHT,
        scaling_factor=1.5,
        shift_factor=0.1,
    )


LUMINA2_SYSTEM_PROMPT = "Draw"
"""Replaces the 170-character default system prompt, which alone would fill the 32 text tokens."""


@_seeded
def lumina2() -> Lumina2Pipeline:
    """Lumina-Image 2.0 layout: 1 context + 1 noise refiner, 2 joint layers, Gemma2 text encoder."""
    tokenizer = _prepend(char_tokenizer(special_tokens=("<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>")), "<bos>")
    bos, eos = _ids(tokenizer, "<bos>", "<eos>")
    text_encoder = Gemma2Model(Gemma2Config(**_llm_kwargs(tokenizer), bos_token_id=bos, eos_token_id=eos))
    transformer = Lumina2Transformer2DModel(
        sample_size=HEIGHT // 8,
        patch_size=2,
        in_channels=4,
        hidden_size=32,
        num_layers=2,
        num_refiner_layers=1,
        num_attention_heads=2,
        num_kv_heads=2,
        multiple_of=16,
        axes_dim_rope=(4, 6, 6),
        axes_lens=(128, 32, 32),
        cap_feat_dim=WIDTH_TEXT,
    )
    return Lumina2Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae8(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
    )


def _qwen_vl_config(cls: type, tokenizer: PreTrainedTokenizerFast, text: dict, vision: dict):
    """Qwen-VL config: a `_llm_kwargs` text model with multimodal RoPE, a 1-layer vision tower, ids from `tokenizer`."""
    start, end, image, video = _ids(tokenizer, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    text = _llm_kwargs(tokenizer) | {"bos_token_id": None, "eos_token_id": _ids(tokenizer, "<|im_end|>")[0]} | text
    text["rope_parameters"] = rope | text.get("rope_parameters", {})
    vision = dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=WIDTH_TEXT) | vision
    return cls(
        text_config=text, vision_config=vision, image_token_id=image, video_token_id=video,
        vision_start_token_id=start, vision_end_token_id=end,
    )  # fmt: skip


@_seeded
def krea2() -> Krea2Pipeline:
    """Krea 2: text fusion (1 layerwise + 1 refiner block over 2 tapped Qwen3-VL layers), 2 single-stream blocks.

    The template offsets `prompt_template_encode_start_idx` / `_num_suffix_tokens` (34 / 5 for the Qwen tokenizer) are
    recomputed for the character tokenizer, so the transformer sees exactly `max_sequence_length` text tokens.
    """
    tokenizer = char_tokenizer(special_tokens=VL_SPECIALS)
    text = {"rope_parameters": {"mrope_interleaved": True}}
    vision = dict(patch_size=4, num_position_embeddings=16, deepstack_visual_indexes=[0])
    text_encoder = Qwen3VLModel(_qwen_vl_config(Qwen3VLConfig, tokenizer, text, vision))
    transformer = Krea2Transformer2DModel(
        in_channels=16,  # 4 latent channels packed 2x2
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        timestep_embed_dim=32,
        text_hidden_dim=WIDTH_TEXT,
        num_text_layers=2,
        text_num_attention_heads=2,
        text_num_key_value_heads=2,
        text_intermediate_size=64,
        num_layerwise_text_blocks=1,
        num_refiner_text_blocks=1,
        axes_dims_rope=(4, 6, 6),
    )
    vae = AutoencoderKLQwenImage(
        base_dim=8, z_dim=4, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )  # fmt: skip
    scheduler = FlowMatchEulerDiscreteScheduler(
        use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=6400
    )
    pipe = Krea2Pipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        text_encoder_select_layers=(1, 2),
    )
    pipe.prompt_template_encode_start_idx = _len(tokenizer, pipe.prompt_template_encode_prefix)
    pipe.prompt_template_encode_num_suffix_tokens = _len(tokenizer, pipe.prompt_template_encode_suffix)
    return pipe


HUNYUAN_GUIDANCE_SCALE = 3.5
"""HunyuanImage has no guidance_scale argument: CFG lives in its guider (AdaptiveProjectedMixGuidance)."""


@_seeded
def hunyuan_image() -> HunyuanImagePipeline:
    """HunyuanImage-2.1 layout: 1 token-refiner, 1 dual- and 1 single-stream block, Qwen2.5-VL + ByT5.

    Its text lengths are instance attributes, not call arguments: `tokenizer_max_length` (1000) and
    `tokenizer_2_max_length` (128) are lowered to 32 here, and the template's drop index (34 Qwen tokens) is
    recomputed for the character tokenizer.
    """
    tokenizer = char_tokenizer(special_tokens=VL_SPECIALS)
    vision = dict(patch_size=4, window_size=8, fullatt_block_indexes=[0])
    text_encoder = Qwen2_5_VLForConditionalGeneration(_qwen_vl_config(Qwen2_5_VLConfig, tokenizer, {}, vision))
    byt5_tokenizer = ByT5Tokenizer()
    byt5 = T5EncoderModel(_t5_config(len(byt5_tokenizer)))
    transformer = HunyuanImageTransformer2DModel(
        in_channels=4,
        out_channels=4,
        num_attention_heads=2,
        attention_head_dim=16,
        num_layers=1,
        num_single_layers=1,
        num_refiner_layers=1,
        mlp_ratio=2.0,
        patch_size=(1, 1),
        text_embed_dim=WIDTH_TEXT,
        text_embed_2_dim=WIDTH_TEXT,
        rope_axes_dim=(8, 8),
    )
    vae = AutoencoderKLHunyuanImage(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 32, 32), layers_per_block=1,
        spatial_compression_ratio=4, sample_size=HEIGHT, scaling_factor=1.5,
    )  # fmt: skip
    pipe = HunyuanImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=4.0),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=byt5,
        tokenizer_2=byt5_tokenizer,
        transformer=transformer,
        guider=AdaptiveProjectedMixGuidance(guidance_scale=HUNYUAN_GUIDANCE_SCALE),
    )
    prefix = pipe.prompt_template_encode.split("{}")[0]
    pipe.prompt_template_encode_start_idx = _len(tokenizer, prefix)
    pipe.tokenizer_max_length = TEXT_LEN
    pipe.tokenizer_2_max_length = TEXT_LEN
    return pipe


@_seeded
def cogview4() -> CogView4Pipeline:
    """CogView4 layout: 2 joint blocks, GLM text encoder (left padding, as the GLM-4 tokenizer)."""
    tokenizer = char_tokenizer(special_tokens=("[gMASK]", "<sop>", "<|endoftext|>"), padding_side="left")
    _prepend(tokenizer, "[gMASK]", "<sop>")
    kwargs = _llm_kwargs(tokenizer) | {"num_key_value_heads": 1}
    text_encoder = GlmModel(GlmConfig(**kwargs, eos_token_id=_ids(tokenizer, "<|endoftext|>")))
    transformer = CogView4Transformer2DModel(
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        text_embed_dim=WIDTH_TEXT,
        time_embed_dim=32,
        condition_dim=16,
        sample_size=HEIGHT // 2,
        rope_axes_dim=(64, 64),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_shift=0.25, max_shift=0.75, base_image_seq_len=256, use_dynamic_shifting=True, time_shift_type="linear"
    )
    return CogView4Pipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae(), transformer=transformer, scheduler=scheduler
    )


@_seeded
def aura_flow() -> AuraFlowPipeline:
    """AuraFlow layout: 1 MMDiT and 1 single DiT block, 8 register tokens, UMT5 text encoder."""
    tokenizer = t5_tokenizer()
    transformer = AuraFlowTransformer2DModel(
        sample_size=HEIGHT // 2,
        patch_size=2,
        in_channels=4,
        num_mmdit_layers=1,
        num_single_dit_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=WIDTH_TEXT,
        caption_projection_dim=32,
        out_channels=4,
        pos_embed_max_size=(HEIGHT // 4) ** 2,
    )
    return AuraFlowPipeline(
        tokenizer=tokenizer,
        text_encoder=UMT5EncoderModel(_t5_config(len(tokenizer), UMT5Config)),
        vae=_vae(),
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
    )


CALLS: dict[str, dict] = {
    "z_image": {"guidance_scale": 4.0, "max_sequence_length": TEXT_LEN},
    "z_image_turbo": {"guidance_scale": 0.0, "max_sequence_length": TEXT_LEN},
    "hidream": {"guidance_scale": 5.0, "max_sequence_length": TEXT_LEN},
    "lumina2": {"guidance_scale": 4.0, "max_sequence_length": TEXT_LEN, "system_prompt": LUMINA2_SYSTEM_PROMPT},
    "krea2": {"guidance_scale": 4.5, "max_sequence_length": TEXT_LEN},
    "hunyuan_image": {},  # guidance in the guider; text lengths set on the pipeline (see the builder)
    "cogview4": {"guidance_scale": 5.0, "max_sequence_length": TEXT_LEN},
    "aura_flow": {"guidance_scale": 3.5, "max_sequence_length": TEXT_LEN},
}
"""Extra call kwargs per builder: `pipe(prompt=..., negative_prompt=..., **CALLS[name])`."""

BUILDERS = {name: globals()[name] for name in CALLS}
