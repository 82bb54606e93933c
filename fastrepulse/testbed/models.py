"""The testbed's generators: small Flux and SD3 pipelines trained on the real digits, built offline.

Every component is a diffusers or transformers class made from constructor arguments: a one-level VAE
(8 x 8 grey images to 8 x 8 one-channel latents), the transformer, CLIP/T5 text encoders with
character-level tokenizers (fixed random weights, shipped with the rest: the transformer learns to read
them), and a flow-matching Euler scheduler. `pipeline(name)` builds the architecture and loads the
trained weights shipped in `weights/<name>.safetensors`; `bench/train_testbed.py` reproduces them.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from safetensors import safe_open
from tokenizers import Regex, Tokenizer, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)

from fastrepulse.testbed.digits import SIZE

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


@dataclass(frozen=True)
class Testbed:
    """One testbed model: how to build its transformer and how its pipeline is called by default."""

    name: str
    defaults: dict[str, Any] = field(default_factory=dict)


MODELS = {
    "flux": Testbed(
        "flux",
        {"num_inference_steps": 20, "true_cfg_scale": 3.0, "negative_prompt": "", "max_sequence_length": TEXT_TOKENS},
    ),
    "sd3": Testbed("sd3", {"num_inference_steps": 20, "guidance_scale": 3.0, "max_sequence_length": TEXT_TOKENS}),
}
"""Stored defaults: 20 Euler steps and classifier-free guidance 3 (true CFG for Flux, which has no
guidance embedding), at the scans' 8 x 8 pixels."""


class _Defaults:
    """Fills the testbed's stored call defaults (steps, guidance, size) into a diffusers pipeline call."""

    call_defaults: dict[str, Any] = {}

    def __call__(self, prompt: str | list[str] | None = None, **kwargs: Any) -> Any:
        settings = {"height": SIZE, "width": SIZE, **self.call_defaults, **kwargs}
        if isinstance(prompt, list) and isinstance(settings.get("negative_prompt"), str):
            settings["negative_prompt"] = [settings["negative_prompt"]] * len(prompt)
        return super().__call__(prompt, **settings)


class TestbedFluxPipeline(_Defaults, FluxPipeline):
    """FluxPipeline with the testbed's stored defaults."""

    call_defaults = MODELS["flux"].defaults


class TestbedSD3Pipeline(_Defaults, StableDiffusion3Pipeline):
    """StableDiffusion3Pipeline with the testbed's stored defaults."""

    call_defaults = MODELS["sd3"].defaults


def pipeline(name: str, *, trained: bool = True) -> DiffusionPipeline:
    """The testbed pipeline `name` ("flux" or "sd3") on the CPU in float32, with its trained weights.

    `trained=False` gives the same architecture with its seeded initial weights (what training starts from).

    Raises:
        ValueError: an unknown name.
        FileNotFoundError: the weights are missing from the installed package (reinstall it, or rerun
            bench/train_testbed.py).
    """
    if name not in MODELS:
        raise ValueError(f"testbed model must be one of {sorted(MODELS)}, got {name!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        pipe = _build(name)
    if trained:
        path = WEIGHTS / f"{name}.safetensors"
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: reinstall fastrepulse, or run bench/train_testbed.py")
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
            text_encoder=_clip(CLIPTextModel),
            tokenizer=_clip_tokenizer(),
            text_encoder_2=_t5(),
            tokenizer_2=_t5_tokenizer(),
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
            text_encoder=_clip(CLIPTextModelWithProjection),
            tokenizer=_clip_tokenizer(),
            text_encoder_2=_clip(CLIPTextModelWithProjection),
            tokenizer_2=_clip_tokenizer(),
            text_encoder_3=_t5(),
            tokenizer_3=_t5_tokenizer(),
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


@functools.cache
def _clip_vocab_dir() -> tempfile.TemporaryDirectory:
    """Byte-level CLIP vocab (every byte alone and as a word end) with no merges, written once per process."""
    directory = tempfile.TemporaryDirectory(prefix="fastrepulse-clip-")  # kept alive by the cache, removed at exit
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())  # unsorted, its order changes from process to process
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(directory.name, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(directory.name, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return directory


def _clip_tokenizer(max_length: int = CLIP_TOKENS) -> CLIPTokenizer:
    """Character-level CLIP tokenizer; paths are positional because transformers 5 ignores them as keywords."""
    directory = _clip_vocab_dir().name
    vocab, merges = (os.path.join(directory, name) for name in ("vocab.json", "merges.txt"))
    return CLIPTokenizer(vocab, merges, model_max_length=max_length)


def _clip(
    cls: type[CLIPTextModel | CLIPTextModelWithProjection], max_length: int = CLIP_TOKENS
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """Two-layer CLIP text encoder; two layers because SD3 reads the penultimate hidden state."""
    eos = 2 * 256 + 1  # id of <|endoftext|> in the vocab above, which also pads
    config = CLIPTextConfig(
        vocab_size=eos + 1,
        hidden_size=CLIP_WIDTH,
        intermediate_size=2 * CLIP_WIDTH,
        projection_dim=CLIP_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        bos_token_id=eos - 1,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return cls(config)


def _t5_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, closed by </s> as T5 does."""
    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>", *map(chr, range(32, 127))])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def _t5(d_model: int = TEXT_WIDTH) -> T5EncoderModel:
    """Two-layer T5 encoder; its width is the transformer's joint_attention_dim."""
    config = T5Config(
        vocab_size=128, d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8,
    )  # fmt: skip
    return T5EncoderModel(config)
