"""Tiny, deterministic, fully offline pipelines of the LLM-text-encoder families (Qwen-Image, Flux.2, Chroma, ...).

Every component is built from constructor arguments (no hub access); weights are seeded by `pipelines._seeded`.
Call a builder's pipeline as `pipe(prompt=PROMPTS, num_images_per_prompt=2, num_inference_steps=2,
output_type="latent", generator=..., **CALLS[name])` (QwenImageEditPlus: one prompt, see below). Measured on one CPU
thread: each such call (CFG on where the family has it) takes 0.02-0.05 s, Qwen-Image-Edit 0.4 s and Edit-Plus 0.5 s
(the ~1024x1024 VAE encode of the reference, which these pipelines always do); two builds give bit-identical latents.

Text: `tiny_text.char_tokenizer` (one token per character). Qwen-Image (drop 34 / 64 leading tokens) and Ovis (drop
28) cut a fixed number of tokens off the templated prompt; here the template's system text is split into that many
special-token chunks (`_exact_prefix_tokenizer`), so the drop removes exactly the template prefix as with the real
tokenizer (a prompt containing one of those ~7-character chunks would tokenize differently). Flux.2's fixed system
message is one special token. Lengths: max_sequence_length=32 (Klein 48: its template alone is 26 tokens).
LongCat pads to its attribute `tokenizer_max_length` (512, not a call argument); the builder sets it to 32.

Builders: qwenimage, qwenimage_img2img, qwenimage_inpaint, qwenimage_edit, qwenimage_edit_plus, flux2, flux2_klein,
flux2_klein_distilled (Flux2KleinPipeline(is_distilled=True)), chroma, longcat_image, ovis_image, bria.

Upstream quirks a test must know:
* Qwen-Image: a single negative string is not broadcast over 2 prompts (shape error); NEGATIVE_PROMPTS has one each.
* Qwen-Image-Edit with 2 prompts needs 2 images (the processor wants one image per <|image_pad|>): image=[img, img].
  A list is not resized for the processor; the VAE input is resized to ~1024^2 from image[0]'s aspect ratio.
* Qwen-Image-Edit-Plus raises for batch_size > 1: call it with ONE prompt (prompt=PROMPTS[0]).
* Qwen2VLProcessor cannot be built offline in this environment as is: transformers 5 type-checks every processor
  attribute and the video processor's base class is not exported without torchvision, so
  Qwen2VLProcessor(image_processor=..., tokenizer=...) raises "VIDEO_PROCESSOR_MAPPING has no attribute
  '_extra_content'". `ImageOnlyQwen2VLProcessor` (a subclass without the video_processor argument) is used instead.
* Img2Img/Inpaint: strength 0.6 runs 1 of the 2 steps. LongCat: enable_prompt_rewrite=False (else it generates text).
* Bria logs a spurious "input was truncated ... ['', '']" warning with this tokenizer.

Findings, verified by forward hooks on the transformer, its blocks and their attention modules (B = 2 prompts x 2
images = 4; Lt text tokens; N image tokens = 64 at 32x32):

1. Transformer / blocks (ModuleList paths in forward order) / attention attribute:
   * Qwen-Image (all 5): QwenImageTransformer2DModel; transformer.transformer_blocks: QwenImageTransformerBlock only
     (dual-stream, no single-stream list); attention `attn` (Attention, QwenDoubleStreamAttnProcessor2_0).
   * Flux.2 / Klein: Flux2Transformer2DModel; transformer.transformer_blocks (Flux2TransformerBlock, attn
     Flux2Attention) then transformer.single_transformer_blocks (Flux2SingleTransformerBlock, attn
     Flux2ParallelSelfAttention).
   * Chroma: ChromaTransformer2DModel; transformer_blocks (ChromaTransformerBlock) then single_transformer_blocks
     (ChromaSingleTransformerBlock); attn FluxAttention in both.
   * LongCat: LongCatImageTransformer2DModel; transformer_blocks (LongCatImageTransformerBlock) then
     single_transformer_blocks (LongCatImageSingleTransformerBlock); attn LongCatImageAttention.
   * Ovis: OvisImageTransformer2DModel; transformer_blocks (OvisImageTransformerBlock) then single_transformer_blocks
     (OvisImageSingleTransformerBlock); attn OvisImageAttention.
   * Bria: BriaTransformer2DModel; transformer_blocks (BriaTransformerBlock) then single_transformer_blocks
     (BriaSingleTransformerBlock); attn BriaAttention.
2. Transformer call (all keyword arguments, return_dict=False, output [0] = (B, N, C) velocity):
   * Qwen-Image: hidden_states (B, N, 16), encoder_hidden_states (B, Lt, 32), encoder_hidden_states_mask int64
     (B, Lt) (None when every row is full; converted to bool for the blocks; padded positions ARE masked in attention:
     perturbing mask==0 positions changes nothing), timestep = t/1000 -> 1.0 at pure noise, guidance=None
     (guidance_embeds=False), img_shapes, attention_kwargs.
   * Flux.2: hidden_states (B, N, 16), encoder_hidden_states (B, 32, 2*32 stacked layers), txt_ids, img_ids,
     timestep = t/1000 (1.0 at noise), guidance = guidance_scale (4.0) tensor (B,); NO mask: text padded to
     max_sequence_length and the pads are attended.  Klein: same with guidance=None; no mask, pads attended.
   * Chroma: hidden_states, encoder_hidden_states (B, 32, 32), txt_ids, img_ids, timestep t/1000 (1.0 at noise),
     attention_mask float32 (B, Lt + N) over [text; image] (prompt tokens + 1 extra pad + all image = 1); the blocks
     turn it into a (B, 1, L, L) float 0/1 matrix that SDPA ADDS to the scores, so pads are NOT really masked
     (perturbing them changes the output).
   * LongCat: hidden_states (B, N, 64), encoder_hidden_states (B, 32, 32), txt_ids, img_ids, timestep t/1000 (1.0),
     guidance=None; no mask, pads attended.
   * Ovis: hidden_states, encoder_hidden_states (B, 32, 32) with pad rows zeroed, txt_ids, img_ids, timestep t/1000
     (1.0); no mask: the zero pad embeddings are attended.
   * Bria: hidden_states, encoder_hidden_states (2B, 32, 32) (pad rows zero), txt_ids, img_ids, timestep = raw
     scheduler t (1000 at pure noise, NOT divided), no guidance, no mask (pads attended).
3. Block / attention outputs:
   * Dual-stream blocks (every family): tuple (encoder_hidden_states, hidden_states): text at index 0, image at 1.
     Their attention modules return (image, text): image at index 0, text at 1.
   * Flux2SingleTransformerBlock and ChromaSingleTransformerBlock: input hidden_states is the joint [text; image]
     (text prefix, verified equal to the last dual block's text output; Flux2 gets encoder_hidden_states=None) and
     the output is one joint tensor (B, Lt + N, D), text first.
   * LongCat/Ovis/Bria single blocks: kwargs hidden_states (image) and encoder_hidden_states (text) separately,
     concatenated [text; image] inside; output tuple (encoder_hidden_states, hidden_states), text at index 0.
   * Single-stream attention modules return one joint tensor (B, Lt + N, D), text prefix.
4. CFG:
   * Qwen-Image (all 5): true_cfg_scale > 1 and a negative prompt; two transformer calls per step, cond first
     (cache_context "cond" then "uncond"); negative text = negative_prompt (encoded the same way, own length).
   * Klein (base): guidance_scale > 1; separate calls, cond first; negative text is "" for every prompt.
     Klein distilled (is_distilled=True) and Flux.2: one call per step (Flux.2 uses the guidance embedding).
   * Chroma, LongCat, Ovis: guidance_scale > 1; separate calls, cond first; negative = negative_prompt (LongCat's
     default ""), Chroma/Ovis/LongCat padded to the same fixed length.
   * Bria: ONE batched call [uncond; cond] of 2B rows (negative_prompt first).
5. Text lengths and row order (PROMPTS of 9 and 10 characters, num_images_per_prompt=2):
   * Qwen-Image: padded to the longest prompt of the call (22 vs 23 tokens -> Lt=23; negatives 17/19 -> Lt=19,
     so cond and uncond calls have different Lt); embedding rows [p0, p0, p1, p1] but mask rows [m0, m1, m0, m1]
     (the upstream bug, observed in every Qwen pipeline): row 1 attends a zero pad, row 2 loses its last token.
     Edit-Plus with one prompt passes mask None.
   * All others pad to the fixed max_sequence_length (Flux.2 32, Klein 48, Chroma 32, Ovis 32, Bria 32, LongCat
     tokenizer_max_length) and rows are [p0, p0, p1, p1]; Chroma's attention_mask rows are in that order too.
6. Edit variants: hidden_states = cat([noisy latents (N_gen), reference latents (N_ref)], dim=1) -> (B, 1 + 1024, 16)
   here (32x32 output at VAE scale 16 = 1 token; ~1024^2 reference = 32x32 = 1024 tokens), img_shapes lists both;
   the output is sliced back to [:, :N_gen]. The text stream is still encoder_hidden_states (same kwarg, index 0 of
   the block tuple) and contains the vision tokens (<|vision_start|>, 4 image tokens, <|vision_end|>; Edit-Plus
   prefixes "Picture 1: "). With 2 prompts and 2 different images the reference rows come [i0, i1, i0, i1] while
   the noise/text rows are [p0, p0, p1, p1] (image_latents repeated with torch.cat). Img2Img/Inpaint append nothing
   (hidden_states (B, 64, 16)); Inpaint blends the mask outside the transformer.
"""

from __future__ import annotations

import numpy as np
import PIL.Image
from diffusers import (
    AutoencoderKLFlux2,
    AutoencoderKLQwenImage,
    BriaPipeline,
    BriaTransformer2DModel,
    ChromaPipeline,
    ChromaTransformer2DModel,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
    LongCatImagePipeline,
    LongCatImageTransformer2DModel,
    OvisImagePipeline,
    OvisImageTransformer2DModel,
    QwenImageEditPipeline,
    QwenImageEditPlusPipeline,
    QwenImageImg2ImgPipeline,
    QwenImageInpaintPipeline,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE as FLUX2_SYSTEM_MESSAGE
from pipelines import HEIGHT, WIDTH, _seeded, _t5, _vae
from tiny_text import char_tokenizer
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

from fastrepulse.testbed.text import t5_tokenizer

__all__ = ["CALLS", "HEIGHT", "WIDTH", "PROMPTS", "NEGATIVE_PROMPTS", "BUILDERS"]

PROMPTS = ["a red cat", "a blue dog"]  # different lengths on purpose (9 and 10 characters = tokens)
NEGATIVE_PROMPTS = ["ugly", "blurry"]  # one per prompt: Qwen-Image does not broadcast a single negative string
MAX_SEQUENCE_LENGTH = 32  # text tokens per prompt where the pipeline takes a length (Klein: 48, see below)
KLEIN_MAX_SEQUENCE_LENGTH = 48  # Klein's chat template alone is 26 tokens; it pads/truncates to this length
TEXT_WIDTH = 32  # hidden size of every LLM text encoder
# Qwen2-VL image processor bounds: any image is resized to 56x56 = 4x4 patches of 14 -> 4 image tokens after the 2x2
# merge (bounds of exactly 56 * 56 round some sizes, e.g. 384x384, down to 28x28)
QWEN_VISION_PIXELS = (50 * 50, 60 * 60)

_IM = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
_QWEN_VISION = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>")
_THINK = ("<think>", "</think>")

QWEN3_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
"""Qwen3's template as Klein and Ovis use it: string contents, the empty think block of enable_thinking=False."""

MISTRAL_CHAT_TEMPLATE = (
    "<s>{% for message in messages %}"
    "{% if message['content'] is string %}{% set text = message['content'] %}"
    "{% else %}{% set text = message['content'][0]['text'] %}{% endif %}"
    "{% if message['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif message['role'] == 'user' %}[INST]{{ text }}[/INST]{% else %}{{ text }}</s>{% endif %}{% endfor %}"
)
"""Mistral-Small-3.1's layout ([SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]) for Flux2's text-only prompts."""


def _split(text: str, pieces: int) -> tuple[str, ...]:
    """`text` cut into `pieces` contiguous chunks of near-equal length."""
    bounds = np.linspace(0, len(text), pieces + 1).round().astype(int)
    return tuple(text[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True))


def _exact_prefix_tokenizer(
    prefix: str, system: str, length: int, special_tokens: tuple[str, ...], **kwargs
) -> PreTrainedTokenizerFast:
    """A char tokenizer under which `prefix` (which contains `system`) is exactly `length` tokens.

    Qwen-Image and Ovis drop a fixed number of leading tokens (the system prompt as the real Qwen tokenizer cuts it);
    character by character that prefix would be ~4x longer and the drop would leave system text in the embeddings.
    Here `system` becomes special tokens (contiguous chunks), so the drop removes exactly the template's prefix.
    """
    bare = char_tokenizer(special_tokens=special_tokens, **kwargs)
    fixed = len(bare(prefix.replace(system, ""), add_special_tokens=False).input_ids)
    tokenizer = char_tokenizer(special_tokens=(*special_tokens, *_split(system, length - fixed)), **kwargs)
    assert len(tokenizer(prefix, add_special_tokens=False).input_ids) == length, prefix
    return tokenizer


def _template_prefix(template: str, end: str) -> tuple[str, str]:
    """(everything of `template` before `end`, the system text between '<|im_start|>system\\n' and '<|im_end|>')."""
    prefix = template[: template.index(end)]
    system = template[len("<|im_start|>system\n") : template.index("<|im_end|>")]
    return prefix, system


def _image(seed: int, size: tuple[int, int] = (WIDTH, HEIGHT), mode: str = "RGB") -> PIL.Image.Image:
    """A noise image from a local generator (the global RNG is untouched)."""
    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    return PIL.Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)


def _mask(size: tuple[int, int] = (WIDTH, HEIGHT)) -> PIL.Image.Image:
    """White (repaint) left half, black (keep) right half."""
    pixels = np.zeros((size[1], size[0]), dtype=np.uint8)
    pixels[:, : size[0] // 2] = 255
    return PIL.Image.fromarray(pixels, mode="L")


# --------------------------------------------------------------------------------------------------------- Qwen-Image


def _qwen_vl(tokenizer: PreTrainedTokenizerFast) -> Qwen2_5_VLForConditionalGeneration:
    """Two-layer Qwen2.5-VL (text 32 wide, one vision block) whose special ids are the tokenizer's."""
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in _QWEN_VISION}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 2 * TEXT_WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "max_position_embeddings": 1024,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        },
        vision_config={
            "depth": 1,
            "hidden_size": 32,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": TEXT_WIDTH,
            "fullatt_block_indexes": [0],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen2_5_VLForConditionalGeneration(config)


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor without its video processor (the pipelines pass images only).

    transformers 5 requires every processor attribute to be an instance of its base class, and the video one's,
    VideoProcessorMixin, is not exported without torchvision (nor is Qwen2VLVideoProcessor importable), so
    Qwen2VLProcessor(image_processor=..., tokenizer=...) fails here with "VIDEO_PROCESSOR_MAPPING has no attribute
    '_extra_content'". Dropping `video_processor` from the signature drops it from the processor's attributes.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)


def _qwen_processor(tokenizer: PreTrainedTokenizerFast) -> Qwen2VLProcessor:
    """Qwen2-VL processor from constructor arguments: every image becomes 56x56 pixels, 4 image tokens."""
    image_processor = Qwen2VLImageProcessor(min_pixels=QWEN_VISION_PIXELS[0], max_pixels=QWEN_VISION_PIXELS[1])
    return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)


def _qwen_vae(levels: int) -> AutoencoderKLQwenImage:
    """Qwen-Image (Wan) VAE with 4 latent channels and scale factor 2 ** (levels - 1).

    No residual blocks (num_res_blocks=0): the Edit pipelines always VAE-encode the reference at ~1024x1024, which
    costs 2 s with one residual block per level and 0.4 s without.
    """
    return AutoencoderKLQwenImage(
        base_dim=4,
        z_dim=4,
        dim_mult=[1] * levels,
        num_res_blocks=0,
        temperal_downsample=[False] * (levels - 1),
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )


def _qwen_transformer() -> QwenImageTransformer2DModel:
    """Two dual-stream blocks, 2 heads of 16; 4 latent channels packed 2x2."""
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        axes_dims_rope=(4, 6, 6),
    )


def _qwen_components(cls, vae_levels: int, end: str, processor: bool) -> dict:
    """Components of a Qwen-Image pipeline class; the tokenizer cuts cls's template prefix (up to `end`) exactly."""
    template, drop = _QWEN_TEMPLATES[cls]
    prefix, system = _template_prefix(template, end)
    tokenizer = _exact_prefix_tokenizer(prefix, system, drop, (*_IM, *_QWEN_VISION))
    components = {
        "scheduler": FlowMatchEulerDiscreteScheduler(),
        "vae": _qwen_vae(vae_levels),
        "text_encoder": _qwen_vl(tokenizer),
        "tokenizer": tokenizer,
        "transformer": _qwen_transformer(),
    }
    if processor:
        components["processor"] = _qwen_processor(tokenizer)
    return components


_QWEN_T2I_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial "
    "relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
_QWEN_EDIT_SYSTEM = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, objects, "
    "background), then explain how the user's text instruction should alter or modify the image. Generate a new image "
    "that meets the user's requirements while maintaining consistency with the original input where appropriate."
    "<|im_end|>\n<|im_start|>user\n"
)
_QWEN_TEMPLATES = {
    QwenImagePipeline: (_QWEN_T2I_TEMPLATE, 34),
    QwenImageImg2ImgPipeline: (_QWEN_T2I_TEMPLATE, 34),
    QwenImageInpaintPipeline: (_QWEN_T2I_TEMPLATE, 34),
    QwenImageEditPipeline: (_QWEN_EDIT_SYSTEM + "<|vision_start|><|image_pad|><|vision_end|>{}", 64),
    QwenImageEditPlusPipeline: (_QWEN_EDIT_SYSTEM + "{}", 64),
}
"""Copies of the pipelines' prompt_template_encode / prompt_template_encode_start_idx (checked in _check_template)."""


def _check_template(pipe) -> None:
    """The copied template must be the pipeline's own (diffusers may change it)."""
    template, drop = _QWEN_TEMPLATES[type(pipe)]
    own = pipe.prompt_template_encode
    assert own.startswith(template.split("{}")[0]) and pipe.prompt_template_encode_start_idx == drop, type(pipe)


QWEN_EDIT_VAE_LEVELS = 5  # scale factor 16: the ~1024^2 reference becomes 64x64 latents = 32x32 = 1024 tokens


def _qwen(cls, vae_levels: int, end: str, processor: bool):
    """A Qwen-Image pipeline of class `cls` from `_qwen_components`, its copied template checked."""
    pipe = cls(**_qwen_components(cls, vae_levels, end, processor))
    _check_template(pipe)
    return pipe


@_seeded
def qwenimage() -> QwenImagePipeline:
    """Qwen-Image text-to-image: 2 dual-stream blocks, VAE scale 2 (32x32 -> 8x8 = 64 image tokens)."""
    return _qwen(QwenImagePipeline, 2, "{}", False)


@_seeded
def qwenimage_img2img() -> QwenImageImg2ImgPipeline:
    """Qwen-Image img2img with the text-to-image components; call with `image=` (strength 0.6 -> 1 of 2 steps)."""
    return _qwen(QwenImageImg2ImgPipeline, 2, "{}", False)


@_seeded
def qwenimage_inpaint() -> QwenImageInpaintPipeline:
    """Qwen-Image inpainting with the text-to-image components; call with `image=` and `mask_image=`."""
    return _qwen(QwenImageInpaintPipeline, 2, "{}", False)


@_seeded
def qwenimage_edit() -> QwenImageEditPipeline:
    """Qwen-Image-Edit: processor + vision tower; VAE scale 16 because the reference is always encoded at ~1024^2."""
    return _qwen(QwenImageEditPipeline, QWEN_EDIT_VAE_LEVELS, "<|vision_start|>", True)


@_seeded
def qwenimage_edit_plus() -> QwenImageEditPlusPipeline:
    """Qwen-Image-Edit-2509 (Plus): as Edit; upstream it accepts only ONE prompt per call (batch_size > 1 raises)."""
    return _qwen(QwenImageEditPlusPipeline, QWEN_EDIT_VAE_LEVELS, "{}", True)


# ------------------------------------------------------------------------------------------------------------ Flux.2


def _flux2_vae() -> AutoencoderKLFlux2:
    """Two-level Flux.2 VAE (scale 2, 4 latent channels; the pipeline patchifies 2x2 -> 16 channels)."""
    return AutoencoderKLFlux2(
        block_out_channels=(4, 8),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=2,
        sample_size=HEIGHT,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


FLUX2_TEXT_LAYERS = (1, 2)  # text_encoder_out_layers: hidden states stacked -> joint_attention_dim = 2 * TEXT_WIDTH


def _flux2_transformer(guidance_embeds: bool) -> Flux2Transformer2DModel:
    """One dual-stream and one single-stream block, 2 heads of 16."""
    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=len(FLUX2_TEXT_LAYERS) * TEXT_WIDTH,
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=guidance_embeds,
    )


_MISTRAL_SPECIAL = ("<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]")


@_seeded
def flux2() -> Flux2Pipeline:
    """Flux.2-dev: Mistral3 text encoder (2 layers, tiny Pixtral tower), guidance embedding, no CFG.

    The fixed system message is one special token, so the 32-token window (padding="max_length") holds the prompt.
    """
    tokenizer = char_tokenizer(special_tokens=(*_MISTRAL_SPECIAL, FLUX2_SYSTEM_MESSAGE))
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<s>", "</s>", "[IMG]")}
    config = Mistral3Config(
        text_config={
            "model_type": "mistral",
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_WIDTH,
            "intermediate_size": 2 * TEXT_WIDTH,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 16,
            "max_position_embeddings": 512,
            "sliding_window": None,
            "bos_token_id": ids["<s>"],
            "eos_token_id": ids["</s>"],
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "model_type": "pixtral",
            "hidden_size": 16,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 32,
            "image_size": 28,
            "patch_size": 14,
        },
        image_token_index=ids["[IMG]"],
        spatial_merge_size=1,
        vision_feature_layer=-1,
    )
    return Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flux2_vae(),
        text_encoder=Mistral3ForConditionalGeneration(config),
        tokenizer=tokenizer,
        transformer=_flux2_transformer(guidance_embeds=True),
    )


def _qwen3_tokenizer(**kwargs) -> PreTrainedTokenizerFast:
    """Char tokenizer with Qwen3's chat markers and think block."""
    tokenizer = char_tokenizer(special_tokens=(*_IM, *_THINK), **kwargs)
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    return tokenizer


def _qwen3_config(tokenizer: PreTrainedTokenizerFast) -> Qwen3Config:
    """Two-layer Qwen3, 32 wide."""
    return Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
    )


def _klein(is_distilled: bool) -> Flux2KleinPipeline:
    tokenizer = _qwen3_tokenizer()
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_flux2_vae(),
        text_encoder=Qwen3ForCausalLM(_qwen3_config(tokenizer)),
        tokenizer=tokenizer,
        transformer=_flux2_transformer(guidance_embeds=False),
        is_distilled=is_distilled,
    )


@_seeded
def flux2_klein() -> Flux2KleinPipeline:
    """Flux.2-klein base: Qwen3 text encoder, no guidance embedding, CFG against "" when guidance_scale > 1."""
    return _klein(is_distilled=False)


@_seeded
def flux2_klein_distilled() -> Flux2KleinPipeline:
    """Flux.2-klein step-distilled (is_distilled=True, a pipeline config flag): guidance_scale is ignored, no CFG."""
    return _klein(is_distilled=True)


# ------------------------------------------------------------------------------------------------------------- Others


@_seeded
def chroma() -> ChromaPipeline:
    """Chroma: T5 (32 wide), 1 dual + 1 single block, distilled-guidance approximator; the VAE of tests/pipelines."""
    transformer = ChromaTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        axes_dims_rope=(4, 4, 8),
        approximator_num_channels=16,
        approximator_hidden_dim=32,
        approximator_layers=1,
    )
    return ChromaPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(),
        text_encoder=_t5(32),
        tokenizer=t5_tokenizer(),
        transformer=transformer,
    )


LONGCAT_TOKENIZER_MAX_LENGTH = MAX_SEQUENCE_LENGTH  # LongCat pads to pipe.tokenizer_max_length (512 upstream)


@_seeded
def longcat_image() -> LongCatImagePipeline:
    """LongCat-Image: Qwen2.5-VL text encoder, 1 dual + 1 single block; call with enable_prompt_rewrite=False.

    The pipeline pads every prompt to its attribute tokenizer_max_length (512, not a call argument); it is set to
    LONGCAT_TOKENIZER_MAX_LENGTH here.
    """
    tokenizer = char_tokenizer(special_tokens=(*_IM, *_QWEN_VISION))
    transformer = LongCatImageTransformer2DModel(
        patch_size=1,
        in_channels=64,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        pooled_projection_dim=TEXT_WIDTH,
        axes_dims_rope=[4, 6, 6],
    )
    pipe = LongCatImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(16),  # LongCat hard-codes num_channels_latents = 16
        text_encoder=_qwen_vl(tokenizer),
        tokenizer=tokenizer,
        text_processor=_qwen_processor(tokenizer),
        transformer=transformer,
    )
    pipe.tokenizer_max_length = LONGCAT_TOKENIZER_MAX_LENGTH
    return pipe


_OVIS_SYSTEM = (
    "Describe the image by detailing the color, quantity, text, shape, size, texture, spatial relationships of the "
    "objects and background: "
)


@_seeded
def ovis_image() -> OvisImagePipeline:
    """Ovis-Image: Qwen3Model text encoder, 1 dual + 1 single block; the 28-token prefix is cut exactly."""
    prefix = "<|im_start|>user\n" + _OVIS_SYSTEM
    tokenizer = _exact_prefix_tokenizer(prefix, _OVIS_SYSTEM, 28, (*_IM, *_THINK))
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    transformer = OvisImageTransformer2DModel(
        patch_size=1,
        in_channels=16,
        out_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH,
        axes_dims_rope=(4, 4, 8),
    )
    pipe = OvisImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(),
        text_encoder=Qwen3Model(_qwen3_config(tokenizer)),
        tokenizer=tokenizer,
        transformer=transformer,
    )
    assert pipe.system_prompt == _OVIS_SYSTEM and pipe.user_prompt_begin_id == 28
    return pipe


@_seeded
def bria() -> BriaPipeline:
    """Bria 3.2: T5 (32 wide), 1 dual + 1 single block; the VAE of tests/pipelines."""
    transformer = BriaTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=None,
        axes_dims_rope=[0, 8, 8],
    )
    return BriaPipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        vae=_vae(),
        text_encoder=_t5(32),
        tokenizer=t5_tokenizer(),
    )


BUILDERS = {
    f.__name__: f
    for f in (
        qwenimage,
        qwenimage_img2img,
        qwenimage_inpaint,
        qwenimage_edit,
        qwenimage_edit_plus,
        flux2,
        flux2_klein,
        flux2_klein_distilled,
        chroma,
        longcat_image,
        ovis_image,
        bria,
    )
}

_QWEN_CFG = {"negative_prompt": NEGATIVE_PROMPTS, "true_cfg_scale": 4.0, "max_sequence_length": MAX_SEQUENCE_LENGTH}
_SIZE = {"height": HEIGHT, "width": WIDTH}
CALLS: dict[str, dict] = {
    "qwenimage": {**_SIZE, **_QWEN_CFG},
    "qwenimage_img2img": {**_SIZE, **_QWEN_CFG, "image": _image(1)},
    "qwenimage_inpaint": {**_SIZE, **_QWEN_CFG, "image": _image(1), "mask_image": _mask()},
    # one image per prompt: the processor needs one image per <|image_pad|>, i.e. per prompt (a single image raises)
    "qwenimage_edit": {**_SIZE, **_QWEN_CFG, "image": [_image(1)] * len(PROMPTS)},
    # one prompt per call (upstream limit): pipe(prompt=PROMPTS[0], **CALLS["qwenimage_edit_plus"])
    "qwenimage_edit_plus": {**_SIZE, **_QWEN_CFG, "negative_prompt": NEGATIVE_PROMPTS[0], "image": _image(1)},
    "flux2": {
        **_SIZE,
        "guidance_scale": 4.0,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
        "text_encoder_out_layers": FLUX2_TEXT_LAYERS,
    },
    "flux2_klein": {
        **_SIZE,
        "guidance_scale": 4.0,
        "max_sequence_length": KLEIN_MAX_SEQUENCE_LENGTH,
        "text_encoder_out_layers": FLUX2_TEXT_LAYERS,
    },
    "flux2_klein_distilled": {
        **_SIZE,
        "guidance_scale": 1.0,
        "max_sequence_length": KLEIN_MAX_SEQUENCE_LENGTH,
        "text_encoder_out_layers": FLUX2_TEXT_LAYERS,
    },
    "chroma": {
        **_SIZE,
        "negative_prompt": NEGATIVE_PROMPTS,
        "guidance_scale": 4.0,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
    },
    "longcat_image": {
        **_SIZE,
        "negative_prompt": NEGATIVE_PROMPTS,
        "guidance_scale": 4.0,
        "enable_prompt_rewrite": False,
    },
    "ovis_image": {
        **_SIZE,
        "negative_prompt": NEGATIVE_PROMPTS,
        "guidance_scale": 4.0,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
    },
    "bria": {
        **_SIZE,
        "negative_prompt": NEGATIVE_PROMPTS,
        "guidance_scale": 4.0,
        "max_sequence_length": MAX_SEQUENCE_LENGTH,
    },
}
"""Extra call arguments per builder: pipe(prompt=PROMPTS, num_images_per_prompt=..., **CALLS[name])."""
